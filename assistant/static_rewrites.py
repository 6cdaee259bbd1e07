"""Rewrites that static analysis can do exactly: a loop that appends into a comprehension, a
literal into a module-level constant. Python, by tree-sitter; no model.

A rewrite is done only where it keeps the code's meaning, and `NotApplicable` says why not
otherwise (the refactor then asks the model):

- comprehension: `acc = []` (or `{}`, `set()`, `list()`, `dict()`) right before a `for` loop whose
  body is only more `for`s and `if`s (no `elif`/`else`) around one `acc.append(x)` / `acc.add(x)` /
  `acc[k] = v`; or an `if`/`elif`/`else` whose every branch appends one value (a conditional
  expression). Not when the loop has an `else`, is `async`, holds comments, uses `acc` otherwise,
  or when its loop variables are read after it (a comprehension does not leave them behind).
- constant: the literal named in the instruction, or else the most repeated "magic" number in
  the target (not 0, 1, 2 or -1; then strings that are not docstrings, keys or f-strings); every
  occurrence in the target becomes `NAME`, and `NAME = literal` goes at module level after the
  imports (or right above the definition).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from demi.assistant import pyscope
from demi.assistant.rename import apply_byte_edits
from demi.assistant.syntax import text_of
from demi.assistant.target import Target

MAX_LINE = 100  # a comprehension longer than this is laid out over several lines
_EMPTY = {"[]": "list", "list()": "list", "{}": "dict", "dict()": "dict", "set()": "set"}
_ADDERS = {"list": "append", "set": "add"}
_TRIVIAL_NUMBERS = {"0", "1", "2", "-1", "0.0", "1.0"}


class NotApplicable(Exception):
    """The static rewrite does not apply here (the message says why); the model may try."""


@dataclass
class StaticEdit:
    new_text: str
    notes: list[str] = field(default_factory=list)


def _python(target: Target) -> None:
    if target.doc.lang is None or target.doc.lang.name != "python" or target.syntax.root is None:
        raise NotApplicable("static rewrites are for Python")


def _in_target(target: Target, node: Any) -> bool:
    return target.first - 1 <= node.start_point[0] and node.end_point[0] <= target.last - 1


def _target_root(target: Target) -> Any:
    sym = target.symbol
    if sym is not None and sym.outer is not None:
        return sym.outer
    return target.syntax.root


# -- loop into comprehension -------------------------------------------------------------------------


@dataclass
class _Loop:
    acc: str
    kind: str  # list | set | dict
    init: Any  # the `acc = []` statement
    loop: Any  # the outer for statement
    clauses: list[str]
    element: str


def _statements(block: Any) -> list[Any]:
    return [c for c in block.named_children] if block is not None else []


def _only_statement(block: Any) -> Any | None:
    stmts = _statements(block)
    if len(stmts) != 1 or stmts[0].type == "comment":
        return None
    return stmts[0]


def _paren(node: Any, types: tuple[str, ...]) -> str:
    text = text_of(node)
    return f"({text})" if node.type in types else text


def _accumulator(stmt: Any) -> tuple[str, str, str] | None:
    """(name, kind, annotation) of `acc = []` / `acc: list[int] = []`."""
    if stmt is None or stmt.type != "expression_statement" or len(stmt.named_children) != 1:
        return None
    a = stmt.named_children[0]
    if a.type != "assignment":
        return None
    left, right, ann = a.child_by_field_name("left"), a.child_by_field_name("right"), a.child_by_field_name("type")
    if left is None or left.type != "identifier" or right is None:
        return None
    kind = _EMPTY.get(re.sub(r"\s+", "", text_of(right)))
    if kind is None:
        return None
    return text_of(left), kind, (": " + text_of(ann)) if ann is not None else ""


def _added_node(stmt: Any, acc: str, kind: str) -> tuple[Any, Any | None] | None:
    """(value, key) if `stmt` is one `acc.append(value)` (list), `acc.add(value)` (set) or
    `acc[key] = value` (dict), else None."""
    if stmt is None or stmt.type != "expression_statement" or len(stmt.named_children) != 1:
        return None
    e = stmt.named_children[0]
    if kind == "dict":
        if e.type != "assignment" or e.child_by_field_name("type") is not None:
            return None
        left, right = e.child_by_field_name("left"), e.child_by_field_name("right")
        if left is None or left.type != "subscript" or right is None:
            return None
        value, subs = left.child_by_field_name("value"), left.children_by_field_name("subscript")
        if value is None or text_of(value) != acc or len(subs) != 1 or subs[0].type == "slice":
            return None
        return right, subs[0]
    if e.type != "call":
        return None
    fn, args = e.child_by_field_name("function"), e.child_by_field_name("arguments")
    if fn is None or fn.type != "attribute" or args is None or args.type != "argument_list":
        return None
    obj, attr = fn.child_by_field_name("object"), fn.child_by_field_name("attribute")
    if obj is None or text_of(obj) != acc or text_of(attr) != _ADDERS[kind]:
        return None
    real = [a for a in args.named_children if a.type != "comment"]
    if len(real) != 1 or real[0].type in ("list_splat", "dictionary_splat", "keyword_argument"):
        return None
    return real[0], None


_LOOSE = ("lambda", "conditional_expression", "named_expression", "expression_list")


def _added(stmt: Any, acc: str, kind: str) -> str | None:
    """The comprehension's element for one adding statement (see `_added_node`)."""
    found = _added_node(stmt, acc, kind)
    if found is None:
        return None
    value, key = found
    if key is not None:
        if _calls(key) and _calls(value):
            return None  # `d[k()] = v()` runs v first; a dict comprehension runs k first
        return f"{_paren(key, _LOOSE)}: {_paren(value, _LOOSE)}"
    return _paren(value, _LOOSE)


