"""Docstrings and type hints: static analysis writes what it knows, the model only the rest.

A docstring's skeleton is certain: the parameters (with their declared types and defaults), what
is returned (the `return` expressions, the declared type), what is raised and on which condition
(the `if` around the `raise`). Only the one-line summary is prose, and that is the model's, asked
as demi-tiny was trained (`prompts.summary_prompt`) and tried up to `tries` times until a
sentence passes: a few words, one line, no names the code does not have (`explain_check`).

A type hint is static where the code shows the type (`type_inference`: defaults, use, returns);
for the rest the model fills the hole after `name: ` (or `-> `) by fill-in-the-middle, each
answer kept only if it is a type this file can name. A hint nobody can tell is left out and
said so. Every result says which part came from where (`Annotated.model_parts`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from demi.assistant import pyscope
from demi.assistant.candidates import candidate_sampling
from demi.assistant.document import Document
from demi.assistant.explain_check import check
from demi.assistant.facts import Facts
from demi.assistant.rename import apply_byte_edits
from demi.assistant.static_rewrites import NotApplicable
from demi.assistant.syntax import parse, text_of
from demi.assistant.target import Target, prompt_tokens
from demi.assistant.type_inference import (
    ReturnReader,
    module_return_annotations,
    module_type_names,
    param_types,
)

if TYPE_CHECKING:
    from demi.model.generate import CancelToken, Sampling

SUMMARY_TOKENS = 60  # one sentence
TYPE_TOKENS = 16
MAX_SUMMARY_CHARS = 200


@dataclass
class Annotated:
    new_text: str
    notes: list[str] = field(default_factory=list)
    model_parts: list[str] = field(default_factory=list)  # what the model wrote, as it stands in the code
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0


@dataclass
class _Asker:
    """The model calls of one task, counted; `engine` None means no model is available."""

    engine: Any
    tries: int
    sampling: Sampling | None
    cancel: CancelToken | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def ask(self, run: Callable[[Sampling | None], Any], accept: Callable[[str], str | None]) -> str | None:
        """The first answer `accept` turns into a value, over up to `tries` replies."""
        if self.engine is None:
            return None
        for i in range(self.tries):
            result = run(candidate_sampling(self.sampling, i))
            self.calls += 1
            self.prompt_tokens += int(getattr(result, "prompt_tokens", 0) or 0)
            self.completion_tokens += int(result.extra.get("completion_tokens", result.completion_tokens) or 0)
            if result.finish_reason == "cancelled":
                return None
            value = accept(result.text) if result.finish_reason != "length" else None
            if value is not None:
                return value
        return None


def _function(target: Target) -> Any:
    if target.doc.lang is None or target.doc.lang.name != "python":
        raise NotApplicable("docstrings and type hints by static analysis are for Python")
    sym = target.symbol
    if sym is None or sym.node is None or sym.node.type not in ("function_definition", "class_definition"):
        raise NotApplicable("pick a function, method or class (--symbol)")
    return sym.node


def _is_method(fn: Any) -> bool:
    p = fn.parent
    if p is not None and p.type == "decorated_definition":
        if any("staticmethod" in text_of(d) for d in p.named_children if d.type == "decorator"):
            return False
        p = p.parent
    return p is not None and p.type == "block" and p.parent is not None and p.parent.type == "class_definition"


def _model_name(engine: Any) -> str:
    try:
        return str(engine.info().name)
    except Exception:  # a server that cannot say: its configured name
        return str(getattr(engine, "name", "the model"))


# -- the summary line ---------------------------------------------------------------------------------


def clean_summary(text: str, facts: Facts, code: str) -> str | None:
    """The model's reply as one docstring line, or None when it is not a usable sentence."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:[-*>#]+\s*|\*\*summary:?\*\*\s*|summary:\s*)", "", line, flags=re.I).strip().strip('"').strip()
    line = line.replace("**", "")
    if not line or '"""' in line or "\\" in line or len(line) > MAX_SUMMARY_CHARS:
        return None
    if len(re.findall(r"[A-Za-z]+", line)) < 3 or line.count("`") % 2:
        return None
    if line.endswith((",", ":", ";", "(", "-")):
        return None
    line = line[0].upper() + line[1:]
    if not line.endswith((".", "!", "?")):
        line += "."
    found = check(line, facts, code)
    if found.invented or found.unknown:
        return None
    return line


