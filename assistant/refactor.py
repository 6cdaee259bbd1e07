"""`refactor`: an instruction on a symbol or range; the model's rewrite is checked before anyone sees it.

The rewrite replaces exactly the target's lines (re-indented to the target's indentation, with
the file's own newlines). It is rejected, and nothing changes, when it is empty, does not
parse where the original did, drops the definition it was asked to rewrite, or (when the model
sent back the whole file) changes lines outside the target. The result is a unified diff and
an LSP WorkspaceEdit; writing is a separate, explicit `apply`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demi.assistant.document import Document
from demi.assistant.edits import Edit, apply_edit, changed_lines, unified_diff, workspace_edit
from demi.assistant.prompts import extract_code, refactor_prompt
from demi.assistant.syntax import Syntax
from demi.assistant.target import Target, target_context
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


def rewrite(target: Target, reply: str) -> tuple[str, list[str]]:
    """The model's reply spliced in and validated: (the new file text, notes). Raises
    `RefactorRejected` when it fails; every task that rewrites code (refactor, fix) checks it here."""
    new_text = splice(target, reply)
    return new_text, validate(target, new_text)


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
) -> RefactorResult:
    """Ask the model for the rewrite and validate it; nothing is written."""
    if not instruction or not instruction.strip():
        raise DemiUserError("--instruction is empty: say what to change")
    started = time.monotonic()
    target, info, ctx, budget = target_context(engine, doc, symbol, lines, max_tokens, budget)
    if ctx.code_cut:
        raise DemiUserError(
            f"{target.label} is too long to rewrite within {budget} tokens of context; "
            "pick a smaller --symbol or --lines range"
        )
    language = doc.lang.fence if doc.lang else None
    prompt = refactor_prompt(doc.name, language, target.facts, ctx, instruction)
    result = engine.chat(
        prompt, on_text=on_text, max_new_tokens=max_tokens, sampling=sampling, cancel=cancel, time_budget=time_budget
    )
    if result.finish_reason == "cancelled":
        raise RefactorRejected("cancelled; nothing was changed")
    new_text, notes = rewrite(target, result.text)
    if result.finish_reason == "length":
        notes.append(f"the model stopped at max_tokens {max_tokens}; check the end of the rewrite")
    edit = Edit(doc.path or Path(doc.name), doc.text, new_text, doc.digest)
    if not edit.changed:
        notes.append("the model returned the code unchanged")
    tokens = result.extra.get("completion_tokens", result.completion_tokens)
    return RefactorResult(
        edit.path,
        target.label,
        (target.first, target.last),
        edit,
        unified_diff(edit),
        workspace_edit(edit),
        info.name,
        result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=int(tokens),
        seconds=time.monotonic() - started,
        notes=notes,
        lossy=doc.lossy,
        speculation=result.extra.get("speculation"),
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