def _calls(node: Any) -> bool:
    return any(n.type in ("call", "await", "yield") for n in pyscope.walk_nodes(node))


def _branches(stmt: Any, acc: str, kind: str) -> str | None:
    """`if c1: acc.append(a) elif c2: acc.append(b) else: acc.append(c)` -> `(a if c1 else b if c2 else c)`."""
    if kind == "dict" or stmt.type != "if_statement":
        return None
    arms: list[tuple[Any, Any]] = [(stmt.child_by_field_name("condition"), stmt.child_by_field_name("consequence"))]
    fallback = None
    for alt in stmt.children_by_field_name("alternative"):
        if alt.type == "elif_clause":
            arms.append((alt.child_by_field_name("condition"), alt.child_by_field_name("consequence")))
        elif alt.type == "else_clause":
            fallback = alt.child_by_field_name("body")
    if fallback is None:
        return None
    parts: list[tuple[str, str]] = []
    for cond, body in arms:
        found = _added_node(_only_statement(body), acc, kind)
        if cond is None or found is None or cond.type in _LOOSE:
            return None
        parts.append((text_of(cond), _paren(found[0], _LOOSE)))
    last = _added_node(_only_statement(fallback), acc, kind)
    if last is None:
        return None
    out = _paren(last[0], _LOOSE)
    for c, v in reversed(parts):
        out = f"{v} if {c} else {out}"
    return f"({out})"


def _comprehension_of(init: Any, loop: Any) -> _Loop | None:
    found = _accumulator(init)
    if found is None:
        return None
    acc, kind, _ = found
    clauses: list[str] = []
    node = loop
    while True:
        if node.type == "for_statement":
            if node.child_by_field_name("alternative") is not None or text_of(node).startswith("async"):
                return None
            left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
            if left is None or right is None:
                return None
            it = _paren(right, ("conditional_expression", "lambda", "expression_list", "named_expression"))
            clauses.append(f"for {text_of(left)} in {it}")
            nxt = _only_statement(node.child_by_field_name("body"))
        elif node.type == "if_statement" and not node.children_by_field_name("alternative"):
            cond = node.child_by_field_name("condition")
            if cond is None or cond.type == "named_expression":
                return None
            clauses.append("if " + _paren(cond, ("conditional_expression", "lambda")))
            nxt = _only_statement(node.child_by_field_name("consequence"))
        else:
            element = _added(node, acc, kind) or _branches(node, acc, kind)
            if element is None or not clauses or not clauses[0].startswith("for "):
                return None
            return _Loop(acc, kind, init, loop, clauses, element)
        if nxt is None:
            return None
        node = nxt


