"""`refactor`: an instruction on a symbol or range; the model's rewrite is checked before anyone sees it.

The rewrite replaces exactly the target's lines (re-indented to the target's indentation, with
the file's own newlines). It is rejected, and nothing changes, when it is empty, does not
parse where the original did, drops the definition it was asked to rewrite, or (when the model
sent back the whole file) changes lines outside the target. The result is a unified diff and
an LSP WorkspaceEdit; writing is a separate, explicit `apply`.

A rejected reply is followed by sampled ones (`candidates`), the first valid one kept. An
instruction Demi recognises (a rename, a docstring, type hints, a loop into a comprehension, a
constant) is carried out by static analysis where that is exact (`mechanical.py`), the model
writing only what the facts cannot; the model's rewrites of such an instruction must also do what
it asks (`mechanical.done`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demi.assistant.candidates import candidate_sampling
from demi.assistant.document import Document
from demi.assistant.edits import Edit, apply_edit, changed_lines, unified_diff, workspace_edit
from demi.assistant.prompts import extract_code, refactor_prompt
from demi.assistant.syntax import Syntax
from demi.assistant.target import Target, resolve_target, target_context
from demi.model.errors import DemiError, DemiUserError

if TYPE_CHECKING:  # torch loads only with the engine, so bad input fails fast
    from demi.model.generate import CancelToken, Sampling


class RefactorRejected(DemiError):
    """The model's rewrite failed validation; the file is untouched (a runtime failure, exit 1)."""


@dataclass
class RefactorResult:
    path: Path
    target: str
    lines: tuple[int, int]
    edit: Edit
    diff: str
    workspace_edit: dict[str, Any]
    model: str
    reply: str
    applied: bool = False
    backup: Path | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    lossy: bool = False
    speculation: dict[str, int] | None = None  # speculative decoding's figures (None: off)
    method: str = "the model"  # who wrote the change: static analysis, static analysis and the model, the model
    tries: int = 1  # model replies asked for (0: none)

    def as_json(self) -> dict[str, Any]:
        return {
            "diff": self.diff,
            "applied": self.applied,
            "path": str(self.path),
            "target": self.target,
            "lines": list(self.lines),
            "workspace_edit": self.workspace_edit,
            "model": self.model,
            "backup": str(self.backup) if self.backup else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
            "notes": self.notes,
            "speculation": self.speculation,
            "method": self.method,
            "tries": self.tries,
        }