def summary(asker: _Asker, target: Target, code: str) -> str | None:
    from demi.assistant.budget import keep_head
    from demi.assistant.prompts import summary_prompt

    sym = target.symbol
    name = sym.name if sym is not None else target.label
    kind = target.facts.kind

    def prompt_for(text: str) -> Any:
        return summary_prompt(target.doc.name, kind, name, text, target.doc.lang.fence if target.doc.lang else None)

    info = asker.engine.info()
    if info.context:
        room = info.context - SUMMARY_TOKENS - 32
        over = prompt_tokens(asker.engine, prompt_for(code)) - room
        if over > 0:
            code = keep_head(code, max(32, asker.engine.count_tokens(code) - over), asker.engine.count_tokens)
    prompt = prompt_for(code)
    return asker.ask(
        lambda s: asker.engine.chat(prompt, max_new_tokens=SUMMARY_TOKENS, sampling=s, cancel=asker.cancel),
        lambda text: clean_summary(text, target.facts, code),
    )


# -- docstrings ---------------------------------------------------------------------------------------


def _raise_conditions(fn: Any) -> dict[str, str]:
    """Exception name -> the condition of the `if` (or `elif`) right around its `raise`."""
    out: dict[str, str] = {}
    for n in pyscope.walk_nodes(fn):
        if n.type != "raise_statement":
            continue
        expr = next((c for c in n.named_children if c.type != "comment"), None)
        if expr is None:
            continue
        exc = expr.child_by_field_name("function") if expr.type == "call" else expr
        name = " ".join(text_of(exc).split())
        block = n.parent
        clause = block.parent if block is not None else None
        if clause is not None and clause.type in ("if_statement", "elif_clause") and len(block.named_children) == 1:
            cond = clause.child_by_field_name("condition")
            if cond is not None and name not in out:
                out[name] = " ".join(text_of(cond).split())
    return out


def docstring_text(target: Target, fn: Any, line: str, indent: str) -> str:
    """The docstring: the summary `line`, then Args, Returns and Raises from the facts."""
    f = target.facts
    params = [p for p in f.params if p.name not in ("self", "cls") or not _is_method(fn)]
    if _is_method(fn) and f.params and f.params[0].name not in ("self", "cls"):
        params = f.params[1:]  # the first parameter of a method is its instance, whatever its name
    sections: list[str] = []
    if params and fn.type == "function_definition":
        rows = []
        for p in params:
            desc = f"Defaults to `{p.default}`." if p.default else ""
            typed = f" ({p.type})" if p.type else ""
            rows.append(f"    {p.name}{typed}:" + (f" {desc}" if desc else ""))
        sections.append("Args:\n" + "\n".join(rows))
    returned = [r for r in f.returns if r not in ("(bare return)", "None")]
    if fn.type == "function_definition" and (returned or (f.returns_annotation and f.returns_annotation != "None")):
        head = f"{f.returns_annotation}: " if f.returns_annotation and f.returns_annotation != "None" else ""
        what = ", ".join(f"`{r}`" for r in returned[:3]) + ("." if returned else "")
        sections.append(f"{'Yields' if f.yields else 'Returns'}:\n    " + (head + what).strip())
    conditions = _raise_conditions(fn)
    raised = [r for r in f.raises if re.fullmatch(r"[A-Za-z_][\w.]*", r)]
    if raised:
        rows = [f"    {r}:" + (f" If `{conditions[r]}`." if r in conditions else "") for r in raised]
        sections.append("Raises:\n" + "\n".join(rows))
    if not sections:
        return f'{indent}"""{line}"""\n'
    body = "\n\n".join(sections)
    lines = [f'"""{line}', ""] + body.split("\n") + ['"""']
    return "".join((indent + ln if ln else "") + "\n" for ln in lines)