def _safe(found: _Loop, fn: Any) -> str | None:
    """Why the rewrite would change the meaning (None: it would not)."""
    loop = found.loop
    if any(n.type == "comment" for n in pyscope.walk_nodes(loop)):
        return "the loop holds comments"
    if any(n.type in ("named_expression", "yield", "await") for n in pyscope.walk_nodes(loop)):
        return "the loop has an assignment expression, a yield or an await"
    uses = [n for n in pyscope.names_in(loop) if text_of(n) == found.acc]
    if not all(_adds_to(n, found.kind) for n in uses):
        return f"the loop reads `{found.acc}` while it fills it"
    bound: set[str] = set()
    for n in pyscope.walk_nodes(loop):
        if n.type == "for_statement":
            bound |= {text_of(i) for i in pyscope.names_in(n.child_by_field_name("left"))}
    for name in sorted(bound):
        read = _read_after(loop, fn, name)
        if read is not None:
            return f"`{name}` is used after the loop (line {read.start_point[0] + 1})"
    return None


def _read_after(loop: Any, fn: Any, name: str) -> Any | None:
    """The first use after the loop that may read the value the loop leaves in `name` (a comprehension
    leaves none); None when there is none, or when the next statement of the loop's own block that
    mentions `name` first binds it again unconditionally (`x = ...`, `for x in ...`)."""
    sibling = loop.next_named_sibling
    while sibling is not None:
        mentions = [n for n in pyscope.names_in(sibling) if text_of(n) == name]
        if mentions:
            if _rebinds(sibling, name):
                return None
            return mentions[0]
        sibling = sibling.next_named_sibling
    later = [n for n in pyscope.names_in(fn) if n.start_byte >= loop.end_byte and text_of(n) == name]
    return later[0] if later else None


def _rebinds(stmt: Any, name: str) -> bool:
    """Whether `stmt` binds `name` before anything in it could read it."""
    if stmt.type == "for_statement":
        left, right = stmt.child_by_field_name("left"), stmt.child_by_field_name("right")
        reads = [n for n in pyscope.names_in(right) if text_of(n) == name] if right is not None else []
        return not reads and any(text_of(n) == name for n in pyscope.names_in(left)) if left is not None else False
    if stmt.type == "expression_statement" and len(stmt.named_children) == 1:
        a = stmt.named_children[0]
        if a.type == "assignment" and a.child_by_field_name("right") is not None:
            left, right = a.child_by_field_name("left"), a.child_by_field_name("right")
            reads = [n for n in pyscope.names_in(right) if text_of(n) == name]
            return not reads and left is not None and left.type == "identifier" and text_of(left) == name
    return False


def _initialiser(loop: Any) -> Any | None:
    """The `acc = []` before the loop: right before it, or before statements that never mention `acc`."""
    node = loop.prev_named_sibling
    between: list[Any] = []
    while node is not None:
        found = _accumulator(node) if node.type != "comment" else None
        if found is not None and not any(text_of(n) == found[0] for b in between for n in pyscope.names_in(b)):
            return node
        if node.type in ("function_definition", "class_definition", "decorated_definition"):
            return None
        between.append(node)
        node = node.prev_named_sibling
        if len(between) > 8:
            return None
    return None


def _line_start_byte(target: Target, node: Any) -> int:
    src = target.syntax.source
    return src.rfind(b"\n", 0, node.start_byte) + 1


