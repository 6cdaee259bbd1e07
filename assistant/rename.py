"""Renaming a local, a parameter or an attribute of `self`, exactly, by tree-sitter (no model).

"rename out to result" is mechanical: the answer is certain, so no model writes it. A local or a
parameter is renamed at every binding and use that refers to it (`pyscope.resolves_to`), and
nowhere else: strings, comments, other objects' attributes, keyword names and the same name bound
by a nested scope stay as they are. An attribute of `self` is renamed in the methods of the target
class (or in one method when nothing else in the file uses it). The rename is refused, with one
line saying why, when the new name is not an identifier, is a keyword, or is already used where
it would collide, or when the old name is not a local, a parameter or an attribute of `self` there.
Python only; other languages go to the model.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field
from typing import Any

from demi.assistant import pyscope
from demi.assistant.syntax import Symbol, text_of
from demi.assistant.target import Target
from demi.model.errors import DemiUserError


class RenameRefused(DemiUserError):
    """The rename cannot be done safely (the message says why); nothing was changed."""


@dataclass
class Renamed:
    new_text: str
    count: int  # occurrences changed
    kind: str  # local | parameter | attribute
    scope: str  # the function or class it was done in
    notes: list[str] = field(default_factory=list)


def check_new_name(new: str) -> None:
    if not new.isidentifier():
        raise RenameRefused(f"`{new}` is not a valid Python name; nothing was changed")
    if keyword.iskeyword(new):
        raise RenameRefused(f"`{new}` is a Python keyword; nothing was changed")


def apply_byte_edits(source: bytes, edits: list[tuple[int, int, str]]) -> str:
    """`source` with each (start byte, end byte, new text) replaced; edits must not overlap."""
    out, at = [], 0
    for start, end, text in sorted(edits):
        out.append(source[at:start])
        out.append(text.encode("utf-8"))
        at = end
    out.append(source[at:])
    return b"".join(out).decode("utf-8", errors="replace")


def _functions(node: Any) -> list[Any]:
    return [n for n in pyscope.walk_nodes(node) if n.type == "function_definition"]


def _line(node: Any) -> int:
    return int(node.start_point[0]) + 1


def _target_node(target: Target) -> Any | None:
    """The definition node of a symbol target (a function or class), else None."""
    sym: Symbol | None = target.symbol
    if sym is None or sym.node is None:
        return None
    return sym.node if sym.node.type in ("function_definition", "class_definition") else None


def _within(target: Target, node: Any) -> bool:
    return target.first <= _line(node) and int(node.end_point[0]) + 1 <= target.last


def rename(target: Target, old: str, new: str, attribute: bool = False) -> Renamed:
    """Rename `old` to `new` in `target` (a Python function, method, class, line range or file)."""
    if target.doc.lang is None or target.doc.lang.name != "python":
        raise NotImplementedError("mechanical renames are for Python")
    check_new_name(new)
    if old == new:
        raise RenameRefused(f"`{old}` already has that name; nothing was changed")
    if not old.isidentifier():
        raise RenameRefused(f"`{old}` is not a Python name; nothing was changed")
    node = _target_node(target)
    if node is not None and node.type == "class_definition" and not attribute:
        attribute = _has_self_attribute(node, old)  # in a class, `x` is first `self.x`
    if not attribute:
        owner = _owner_function(target, node, old)
        if owner is not None:
            return _rename_local(target, owner, old, new)
    found = _rename_attribute(target, node, old, new)
    if found is not None:
        return found
    where = f"`{target.label}`"
    raise RenameRefused(
        f"`{old}` is not a parameter, a local or an attribute of `self` in {where}; nothing was changed"
        + (" (rename a module-level name by hand: other files may import it)" if node is None else "")
    )


def _owner_function(target: Target, node: Any | None, old: str) -> Any | None:
    """The function whose local or parameter `old` is: the target function itself, or for a file,
    class or line range the one function inside it that binds `old` (several: ask for --symbol)."""
    if node is not None and node.type == "function_definition":
        return node if old in pyscope.scope_names(node).bound else None
    root = node if node is not None else target.syntax.root
    candidates = [
        f
        for f in _functions(root)
        if old in pyscope.scope_names(f).bound and (node is not None or target.kind == "file" or _overlaps(target, f))
    ]
    if target.kind == "lines":  # the innermost function around the range, if it binds `old`
        around = [f for f in candidates if _line(f) <= target.first and int(f.end_point[0]) + 1 >= target.last]
        candidates = around[-1:] or candidates
    if len(candidates) > 1:
        names = ", ".join(dict.fromkeys(text_of(f.child_by_field_name("name")) for f in candidates))
        raise RenameRefused(
            f"`{old}` is a local of several functions ({names}); pick one with --symbol; nothing was changed"
        )
    return candidates[0] if candidates else None


def _overlaps(target: Target, node: Any) -> bool:
    return _line(node) <= target.last and int(node.end_point[0]) + 1 >= target.first


def _rename_local(target: Target, fn: Any, old: str, new: str) -> Renamed:
    names = pyscope.scope_names(fn)
    fname = text_of(fn.child_by_field_name("name"))
    if old in names.globals or old in names.nonlocals:
        which = "global" if old in names.globals else "nonlocal"
        raise RenameRefused(f"`{old}` is declared {which} in `{fname}`: it is not its own; nothing was changed")
    if old in names.imported:
        raise RenameRefused(f"`{old}` is an imported name in `{fname}`; change the import by hand; nothing was changed")
    clash = next((n for n in pyscope.names_in(fn) if text_of(n) == new), None)
    if clash is not None:
        raise RenameRefused(f"`{new}` is already used in `{fname}` (line {_line(clash)}); nothing was changed")
    cache: dict[int, pyscope.ScopeNames] = {}
    hits = [n for n in pyscope.names_in(fn) if text_of(n) == old and pyscope.resolves_to(n, fn, cache)]
    outside = [n for n in hits if not _within(target, n)]
    if outside:
        raise RenameRefused(
            f"`{old}` is also used outside {target.label} (line {_line(outside[0])}); "
            f"rename it in the whole function (--symbol {fname}); nothing was changed"
        )
    params = fn.child_by_field_name("parameters")
    is_param = any(pyscope.contains(params, n) and pyscope.is_parameter_name(n) for n in hits) if params else False
    new_text = apply_byte_edits(target.syntax.source, [(n.start_byte, n.end_byte, new) for n in hits])
    notes = [
        f"renamed {len(hits)} occurrence{'s' if len(hits) != 1 else ''} of `{old}` in `{fname}` by static analysis"
    ]
    if is_param:
        notes += _parameter_notes(target, fn, old, fname)
    return Renamed(new_text, len(hits), "parameter" if is_param else "local", fname, notes)


def _parameter_notes(target: Target, fn: Any, old: str, fname: str) -> list[str]:
    """What a parameter's rename leaves to the user: callers in this file that pass it by keyword,
    and the docstring's mentions (text, not code)."""
    notes = []
    lines = []
    for n in pyscope.walk_nodes(target.syntax.root):
        if n.type != "keyword_argument" or text_of(n.child_by_field_name("name")) != old:
            continue
        call = n.parent.parent if n.parent is not None else None
        callee = call.child_by_field_name("function") if call is not None and call.type == "call" else None
        if callee is None:
            continue
        called = text_of(callee.child_by_field_name("attribute") if callee.type == "attribute" else callee)
        if called == fname:
            lines.append(_line(n))
    if lines:
        shown = ", ".join(str(x) for x in lines[:8])
        notes.append(
            f"calls that pass `{old}=` by keyword need the new name too (line{'s' if len(lines) > 1 else ''} {shown})"
        )
    body = fn.child_by_field_name("body")
    first = body.named_children[0] if body is not None and body.named_children else None
    if first is not None and first.type == "expression_statement" and first.named_children[0].type == "string":
        import re

        if re.search(rf"\b{re.escape(old)}\b", text_of(first)):
            notes.append(f"the docstring still mentions `{old}` (text is not renamed)")
    return notes


