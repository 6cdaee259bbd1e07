"""What static analysis knows for certain about a symbol, a range or a file.

These facts (signature, parameters with types and defaults, return annotation and return
statements, what is raised, what is called, the docstring) come from the syntax tree, not
from the model, so `demi explain` can show them as certain next to the model's prose, and a
small model's prompt gets them as context it does not have to infer. What only one kind of
target has goes in `details`: an HTML element's attributes and closing tag, a CSS rule's
selectors and specificity, a React component's props and hooks (`web_facts.py`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from demi.assistant.languages import LangSpec
from demi.assistant.syntax import WEB, Symbol, Syntax, function_value, one_line, text_of, walk

_SKIP_PARAMS = {"comment", "line_comment", "block_comment", "keyword_separator", "positional_separator", "(", ")", ","}
_PANIC_MACROS = {"panic", "unreachable", "todo", "unimplemented", "assert", "assert_eq", "assert_ne"}


@dataclass
class Param:
    name: str
    type: str | None = None
    default: str | None = None


@dataclass
class Facts:
    """Everything certain about one target; empty lists mean "none found", not "unknown"."""

    kind: str  # function, method, class, ..., file, lines
    name: str
    start_line: int
    end_line: int
    signature: str = ""
    params: list[Param] = field(default_factory=list)
    returns_annotation: str | None = None
    returns: list[str] = field(default_factory=list)
    yields: bool = False
    raises: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    docstring: str | None = None
    bases: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # signatures of nested symbols
    imports: list[str] = field(default_factory=list)
    language: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # str (prose) or list[str] (code) values

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def detail_items(facts: Facts) -> list[tuple[str, str | list[str]]]:
    """`details` as (label, value) for display: "closing_tag" -> "Closing tag"; a list holds code
    (each item shown as code), a string is prose; an empty list reads "none"."""
    out: list[tuple[str, str | list[str]]] = []
    for key, value in facts.details.items():
        if value is None or value == "":
            continue
        label = key.replace("_", " ").capitalize()
        out.append((label, [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)))
    return out


# -- parameters ---------------------------------------------------------------------------------


def _innermost_name(node: Any) -> str | None:
    for n in walk(node):
        if n.type in ("identifier", "field_identifier", "shorthand_property_identifier_pattern"):
            return text_of(n)
    return None


def _clean_type(text: str) -> str:
    return one_line(text.lstrip(":").strip(), 80)


def _param(node: Any) -> Param | None:
    t = node.type
    if t in _SKIP_PARAMS or not node.is_named:
        return None
    f = node.child_by_field_name
    if t in ("identifier", "self_parameter", "self", "variadic_parameter"):
        return Param(text_of(node))
    if t in ("list_splat_pattern", "dictionary_splat_pattern", "rest_pattern"):
        return Param(text_of(node))
    if t == "typed_parameter":  # python: x: int, *args: int
        first = node.named_children[0] if node.named_children else None
        return Param(text_of(first), _clean_type(text_of(f("type"))))
    if t in ("default_parameter", "typed_default_parameter"):
        ty = f("type")
        return Param(
            text_of(f("name")), _clean_type(text_of(ty)) if ty is not None else None, one_line(text_of(f("value")), 60)
        )
    if t == "assignment_pattern":  # js: b = 2
        return Param(text_of(f("left")), None, one_line(text_of(f("right")), 60))
    if t in ("required_parameter", "optional_parameter"):  # ts
        ty, val = f("type"), f("value")
        name = text_of(f("pattern")) + ("?" if t == "optional_parameter" and val is None else "")
        return Param(
            name,
            _clean_type(text_of(ty)) if ty is not None else None,
            one_line(text_of(val), 60) if val is not None else None,
        )
    if t in (
        "parameter_declaration",
        "variadic_parameter_declaration",
        "optional_parameter_declaration",
        "formal_parameter",
        "spread_parameter",
        "parameter",
    ):
        ty = f("type")
        declarator = f("declarator") or f("name") or f("pattern")
        if declarator is None and t == "spread_parameter":
            declarator = next((c for c in node.named_children if c.type == "variable_declarator"), None)
            ty = next((c for c in node.named_children if c.type.endswith("type") or c.type == "type_identifier"), ty)
        declared = _innermost_name(declarator) if declarator is not None else None
        type_text = text_of(ty) if ty is not None else ""
        if declarator is not None and declared and t in ("parameter_declaration", "optional_parameter_declaration"):
            extra = text_of(declarator).replace(declared, "", 1).strip()  # C: `*b`, `&v`, `[]`
            type_text = f"{type_text} {extra}".strip()
        if t in ("variadic_parameter_declaration", "spread_parameter"):
            type_text = "..." + type_text
        default = f("default_value") or f("value")
        if t == "parameter_declaration" and node.parent is not None and node.parent.type == "parameter_list":
            names = (
                [text_of(c) for c in node.children_by_field_name("name")]
                if hasattr(node, "children_by_field_name")
                else []
            )
            if len(names) > 1:  # go: a, b int
                return Param(", ".join(names), _clean_type(type_text))
        return Param(
            declared or one_line(text_of(node), 60),
            _clean_type(type_text) if type_text else None,
            one_line(text_of(default), 60) if default is not None else None,
        )
    return Param(one_line(text_of(node), 60))


def _params_node(node: Any) -> Any | None:
    p = node.child_by_field_name("parameters")
    if p is not None:
        return p
    decl = node.child_by_field_name("declarator")  # C/C++: inside the function declarator
    for _ in range(8):
        if decl is None:
            return None
        if decl.type == "function_declarator":
            return decl.child_by_field_name("parameters")
        decl = decl.child_by_field_name("declarator")
    return None


def parameters(node: Any) -> list[Param]:
    target = node
    if node.type == "variable_declarator":  # const f = (x) => ..., const C = memo((props) => ...)
        target = function_value(node) or node
    pnode = _params_node(target)
    if pnode is None:
        single = target.child_by_field_name("parameter")  # js: x => x
        return [Param(text_of(single))] if single is not None else []
    out = [_param(c) for c in pnode.named_children]
    return [p for p in out if p is not None and p.name]


def return_annotation(node: Any, language: str) -> str | None:
    target = function_value(node) if node.type == "variable_declarator" else node
    target = target or node
    for name in ("return_type", "result"):
        r = target.child_by_field_name(name)
        if r is not None:
            return _clean_type(text_of(r))
    if language == "java" and node.type == "method_declaration":
        r = node.child_by_field_name("type")
        return _clean_type(text_of(r)) if r is not None else None
    if language in ("c", "cpp") and node.type == "function_definition":
        r = node.child_by_field_name("type")
        if r is None:
            return None
        decl, stars = node.child_by_field_name("declarator"), ""
        while decl is not None and decl.type in ("pointer_declarator", "reference_declarator"):
            stars += "*" if decl.type == "pointer_declarator" else "&"
            decl = decl.child_by_field_name("declarator") or (decl.named_children[0] if decl.named_children else None)
        return _clean_type(text_of(r) + (" " + stars if stars else ""))
    return None


# -- body facts ---------------------------------------------------------------------------------


def _callee(node: Any) -> str | None:
    t, f = node.type, node.child_by_field_name
    if t in ("call", "call_expression"):
        fn = f("function")
        return one_line(text_of(fn), 60) if fn is not None else None
    if t == "macro_invocation":
        return text_of(f("macro")) + "!"
    if t == "method_invocation":
        obj, name = f("object"), f("name")
        return one_line((text_of(obj) + "." if obj is not None else "") + text_of(name), 60)
    if t in ("new_expression", "object_creation_expression"):
        ty = f("constructor") or f("type")
        return "new " + one_line(text_of(ty), 60) if ty is not None else None
    return None


def _raised(node: Any) -> str:
    """`raise ValueError("x")` -> "ValueError"; `throw new Error()` -> "Error"."""
    expr = next((c for c in node.named_children if c.type not in ("comment",)), None)
    if expr is None:
        return "re-raises the current exception"
    if expr.type in ("call", "call_expression"):
        return one_line(text_of(expr.child_by_field_name("function")), 60)
    if expr.type in ("new_expression", "object_creation_expression"):
        ty = expr.child_by_field_name("constructor") or expr.child_by_field_name("type")
        return one_line(text_of(ty), 60)
    return one_line(text_of(expr), 60)


def _nested_function(node: Any, owner: Any, function_types: set[str]) -> bool:
    """Whether `node` sits inside a function defined within `owner` (its facts are not owner's)."""
    p = node.parent
    while p is not None and p.id != owner.id:
        if p.type in function_types:
            return True
        p = p.parent
    return False


def body_facts(node: Any, syntax: Syntax, facts: Facts, spec: LangSpec | None = None) -> None:
    """Fill returns, raises, calls and yields from the nodes under `node` (in `spec`'s language,
    by default the file's)."""
    spec = spec or syntax.spec
    if spec is None:
        return
    fn_types = {t for t, k in spec.definitions.items() if k in ("function", "method", "constructor")}
    fn_types.discard("variable_declarator")  # callbacks and lambdas count as the function's own code
    returns: dict[str, None] = {}
    raises: dict[str, None] = {}
    calls: dict[str, None] = {}
    for n in walk(node):
        if n.id == node.id or not n.is_named:
            continue
        if (
            n.type in spec.returns
            or n.type in spec.raises
            or n.type in spec.calls
            or n.type in ("yield", "yield_expression", "try_expression", "throws")
        ):
            if _nested_function(n, node, fn_types):
                continue
        else:
            continue
        t = n.type
        if t in spec.returns:
            value = next((c for c in n.named_children if c.type not in ("comment",)), None)
            returns[one_line(text_of(value), 80) if value is not None else "(bare return)"] = None
        elif t in spec.raises:
            raises[_raised(n)] = None
        elif t in ("yield", "yield_expression"):
            facts.yields = True
        elif t == "try_expression":
            raises["propagates errors with `?`"] = None
        elif t == "throws":
            for c in n.named_children:
                raises[f"declares `throws {text_of(c)}`"] = None
        if t in spec.calls:
            name = _callee(n)
            if name is None:
                continue
            if name.rstrip("!") in _PANIC_MACROS and t == "macro_invocation":
                raises[f"{name} (panics)"] = None
            elif spec.name == "go" and name == "panic":
                args = n.child_by_field_name("arguments")
                raises[f"panic{one_line(text_of(args), 60)}"] = None
            else:
                calls[name] = None
    facts.returns = list(returns)[:10]
    facts.raises = list(raises)[:10]
    facts.calls = list(calls)[:24]


# -- docs ---------------------------------------------------------------------------------------


def _strip_comment(text: str) -> str:
    lines = []
    for line in text.splitlines():
        line = line.strip()
        line = re.sub(r"^(///?!?|/\*\*?|\*/|\*|#|<!--)\s?", "", line)
        line = re.sub(r"(\*/|-->)$", "", line).strip()
        lines.append(line)
    return "\n".join(lines).strip()


def _python_docstring(body: Any) -> str | None:
    if body is None or not body.named_children:
        return None
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_children and first.named_children[0].type == "string":
        s = first.named_children[0]
        content = "".join(text_of(c) for c in s.named_children if c.type == "string_content")
        return _dedent(content) or None
    return None


def _dedent(text: str) -> str:
    import inspect

    return inspect.cleandoc(text)


def docstring(sym_node: Any, outer: Any, syntax: Syntax, spec: LangSpec | None = None) -> str | None:
    """Python docstring, else the comment block right above the definition."""
    spec = spec or syntax.spec
    if spec is None:
        return None
    if spec.name == "python":
        return _python_docstring(sym_node.child_by_field_name("body"))
    comments: list[str] = []
    prev, line = outer.prev_sibling, outer.start_point[0]
    if outer.type == "variable_declarator" and outer.parent is not None:
        prev, line = outer.parent.prev_sibling, outer.parent.start_point[0]
    while prev is not None and prev.type in spec.comments and prev.end_point[0] >= line - 1:
        comments.insert(0, text_of(prev))
        line, prev = prev.start_point[0], prev.prev_sibling
    text = _strip_comment("\n".join(comments))
    return text or None


def _bases(node: Any) -> list[str]:
    out: list[str] = []
    for name in ("superclasses", "superclass", "interfaces", "trait"):
        b = node.child_by_field_name(name)
        if b is not None:
            out += [one_line(text_of(c), 60) for c in b.named_children] or [one_line(text_of(b), 60)]
    for c in node.named_children:
        if c.type in ("class_heritage", "base_class_clause"):
            out += [one_line(text_of(x), 60) for x in c.named_children if x.type != "access_specifier"]
    flat: list[str] = []
    for b in out:
        flat += [
            x.strip() for x in re.split(r",\s*", b.removeprefix("extends ").removeprefix("implements ")) if x.strip()
        ]
    return list(dict.fromkeys(flat))


_KEYWORDS = {
    "def",
    "class",
    "function",
    "fn",
    "func",
    "struct",
    "interface",
    "enum",
    "trait",
    "impl",
    "type",
    "namespace",
    "mod",
    "record",
    "union",
    "macro_rules!",
    "typedef",
}


def member_label(sym: Symbol) -> str:
    """A symbol's signature, prefixed with its kind unless the signature already says it."""
    words = sym.signature.replace("(", " ").split()[:4]
    return sym.signature if _KEYWORDS & set(words) else f"{sym.kind} {sym.signature}"


# -- entry points -------------------------------------------------------------------------------


def symbol_facts(syntax: Syntax, sym: Symbol) -> Facts:
    spec = sym.lang or syntax.spec
    lang = spec.name if spec else None
    if spec is not None and spec.name in WEB:
        from demi.assistant.web_facts import web_symbol_facts

        return web_symbol_facts(syntax, sym, spec)
    f = Facts(sym.kind, sym.qualname, sym.start_line, sym.end_line, sym.signature, language=lang)
    f.docstring = docstring(sym.node, sym.outer, syntax, spec)
    if spec is not syntax.spec and syntax.spec is not None:
        f.details["embedded_in"] = f"{syntax.spec.name} (a {lang} region)"
    if sym.kind in ("function", "method", "constructor"):
        f.params = parameters(sym.node)
        f.returns_annotation = return_annotation(sym.node, lang or "")
        body_facts(sym.node, syntax, f, spec)
        if spec is not None and spec.jsx:
            from demi.assistant.web_facts import component_details

            f.details.update(component_details(sym, spec))
    else:
        f.bases = _bases(sym.node)
        f.members = [
            member_label(s)
            for s in syntax.symbols()
            if s.qualname.startswith(sym.qualname + ".") and s.depth == sym.depth + 1
        ][:40]
        if sym.kind in ("class", "struct", "impl", "trait", "interface", "record", "enum"):
            f.calls = []
    return f


def range_facts(syntax: Syntax, first: int, last: int) -> Facts:
    """Facts about lines first..last: the symbols they touch and what they call and raise."""
    lang = syntax.spec.name if syntax.spec else None
    f = Facts("lines", f"lines {first}-{last}", first, last, language=lang)
    inside = [s for s in syntax.symbols() if s.start_line <= last and s.end_line >= first]
    f.members = [f"{member_label(s)} (lines {s.start_line}-{s.end_line})" for s in inside][:20]
    lo, hi = first - 1, last - 1
    merged = Facts("lines", "", first, last)
    for spec, root in syntax.roots():  # the file's tree, then each embedded region's
        nodes = [n for n in root.named_children if n.start_point[0] <= hi and n.end_point[0] >= lo]
        for n in nodes:
            body_facts_range(n, syntax, merged, lo, hi, spec)
    f.calls, f.raises, f.returns = merged.calls, merged.raises, merged.returns
    return f


def body_facts_range(node: Any, syntax: Syntax, facts: Facts, lo: int, hi: int, spec: LangSpec | None = None) -> None:
    """Like `body_facts`, limited to nodes that start within rows lo..hi (0-based)."""
    spec = spec or syntax.spec
    if spec is None:
        return
    calls, raises, returns = dict.fromkeys(facts.calls), dict.fromkeys(facts.raises), dict.fromkeys(facts.returns)
    for n in walk(node):
        if not n.is_named or not lo <= n.start_point[0] <= hi:
            continue
        if n.type in spec.calls:
            name = _callee(n)
            if name:
                calls[name] = None
        elif n.type in spec.raises:
            raises[_raised(n)] = None
        elif n.type in spec.returns:
            value = next((c for c in n.named_children if c.type not in ("comment",)), None)
            returns[one_line(text_of(value), 80) if value is not None else "(bare return)"] = None
    facts.calls, facts.raises, facts.returns = list(calls)[:24], list(raises)[:10], list(returns)[:10]


def file_facts(syntax: Syntax) -> Facts:
    doc = syntax.doc
    lang = syntax.spec.name if syntax.spec else None
    last = doc.line_count - (1 if doc.text.endswith("\n") and doc.line_count > 1 else 0)
    f = Facts("file", doc.name, 1, last, language=lang)
    f.imports = syntax.imports()
    f.members = [f"{member_label(s)} (lines {s.start_line}-{s.end_line})" for s in syntax.symbols() if s.depth == 0][
        :60
    ]
    if syntax.spec is not None and syntax.spec.name == "python":
        f.docstring = _python_docstring(syntax.root)
    elif syntax.spec is not None and syntax.root is not None:
        first = syntax.root.named_children[0] if syntax.root.named_children else None
        if first is not None and first.type in syntax.spec.comments and first.start_point[0] == 0:
            f.docstring = _strip_comment(text_of(first)) or None
    if syntax.embedded:
        from demi.assistant.embedded import region_lines

        spans = [(r, *region_lines(syntax.source, r)) for r, _ in syntax.embedded]
        f.details["embedded"] = [f"{r.spec.name} ({r.kind}) lines {a}-{b}" for r, a, b in spans]
    return f