def _next_line_byte(target: Target, node: Any) -> int:
    src = target.syntax.source
    end = src.find(b"\n", node.end_byte)
    return len(src) if end < 0 else end + 1


def _adds_to(use: Any, kind: str) -> bool:
    """Whether this use of the accumulator is the receiver of an add (`acc.append(`, `acc[k] =`)."""
    p = use.parent
    if p is None:
        return False
    if kind == "dict":
        return p.type == "subscript" and p.parent is not None and p.parent.type == "assignment"
    return p.type == "attribute" and text_of(p.child_by_field_name("attribute")) == _ADDERS[kind]


def _layout(found: _Loop, indent: str, annotation: str) -> str:
    opener, closer = ("[", "]") if found.kind == "list" else ("{", "}")
    one = f"{found.acc}{annotation} = {opener}{found.element} {' '.join(found.clauses)}{closer}"
    if len(indent) + len(one) <= MAX_LINE and "\n" not in one:
        return one
    inner = indent + "    "
    rows = [found.element, *found.clauses]
    return f"{found.acc}{annotation} = {opener}\n" + "".join(f"{inner}{r}\n" for r in rows) + f"{indent}{closer}"


def loops_to_comprehensions(target: Target) -> StaticEdit:
    """Every loop of the simple shapes in the target rewritten as a comprehension."""
    _python(target)
    root = _target_root(target)
    edits: list[tuple[int, int, str]] = []
    reasons: list[str] = []
    for loop in pyscope.walk_nodes(root):
        if loop.type != "for_statement" or not _in_target(target, loop):
            continue
        if any(start <= loop.start_byte < end for start, end, _ in edits):
            continue  # inside a loop already rewritten
        init = _initialiser(loop)
        found = _comprehension_of(init, loop) if init is not None else None
        if found is None or init is None:
            continue
        fn = loop.parent
        while fn is not None and fn.type not in ("function_definition", "module"):
            fn = fn.parent
        why = _safe(found, fn or target.syntax.root)
        if why:
            reasons.append(f"line {loop.start_point[0] + 1}: {why}")
            continue
        ann = _accumulator(init)
        indent = target.doc.line(loop.start_point[0] + 1)[: loop.start_point[1]]
        if init.id != loop.prev_named_sibling.id:  # statements between stay where they are
            edits.append((_line_start_byte(target, init), _next_line_byte(target, init), ""))
            edits.append((loop.start_byte, loop.end_byte, _layout(found, indent, ann[2] if ann else "")))
        else:
            edits.append((init.start_byte, loop.end_byte, _layout(found, indent, ann[2] if ann else "")))
    if not edits:
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        raise NotApplicable(f"no loop in {target.label} that only fills a list, set or dict{detail}")
    new_text = apply_byte_edits(target.syntax.source, edits)
    n = len(edits)
    what = f"{n} loops as comprehensions" if n > 1 else "1 loop as a comprehension"
    notes = [f"rewrote {what} by static analysis"]
    if reasons:
        notes.append("left as they are: " + "; ".join(reasons))
    return StaticEdit(new_text, notes)


# -- extract a constant ------------------------------------------------------------------------------


def _literal_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _docstring_node(node: Any) -> bool:
    """A string that is a docstring (the first statement of a module, class or function)."""
    stmt = node.parent
    if stmt is None or stmt.type != "expression_statement" or len(stmt.named_children) != 1:
        return False
    block = stmt.parent
    if block is None or block.type not in ("block", "module"):
        return False
    first = next((c for c in block.named_children if c.type != "comment"), None)
    return first is not None and first.id == stmt.id