def add_docstring(
    engine: Any, target: Target, tries: int = 3, sampling: Sampling | None = None, cancel: CancelToken | None = None
) -> Annotated:
    """The target function or class with a docstring: the model's summary over the facts' sections."""
    fn = _function(target)
    body = fn.child_by_field_name("body")
    first = next((c for c in body.named_children if c.type != "comment"), None) if body is not None else None
    if body is None or first is None or body.start_point[0] == fn.start_point[0]:
        raise NotApplicable(f"{target.label} has its body on the `def` line; nothing to put a docstring above")
    if target.facts.docstring is not None or (
        first.type == "expression_statement" and first.named_children and first.named_children[0].type == "string"
    ):
        raise NotApplicable(f"{target.label} already has a docstring")
    if engine is None:
        raise NotApplicable("the summary line needs a model")
    doc = target.doc
    start, end = doc.line_span(target.first, target.last)
    code = _dedent(doc.text[start:end])
    asker = _Asker(engine, tries, sampling, cancel)
    line = summary(asker, target, code)
    if line is None:
        raise NotApplicable(
            f"the model wrote no usable one-line summary in {asker.calls} tr{'ies' if asker.calls != 1 else 'y'}"
        )
    row = body.named_children[0].start_point[0]
    indent = doc.line(row + 1)[: body.named_children[0].start_point[1]]
    text = docstring_text(target, fn, line, indent)
    at = _line_start(doc, row + 1)
    new_text = doc.text[:at] + text.replace("\n", doc.newline) + doc.text[at:]
    name = _model_name(engine)
    notes = [
        f"the docstring's first line was written by the model `{name}`; its Args, Returns and Raises come from "
        "static analysis (descriptions stay empty where nothing is certain: fill them in)"
    ]
    return Annotated(new_text, notes, [line], asker.prompt_tokens, asker.completion_tokens, asker.calls)


def _line_start(doc: Document, line: int) -> int:
    start, _ = doc.line_span(line, line)
    return start


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code)


# -- type hints -------------------------------------------------------------------------------------


_TYPE_TEXT = re.compile(r"[A-Za-z_][\w.]*(?:\[[\w., \[\]|]*\])?(?:\s*\|\s*[A-Za-z_][\w.]*(?:\[[\w., \[\]|]*\])?)*")


def clean_type(text: str, allowed: set[str], own_name: str = "") -> str | None:
    """A type from the model's fill-in: the text up to the hole's end, kept only if every name in
    it is one this file can use (builtins, its classes, its imports) and it reads as a type."""
    text = text.strip().lstrip(":").strip()
    depth, cut = 0, len(text)
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                cut = i
                break
        elif depth == 0 and ch in ",)=:\n#":
            cut = i
            break
    candidate = text[:cut].strip()
    if not candidate or depth > 0 or not _TYPE_TEXT.fullmatch(candidate):
        return None
    names = re.findall(r"[A-Za-z_][\w]*", candidate)
    if own_name in names or any(n.split(".")[0] not in allowed for n in names):
        return None
    return candidate


def _hole(asker: _Asker, target: Target, at: int, insert: str, allowed: set[str], own: str) -> str | None:
    """The model's type for the hole at character `at` (after inserting `insert` there)."""
    from demi.assistant.context import FimContext, fim_context

    doc = target.doc
    text = doc.text[:at] + insert + doc.text[at:]
    holed = Document(text, doc.path, doc.lang)
    info = asker.engine.info()
    budget = min(1024, (info.context or 2048) - TYPE_TOKENS - 64)
    ctx: FimContext = fim_context(holed, at + len(insert), asker.engine.count_tokens, budget)
    return asker.ask(
        lambda s: asker.engine.infill(ctx, max_new_tokens=TYPE_TOKENS, stop=["\n"], sampling=s, cancel=asker.cancel),
        lambda reply: clean_type(reply, allowed, own),
    )