# -- attributes of self ---------------------------------------------------------------------------


def _class_of(node: Any | None) -> Any | None:
    p = node
    while p is not None and p.type != "class_definition":
        p = p.parent
    return p


def _methods(cls: Any) -> list[Any]:
    body = cls.child_by_field_name("body")
    out = []
    for c in body.named_children if body is not None else []:
        fn = c.child_by_field_name("definition") if c.type == "decorated_definition" else c
        if fn is not None and fn.type == "function_definition":
            decorators = [text_of(d) for d in c.named_children if d.type == "decorator"] if c is not fn else []
            if not any("staticmethod" in d for d in decorators):
                out.append(fn)
    return out


def _self_name(fn: Any) -> str | None:
    params = fn.child_by_field_name("parameters")
    first = next((c for c in params.named_children if c.type != "comment"), None) if params is not None else None
    if first is None:
        return None
    ident = first if first.type == "identifier" else first.child_by_field_name("name") or first.named_children[0]
    return text_of(ident) if ident is not None and ident.type == "identifier" else None


def _has_self_attribute(cls: Any, name: str) -> bool:
    for fn in _methods(cls):
        me = _self_name(fn)
        for a in pyscope.walk_nodes(fn):
            if a.type == "attribute" and text_of(a.child_by_field_name("attribute")) == name:
                obj = a.child_by_field_name("object")
                if obj is not None and text_of(obj) == me:
                    return True
    return name in pyscope.scope_names(cls).bound