def _literals(root: Any, target: Target) -> list[Any]:
    out = []
    for n in pyscope.walk_nodes(root):
        if not _in_target(target, n):
            continue
        if n.type in ("integer", "float"):
            out.append(n)
        elif n.type == "string" and n.parent is not None and n.parent.type != "concatenated_string":
            if _docstring_node(n) or any(c.type == "interpolation" for c in n.named_children) or _annotation(n):
                continue
            if n.parent.type in ("subscript", "pair"):
                continue  # keys name things; they are rarely magic
            if n.parent.type == "argument_list" and n.parent.parent is not None:
                fn = text_of(n.parent.parent.child_by_field_name("function"))
                if fn.split(".")[-1] in (
                    "get",
                    "getattr",
                    "setattr",
                    "hasattr",
                    "pop",
                    "setdefault",
                    "startswith",
                    "endswith",
                    "join",
                    "split",
                ):
                    continue
            out.append(n)
    return out


def _annotation(node: Any) -> bool:
    """Whether `node` is inside a type annotation (`-> "Node"` is a forward reference, not a value)."""
    p = node.parent
    while p is not None and p.type not in ("block", "module"):
        if p.type == "type" or pyscope.field_of(p) == "return_type":
            return True
        p = p.parent
    return False


def _shown(n: Any) -> str:
    """The literal as written, its sign included (`-5`)."""
    p = n.parent
    if p is not None and p.type == "unary_operator" and text_of(p).startswith("-") and len(p.named_children) == 1:
        return "-" + text_of(n)
    return text_of(n)


def _span(n: Any) -> tuple[int, int]:
    p = n.parent
    if p is not None and p.type == "unary_operator" and text_of(p).startswith("-") and len(p.named_children) == 1:
        return p.start_byte, p.end_byte
    return n.start_byte, n.end_byte


def _pick(literals: list[Any], wanted: str | None) -> list[Any]:
    if wanted is not None:
        value = _literal_value(wanted)
        same = [
            n
            for n in literals
            if _shown(n) == wanted
            or type(_literal_value(_shown(n))) is type(value)
            and _literal_value(_shown(n)) == value
        ]
        if not same:
            raise NotApplicable(f"{wanted} does not appear in the code (docstrings and f-strings aside)")
        return same
    numbers = [n for n in literals if n.type in ("integer", "float") and _shown(n) not in _TRIVIAL_NUMBERS]
    strings = [n for n in literals if n.type == "string" and len(_literal_value(text_of(n)) or "") > 1]
    for group in (numbers, strings):
        if not group:
            continue
        counts: dict[Any, list[Any]] = {}
        for n in group:
            counts.setdefault((n.type, _literal_value(_shown(n))), []).append(n)
        best = max(counts.values(), key=lambda ns: (len(ns), -ns[0].start_byte))
        return best
    raise NotApplicable("no literal worth a name (numbers other than 0, 1, 2, -1, or strings)")


def _slug(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9]+", "_", text)).strip("_").upper()


def _derived_name(n: Any, fn_name: str) -> str:
    """A name from where the literal sits: `timeout=30` -> TIMEOUT, `rate = 0.08` -> RATE,
    `count > 100` -> MAX_COUNT, a short word string -> the word; else FUNCTION_FACTOR/_LIMIT/..."""
    node = n.parent if n.parent is not None and n.parent.type == "unary_operator" else n
    p = node.parent
    if n.type == "string":
        word = _slug(str(_literal_value(text_of(n))))
        if word and len(word) <= 24 and not word[0].isdigit():
            return word
    if p is not None and p.type in ("keyword_argument", "default_parameter", "typed_default_parameter"):
        name = text_of(p.child_by_field_name("name")).upper()
        return name if p.type == "keyword_argument" else f"DEFAULT_{name}"
    if p is not None and p.type == "assignment" and p.child_by_field_name("right") is not None:
        left = p.child_by_field_name("left")
        if left is not None and left.type == "identifier":
            return text_of(left).upper()
    base = _slug(fn_name) or "VALUE"
    if p is not None and p.type == "comparison_operator":
        other = next((c for c in p.named_children if c.id != node.id), None)
        ops = [text_of(c) for c in p.children if not c.is_named]
        if other is not None and other.type in ("identifier", "attribute"):
            what = _slug(text_of(other).split(".")[-1])
            if ops and ops[0] in (">", ">=", "<", "<="):
                left_side = p.named_children[0].id == other.id
                big = (ops[0] in (">", ">=")) == left_side
                return f"{'MAX' if big else 'MIN'}_{what}"
            return f"{what}_VALUE"
        return f"{base}_LIMIT"
    if p is not None and p.type == "binary_operator":
        op = text_of(p.child_by_field_name("operator"))
        return f"{base}_" + {
            "*": "FACTOR",
            "/": "DIVISOR",
            "//": "DIVISOR",
            "%": "MODULUS",
            "+": "OFFSET",
            "-": "OFFSET",
            "**": "EXPONENT",
        }.get(op, "VALUE")
    return f"{base}_VALUE"