def add_type_hints(
    engine: Any, target: Target, tries: int = 3, sampling: Sampling | None = None, cancel: CancelToken | None = None
) -> Annotated:
    """Hints on the target function's parameters and return: static where the code shows the type,
    the model's (checked) where it does not, left out where neither can tell."""
    fn = _function(target)
    if fn.type != "function_definition":
        raise NotApplicable("type hints go on a function or method (--symbol NAME)")
    source = target.syntax.source
    doc = target.doc
    method = _is_method(fn)
    static = param_types(fn, skip_first=method)
    allowed = module_type_names(target.syntax.root)
    params = fn.child_by_field_name("parameters")
    named = [c for c in params.named_children if c.type not in ("comment", "keyword_separator", "positional_separator")]
    asker = _Asker(engine, tries, sampling, cancel)
    edits: list[tuple[int, int, str]] = []
    from_static: list[str] = []
    from_model: list[str] = []
    left_out: list[str] = []
    known: dict[str, str] = {}
    for i, p in enumerate(named):
        if i == 0 and method or p.type in ("list_splat_pattern", "dictionary_splat_pattern"):
            continue
        if p.type in ("typed_parameter", "typed_default_parameter"):
            name = text_of(p.named_children[0] if p.type == "typed_parameter" else p.child_by_field_name("name"))
            known[name] = " ".join(text_of(p.child_by_field_name("type")).split())
            continue
        name_node = p if p.type == "identifier" else p.child_by_field_name("name")
        if name_node is None:
            continue
        name = text_of(name_node)
        ty = static[name].type if name in static else None
        if ty is not None:
            from_static.append(f"`{name}: {ty}` ({static[name].evidence})")
        elif engine is not None:
            at = len(source[: name_node.end_byte].decode("utf-8", errors="replace"))
            ty = _hole(asker, target, at, ": ", allowed, name)
            value = p.child_by_field_name("value") if p.type == "default_parameter" else None
            if ty is not None and value is not None and text_of(value) == "None" and "None" not in ty.split(" | "):
                ty = f"{ty} | None"  # the default is None: the hint must allow it
            if ty is not None:
                from_model.append(f"`{name}: {ty}`")
        if ty is None:
            left_out.append(f"`{name}`")
            continue
        known[name] = ty
        if p.type == "identifier":
            edits.append((p.end_byte, p.end_byte, f": {ty}"))
        else:  # name=default -> name: T = default
            value = p.child_by_field_name("value")
            edits.append((name_node.end_byte, value.start_byte, f": {ty} = "))
    if fn.child_by_field_name("return_type") is None:
        reader = ReturnReader(fn, known, module_return_annotations(target.syntax.root))
        ret, why = reader.returns()
        if ret is not None:
            from_static.append(f"`-> {ret}` ({why})")
        elif engine is not None and "generator" not in why:
            at = len(source[: params.end_byte].decode("utf-8", errors="replace"))
            ret = _hole(asker, target, at, " -> ", allowed, "")
            if ret is not None:
                from_model.append(f"`-> {ret}`")
        if ret is None:
            left_out.append(f"the return ({why})")
        else:
            edits.append((params.end_byte, params.end_byte, f" -> {ret}"))
    if not edits:
        detail = f": nothing shows the type of {', '.join(left_out)}" if left_out else ": it is fully annotated"
        raise NotApplicable(f"no hint to add to {target.label}{detail}")
    new_text = apply_byte_edits(source, edits)
    check_parse(new_text, doc)
    notes = []
    if from_static:
        notes.append("hints from static analysis: " + ", ".join(from_static))
    if from_model:
        notes.append(f"hints from the model `{_model_name(engine)}` (check them): " + ", ".join(from_model))
    if left_out:
        notes.append("no hint for " + ", ".join(left_out) + ": neither the code nor the model could tell")
    return Annotated(new_text, notes, from_model, asker.prompt_tokens, asker.completion_tokens, asker.calls)


def check_parse(new_text: str, doc: Document) -> None:
    if parse(Document(new_text, doc.path, doc.lang)).error_count() > parse(doc).error_count():
        raise NotApplicable("the hints would not parse")