def _lead(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _reindent(code: str, indent: str) -> str:
    """Shift `code` so its first non-blank line starts with `indent` (relative indents kept)."""
    lines = code.split("\n")
    first = next((ln for ln in lines if ln.strip()), "")
    base = _lead(first)
    if base == indent:
        return code
    out = []
    for ln in lines:
        if not ln.strip():
            out.append("")
        elif ln.startswith(base):
            out.append(indent + ln[len(base) :])
        else:  # less indented than the first line (a decorator, a closing brace): strip what it has
            own = _lead(ln)
            out.append(indent[: max(0, len(indent) - (len(base) - len(own)))] + ln.lstrip(" \t"))
    return "\n".join(out)


def _strip_echo(code: str, doc: Document, first: int, last: int) -> str:
    """Drop lines the model copied from just before or just after the target, and blank lines
    at either end that the target itself does not have."""
    lines = code.rstrip("\n").split("\n")
    head_blank, tail_blank = not doc.line(first).strip(), not doc.line(last).strip()
    target_first, target_last = doc.line(first).strip(), doc.line(last).strip()
    before = {doc.line(i).strip() for i in range(max(1, first - 4), first)} - {""}
    after = {doc.line(i).strip() for i in range(last + 1, min(doc.line_count, last + 4) + 1)} - {""}
    while lines and (
        not lines[0].strip() and not head_blank or lines[0].strip() != target_first and lines[0].strip() in before
    ):
        lines.pop(0)
    while lines and (
        not lines[-1].strip() and not tail_blank or lines[-1].strip() != target_last and lines[-1].strip() in after
    ):
        lines.pop()
    return "\n".join(lines) + "\n"


def splice(target: Target, reply: str) -> str:
    """The whole new file text with the model's code in place of the target (validated)."""
    doc = target.doc
    code = extract_code(reply).replace("\r\n", "\n")
    if not code.strip():
        raise RefactorRejected("the model returned no code; nothing was changed (try again, or a larger model)")
    start, end = doc.line_span(target.first, target.last)
    region = doc.text[start:end]
    old_lines = doc.text.count("\n") + 1
    outside = old_lines - (target.last - target.first + 1)
    if target.kind != "file" and outside >= 3 and code.count("\n") + 1 >= 0.8 * old_lines:
        new = code if doc.newline == "\n" else code.replace("\n", doc.newline)
        if doc.text.endswith("\n") != new.endswith("\n"):
            new = new + doc.newline if doc.text.endswith("\n") else new.rstrip("\r\n")
        span = changed_lines(doc.text, new)
        if span is not None and (span[0] < target.first or span[1] > target.last):
            raise RefactorRejected(
                f"the model changed lines outside {target.label} (lines {target.first}-"
                f"{target.last}); nothing was changed"
            )
        return new
    if target.kind != "file":
        code = _strip_echo(code, doc, target.first, target.last)
    first_line = next((ln for ln in region.split("\n") if ln.strip()), "")
    code = _reindent(code, _lead(first_line.replace("\r", "")))
    if not region.endswith("\n"):
        code = code.rstrip("\n")
    elif not code.endswith("\n"):
        code += "\n"
    if doc.newline != "\n":
        code = code.replace("\n", doc.newline)
    return doc.text[:start] + code + doc.text[end:]


def validate(target: Target, new_text: str) -> list[str]:
    """Reject a rewrite that parses worse than the original or loses the target's definition."""
    doc = target.doc
    if doc.lang is None:
        return [f"no grammar for {doc.name}: the rewrite could not be checked by parsing"]
    new_doc = Document(new_text, doc.path, doc.lang)
    new_syntax = Syntax(new_doc)
    if new_syntax.error_count() > target.syntax.error_count():
        line = new_syntax.first_error_line()
        raise RefactorRejected(
            f"the model's rewrite does not parse ({doc.lang.name}, near line {line} of the "
            f"result); nothing was changed (try again, or a larger model)"
        )
    if target.symbol is not None:
        span = changed_lines(doc.text, new_text)
        lo, hi = (span[2], span[3]) if span else (target.first, target.last)
        defs = [s for s in new_syntax.symbols() if s.start_line <= max(hi, lo) and s.end_line >= lo]
        if span is not None and not defs:
            raise RefactorRejected(f"the rewrite no longer defines {target.symbol.qualname}; nothing was changed")
    return []


def rejection_reason(exc: Exception) -> str:
    """A rejected reply's reason without the "nothing was changed" tail (for a list of tries)."""
    return str(exc).split("; nothing was changed")[0]


def candidate_rewrites(
    engine: Any,
    prompt: Any,
    target: Target,
    candidates: int,
    reasons: list[str],
    rejected: type[RefactorRejected],
    max_tokens: int,
    sampling: Sampling | None,
    on_text: Callable[[str], None] | None,
    cancel: Any,
    time_budget: float | None,
) -> Iterator[tuple[int, Any, str | None, list[str]]]:
    """The model's replies in turn (`candidate_sampling`), each spliced into the document and
    validated (`rewrite`): yields (try, reply, new text, notes), the new text None for a reply that
    did not validate (its reason added to `reasons`; the reply is still yielded, so its tokens are
    counted), and raises `rejected` when the user cancels. Refactor and fix share it; what counts
    as done (an intent carried out, a test passing) is theirs."""
    for i in range(candidates):
        result = engine.chat(
            prompt,
            on_text=on_text,
            max_new_tokens=max_tokens,
            sampling=candidate_sampling(sampling, i),
            cancel=cancel,
            time_budget=time_budget,
        )
        if result.finish_reason == "cancelled":
            raise rejected("cancelled; nothing was changed")
        try:
            new_text, notes = rewrite(target, result.text)
        except RefactorRejected as exc:
            reasons.append(rejection_reason(exc))
            yield i, result, None, []
            continue
        yield i, result, new_text, notes


def rewrite(target: Target, reply: str) -> tuple[str, list[str]]:
    """The model's reply spliced in and validated: (the new file text, notes). Raises
    `RefactorRejected` when it fails; every task that rewrites code (refactor, fix) checks it here."""
    new_text = splice(target, reply)
    return new_text, validate(target, new_text)


DEFAULT_CANDIDATES = 3  # model replies tried until one is valid (the first greedy, then sampled)


def needs_model(
    doc: Document, instruction: str, symbol: str | None = None, lines: tuple[int, int] | None = None
) -> bool:
    """Whether `propose` will call the model: False when static analysis does the whole change (a
    rename, a loop into a comprehension, a constant: front ends need not load a model for it)."""
    from demi.assistant.instructions import recognise
    from demi.assistant.mechanical import carry_out, static_only
    from demi.assistant.static_rewrites import NotApplicable

    intent = recognise(instruction)
    if not static_only(intent) or intent is None:
        return True
    try:
        carry_out(None, resolve_target(doc, symbol, lines), intent)
    except NotApplicable:
        return True
    except DemiUserError:
        return False  # refused with a reason: no model either
    return False


def _result(
    target: Target, info_name: str, new_text: str, reply: str, notes: list[str], started: float, **extra: Any
) -> RefactorResult:
    doc = target.doc
    edit = Edit(doc.path or Path(doc.name), doc.text, new_text, doc.digest)
    return RefactorResult(
        edit.path,
        target.label,
        (target.first, target.last),
        edit,
        unified_diff(edit),
        workspace_edit(edit),
        info_name,
        reply,
        seconds=time.monotonic() - started,
        notes=notes,
        lossy=doc.lossy,
        **extra,
    )


def propose(
    engine: Any,
    doc: Document,
    instruction: str,
    symbol: str | None = None,
    lines: tuple[int, int] | None = None,
    max_tokens: int = 768,
    budget: int = 2048,
    sampling: Sampling | None = None,
    cancel: CancelToken | None = None,
    on_text: Callable[[str], None] | None = None,
    time_budget: float | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    static: bool = True,
) -> RefactorResult:
    """The rewrite, validated; nothing is written.

    A recognised instruction (`instructions.recognise`: rename, docstring, type hints, loop into a
    comprehension, constant) is carried out by static analysis where that is exact, with the model
    writing only prose or types the code does not show (`mechanical.carry_out`; for a large model a
    docstring or hints are the model's, this being the fallback). Otherwise the model rewrites the
    target: up to `candidates` replies (the first as `sampling` says, the rest sampled), keeping the
    first that parses, stays inside the target, changes something and, for a recognised instruction,
    does what it asks (`mechanical.done`). `engine` may be None when `needs_model` is False.
    `static=False` leaves everything to the model (the benchmarks' baseline)."""
    from demi.assistant.instructions import AddDocstring, AddTypeHints, describe, recognise
    from demi.assistant.mechanical import MODEL, carry_out, done
    from demi.assistant.static_rewrites import NotApplicable

    if not instruction or not instruction.strip():
        raise DemiUserError("--instruction is empty: say what to change")
    if candidates < 1:
        raise DemiUserError(f"candidates must be at least 1, got {candidates}")
    started = time.monotonic()
    target = resolve_target(doc, symbol, lines)
    intent = recognise(instruction)
    large = engine is not None and engine.info().large
    prose_first = large and isinstance(intent, (AddDocstring, AddTypeHints))
    static_why = ""
    if intent is not None and not prose_first and static:
        try:
            carried = carry_out(engine, target, intent, candidates, sampling, cancel)
            validate(target, carried.new_text)
            return _carried_result(target, engine, carried, started)
        except NotApplicable as exc:
            static_why = str(exc)
    if engine is None:
        raise DemiUserError(f"{describe(intent) if intent else 'this instruction'} needs a model: {static_why}")
    language = doc.lang.fence if doc.lang else None
    target, info, ctx, budget = target_context(
        engine,
        doc,
        symbol,
        lines,
        max_tokens,
        budget,
        frame=lambda facts, c: refactor_prompt(doc.name, language, facts, c, instruction),
    )
    if ctx.code_cut:
        raise DemiUserError(
            f"{target.label} is too long to rewrite within {budget} tokens of context; "
            "pick a smaller --symbol or --lines range"
        )
    prompt = refactor_prompt(doc.name, language, target.facts, ctx, instruction)
    reasons: list[str] = []
    unchanged: RefactorResult | None = None  # returned (as "unchanged") when no reply changed anything
    prompt_tokens = completion_tokens = 0
    replies = candidate_rewrites(
        engine,
        prompt,
        target,
        candidates,
        reasons,
        RefactorRejected,
        max_tokens,
        sampling,
        on_text,
        cancel,
        time_budget,
    )
    for i, result, new_text, notes in replies:
        prompt_tokens += int(result.prompt_tokens or 0)
        completion_tokens += int(result.extra.get("completion_tokens", result.completion_tokens))
        if new_text is None:
            continue
        if new_text == doc.text:
            reasons.append("the model returned the code unchanged")
            unchanged = unchanged or _result(target, info.name, new_text, result.text, notes, started, tries=i + 1)
            continue
        missed = done(intent, target, new_text) if intent is not None else None
        if intent is not None and missed is not None:
            reasons.append(f"the rewrite does not {describe(intent)} ({missed})")
            continue
        if result.finish_reason == "length":
            notes.append(f"the model stopped at max_tokens {max_tokens}; check the end of the rewrite")
        if static_why:
            notes.insert(0, f"not done by static analysis ({static_why}); the model rewrote it")
        if i:
            notes.append(f"the model's reply {i + 1} of {candidates} was the first valid one")
        return _result(
            target,
            info.name,
            new_text,
            result.text,
            notes,
            started,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            speculation=result.extra.get("speculation"),
            method=MODEL,
            tries=i + 1,
        )
    if unchanged is not None and all(r == "the model returned the code unchanged" for r in reasons):
        # every reply gave the code back: the model's considered answer, nothing to change
        unchanged.notes.append("the model returned the code unchanged")
        unchanged.prompt_tokens, unchanged.completion_tokens = prompt_tokens, completion_tokens
        return unchanged
    if prose_first and static and intent is not None:  # the model failed: the facts still give a skeleton
        try:
            carried = carry_out(engine, target, intent, candidates, sampling, cancel)
            validate(target, carried.new_text)
            return _carried_result(target, engine, carried, started, tries=candidates)
        except NotApplicable as exc:
            reasons.append(str(exc))
    tries = f"{candidates} tries" if candidates > 1 else "1 try"
    said = "; ".join(dict.fromkeys(reasons))
    lead = f"not done by static analysis ({static_why}); " if static_why else ""
    raise RefactorRejected(
        f"{lead}no valid rewrite from the model ({tries}): {said}; nothing was changed (try again, or a larger model)"
    )


def _carried_result(target: Target, engine: Any, carried: Any, started: float, tries: int = 0) -> RefactorResult:
    from demi.assistant.mechanical import STATIC

    name = "static analysis (no model)" if carried.method == STATIC or engine is None else engine.info().name
    notes = list(carried.notes)
    if carried.new_text == target.doc.text:
        notes.append("nothing to change")
    return _result(
        target,
        name,
        carried.new_text,
        "\n".join(carried.model_parts),
        notes,
        started,
        prompt_tokens=carried.prompt_tokens,
        completion_tokens=carried.completion_tokens,
        method=carried.method,
        tries=tries + carried.model_calls,
    )


def apply(result: RefactorResult, data_dir: Path, root: Path | None = None) -> RefactorResult:
    """Write the edit (atomic, with a backup); refuses a file that changed since it was read or
    that lies outside `root` (see `edits.apply_edit`, which owns every rule of the write)."""
    if result.lossy:
        raise DemiUserError(
            f"{result.path} is not valid UTF-8; Demi will not rewrite it (it would replace the undecodable bytes)"
        )
    if result.edit.changed:
        result.backup = apply_edit(result.edit, data_dir, root)
        result.applied = True
    return result