def _anchor(target: Target, outer: Any) -> tuple[int, str]:
    """Where `NAME = literal` goes: (byte offset, text to put before the assignment line)."""
    root = target.syntax.root
    header = None
    for c in root.named_children:
        if c.start_byte >= outer.start_byte:
            break
        if c.type in ("import_statement", "import_from_statement", "future_import_statement"):
            header = c
        elif (
            c.type == "expression_statement"
            and c.named_children
            and c.named_children[0].type == "string"
            and header is None
        ):
            header = c
        elif c.type == "expression_statement" and c.named_children and c.named_children[0].type == "assignment":
            left = c.named_children[0].child_by_field_name("left")
            if left is not None and re.fullmatch(r"_*[A-Z][A-Z0-9_]*", text_of(left)) and header is not None:
                header = c
        elif c.type != "comment":
            if header is not None:
                break
    if header is not None:
        gap = "\n" if header.type != "expression_statement" or header.named_children[0].type == "string" else ""
        return header.end_byte, "\n" + gap
    return outer.start_byte, ""


def extract_constant(target: Target, literal: str | None = None, name: str | None = None) -> StaticEdit:
    """A literal of the target as a module-level constant (see the module's docstring)."""
    _python(target)
    root = _target_root(target)
    if root.type == "module" or target.kind == "file":
        raise NotApplicable("pick the function or class to take the constant from (--symbol)")
    chosen = _pick(_literals(root, target), literal)
    fn_name = target.symbol.name if target.symbol is not None else "value"
    auto = name is None
    const = name or _derived_name(chosen[0], fn_name)
    if not const.isidentifier():
        raise NotApplicable(f"`{const}` is not a valid Python name")
    used = {text_of(n) for n in pyscope.names_in(target.syntax.root)} | set(
        pyscope.scope_names(target.syntax.root).bound
    )
    if const in used:
        if not auto:
            from demi.assistant.rename import RenameRefused

            raise RenameRefused(f"`{const}` is already used in {target.doc.name}; nothing was changed")
        base, i = const, 2
        while f"{base}_{i}" in used:
            i += 1
        const = f"{base}_{i}"
    outer = root
    while outer.parent is not None and outer.parent.type != "module":
        outer = outer.parent
    at, before = _anchor(target, outer)
    value = _shown(chosen[0])
    line = f"{const} = {value}"
    insertion = before + line + ("\n\n\n" if not before else "")
    edits = [(*_span(n), const) for n in chosen] + [(at, at, insertion)]
    new_text = apply_byte_edits(target.syntax.source, edits)
    if target.doc.newline != "\n":
        new_text = new_text.replace("\r\n", "\n").replace("\n", target.doc.newline)
    k = len(chosen)
    times = f"{k} occurrences" if k > 1 else "1 occurrence"
    notes = [f"extracted {value} ({times}) as the module-level constant `{const}` by static analysis"]
    if auto:
        notes.append(f"the name `{const}` was derived from where the value is used; rename it if a better one fits")
    return StaticEdit(new_text, notes)