def _rename_attribute(target: Target, node: Any | None, old: str, new: str) -> Renamed | None:
    """`self.old` -> `self.new` in the target class (or method), when nothing outside it uses `.old`."""
    cls = node if node is not None and node.type == "class_definition" else None
    method = node if node is not None and node.type == "function_definition" else None
    if cls is None and method is not None:
        cls = _class_of(method.parent)
    if cls is None:
        return None
    methods = _methods(cls) if method is None else [m for m in _methods(cls) if m.id == method.id]
    cache: dict[int, pyscope.ScopeNames] = {}
    hits: list[Any] = []
    clashes: list[Any] = []
    for fn in methods:
        me = _self_name(fn)
        if me is None:
            continue
        for a in pyscope.walk_nodes(fn):
            if a.type != "attribute":
                continue
            obj, attr = a.child_by_field_name("object"), a.child_by_field_name("attribute")
            if obj is None or obj.type != "identifier" or text_of(obj) != me or not pyscope.resolves_to(obj, fn, cache):
                continue
            if text_of(attr) == old:
                hits.append(attr)
            elif text_of(attr) == new:
                clashes.append(attr)
    body = cls.child_by_field_name("body")
    class_names = pyscope.scope_names(cls)
    if new in class_names.bound:
        raise RenameRefused(
            f"`{new}` is already defined in class `{text_of(cls.child_by_field_name('name'))}`; nothing was changed"
        )
    if clashes:
        raise RenameRefused(f"`self.{new}` is already used (line {_line(clashes[0])}); nothing was changed")
    class_bindings = [n for n in class_names.bound.get(old, []) if body is not None and pyscope.contains(body, n)]
    if not hits and not class_bindings:
        return None
    cname = text_of(cls.child_by_field_name("name"))
    if method is not None and class_bindings:
        raise RenameRefused(
            f"`{old}` is defined on class `{cname}` (line {_line(class_bindings[0])}); rename it on the class "
            f"(--symbol {cname}); nothing was changed"
        )
    region = method if method is not None else cls
    for n in pyscope.walk_nodes(target.syntax.root):
        if pyscope.contains(region, n):
            continue
        if n.type == "attribute" and text_of(n.child_by_field_name("attribute")) == old:
            raise RenameRefused(
                f"`.{old}` is also used outside `{text_of(region.child_by_field_name('name'))}` (line {_line(n)}); "
                "Demi renames an attribute only where it can see every use; nothing was changed"
            )
    for n in pyscope.walk_nodes(region):
        if n.type == "attribute" and text_of(n.child_by_field_name("attribute")) == old:
            if not any(h.id == n.child_by_field_name("attribute").id for h in hits):
                raise RenameRefused(
                    f"`{text_of(n)}` (line {_line(n)}) may be the same attribute of another object; nothing was changed"
                )
        if n.type == "string_content" and text_of(n) == old:
            raise RenameRefused(
                f'the string "{old}" (line {_line(n)}) may name the attribute (getattr, __slots__); nothing was changed'
            )
    edits = [(n.start_byte, n.end_byte, new) for n in hits + class_bindings]
    new_text = apply_byte_edits(target.syntax.source, edits)
    scope = text_of(region.child_by_field_name("name"))
    plural = "s" if len(edits) != 1 else ""
    note = f"renamed {len(edits)} occurrence{plural} of `self.{old}` in `{scope}` by static analysis"
    return Renamed(new_text, len(edits), "attribute", scope, [note])
