"""The refactors Demi carries out itself, and the check that a rewrite did what was asked.

`carry_out` does a recognised instruction (`instructions.recognise`) without the model where
static analysis is exact: a rename (`rename.py`), a loop into a comprehension and a constant
(`static_rewrites.py`); a docstring or type hints from the facts, with the model writing only
the prose or the types the code does not show (`annotate.py`). It raises `NotApplicable` when the
code has no such shape, so the refactor asks the model instead, and `RenameRefused` (a user
error) when the rename would be wrong. `done` checks any rewrite, Demi's or the model's, against
the instruction: the old name gone and the new one bound, a docstring present, a comprehension
present, hints present, the constant defined and used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from demi.assistant import pyscope
from demi.assistant.annotate import add_docstring, add_type_hints
from demi.assistant.document import Document
from demi.assistant.instructions import (
    AddDocstring,
    AddTypeHints,
    ExtractConstant,
    Intent,
    Rename,
    ToComprehension,
)
from demi.assistant.rename import rename
from demi.assistant.static_rewrites import NotApplicable, extract_constant, loops_to_comprehensions
from demi.assistant.syntax import Syntax, text_of
from demi.assistant.target import Target

if TYPE_CHECKING:
    from demi.model.generate import CancelToken, Sampling

STATIC = "static analysis"
HYBRID = "static analysis and the model"
MODEL = "the model"


@dataclass
class Carried:
    new_text: str
    method: str  # STATIC | HYBRID
    notes: list[str] = field(default_factory=list)
    model_parts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0


def static_only(intent: Intent | None) -> bool:
    """Whether the intent never needs the model when it applies (a rename never does at all)."""
    return isinstance(intent, (Rename, ToComprehension, ExtractConstant))


def carry_out(
    engine: Any,
    target: Target,
    intent: Intent,
    tries: int = 3,
    sampling: Sampling | None = None,
    cancel: CancelToken | None = None,
) -> Carried:
    """Do `intent` on `target` by static analysis (and for docstrings and hints, the model's prose)."""
    if isinstance(intent, Rename):
        try:
            done = rename(target, intent.old, intent.new, intent.attribute)
        except NotImplementedError as exc:
            raise NotApplicable(str(exc)) from None
        return Carried(done.new_text, STATIC, done.notes)
    if isinstance(intent, ToComprehension):
        edit = loops_to_comprehensions(target)
        return Carried(edit.new_text, STATIC, edit.notes)
    if isinstance(intent, ExtractConstant):
        edit = extract_constant(target, intent.literal, intent.name)
        return Carried(edit.new_text, STATIC, edit.notes)
    annotate = add_docstring if isinstance(intent, AddDocstring) else add_type_hints
    made = annotate(engine, target, tries=tries, sampling=sampling, cancel=cancel)
    method = HYBRID if made.model_calls and made.model_parts else STATIC
    return Carried(
        made.new_text,
        method,
        made.notes,
        made.model_parts,
        made.prompt_tokens,
        made.completion_tokens,
        made.model_calls,
    )


# -- did the rewrite do what was asked? -------------------------------------------------------------------


def _region(target: Target, syntax: Syntax) -> Any:
    """The target's node in the rewritten file (the symbol found again by name), else the module."""
    if target.symbol is not None:
        try:
            return syntax.find(target.symbol.qualname).outer
        except Exception:  # renamed away or unparsable: the whole file is all there is
            return syntax.root
    return syntax.root


def _definition(node: Any) -> Any:
    if node.type == "decorated_definition":
        inner = node.child_by_field_name("definition")
        return inner if inner is not None else node
    return node


def _annotations(fn: Any) -> int:
    params = fn.child_by_field_name("parameters")
    count = (
        sum(1 for c in params.named_children if c.type in ("typed_parameter", "typed_default_parameter"))
        if params
        else 0
    )
    return count + (1 if fn.child_by_field_name("return_type") is not None else 0)


def _count(node: Any, types: tuple[str, ...]) -> int:
    return sum(1 for n in pyscope.walk_nodes(node) if n.type in types)


def done(intent: Intent, target: Target, new_text: str) -> str | None:
    """None when `new_text` does what `intent` asks of `target`, else what it fails to do."""
    doc = target.doc
    if doc.lang is None or doc.lang.name != "python":
        return None  # only Python is checked this closely; other languages get the parse check
    new = Syntax(Document(new_text, doc.path, doc.lang))
    if new.root is None or new_text == doc.text:
        return "nothing changed"
    old_node, new_node = _region(target, target.syntax), _region(target, new)
    if isinstance(intent, Rename):
        if intent.attribute or not _binds(old_node, intent.old):  # an attribute of self
            fewer = _attr_count(new_node, intent.old) < _attr_count(old_node, intent.old)
            return None if fewer and _attr_count(new_node, intent.new) else f"`.{intent.old}` was not renamed"
        if not _binds(new_node, intent.new):
            return f"`{intent.new}` is not bound in {target.label}"
        if _binds(new_node, intent.old, count=True) >= _binds(old_node, intent.old, count=True):
            return f"`{intent.old}` is still bound in {target.label}"
        return None
    if isinstance(intent, AddDocstring):
        fn = _definition(new_node)
        body = fn.child_by_field_name("body") if fn.type != "module" else fn
        first = next((c for c in body.named_children if c.type != "comment"), None) if body is not None else None
        is_doc = first is not None and first.type == "expression_statement" and first.named_children[0].type == "string"
        return None if is_doc else "no docstring"
    if isinstance(intent, AddTypeHints):
        before, after = _definition(old_node), _definition(new_node)
        if after.type != "function_definition":
            return "no function to hold hints"
        return None if _annotations(after) > _annotations(before) else "no new type hint"
    if isinstance(intent, ToComprehension):
        kinds = pyscope.COMPREHENSIONS
        more = _count(new_node, tuple(kinds)) > _count(old_node, tuple(kinds))
        return None if more else "no new comprehension"
    if isinstance(intent, ExtractConstant):
        names = {text_of(n) for n in pyscope.names_in(new_node)} - {text_of(n) for n in pyscope.names_in(old_node)}
        module = pyscope.scope_names(new.root).bound
        added = [n for n in names if n in module and n.isupper()]
        return None if added else "no module-level constant used in the target"
    return None


def _binds(node: Any, name: str, count: bool = False) -> int:
    """Whether (with `count`: in how many of its functions) `name` is bound under `node`."""
    fns = [n for n in pyscope.walk_nodes(node) if n.type == "function_definition"] or [node]
    found = sum(1 for f in fns if name in pyscope.scope_names(f).bound)
    return found if count else int(found > 0)


def _attr_count(node: Any, name: str) -> int:
    return sum(
        1
        for n in pyscope.walk_nodes(node)
        if n.type == "attribute" and text_of(n.child_by_field_name("attribute")) == name
    )
