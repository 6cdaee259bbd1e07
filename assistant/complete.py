"""`complete`: FIM at a position, stopped early at the end of the block, then post-processed.

The last step (`demi.assistant.overlap`) weighs the suggestion against the text right of the
cursor: one that repeats it is dropped, one that rewrites it replaces it (`replace` characters).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from demi.assistant.context import RecentFiles, fim_context
from demi.assistant.document import Document
from demi.assistant.overlap import resolve_overlap
from demi.assistant.postprocess import BlockWatcher, decide_mode, postprocess
from demi.assistant.prompts import instruct_warning
from demi.assistant.syntax import Syntax, parse
from demi.assistant.workspace_cache import WorkspaceCache, request_hook

if TYPE_CHECKING:  # torch loads only with the engine, so bad input fails fast
    from demi.model.generate import CancelToken, Sampling

TAIL_CHARS = 8000  # post-processing looks at this much text around the cursor


@dataclass
class CompletionResult:
    completion: str
    raw: str
    mode: str
    steps: list[str]
    model: str
    line: int
    col: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = ""
    fim: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    speculation: dict[str, int] | None = None  # speculative decoding's figures (None: off)
    replace: int = 0  # characters right of the cursor (on its line) the completion replaces
    # the workspace cache model's part (None: off): tokens it was asked about, and those it mixed into
    workspace_cache: dict[str, int] | None = None

    @property
    def replace_end(self) -> tuple[int, int]:
        """(line, col), 1-based, where the replaced text ends: (line, col) itself when nothing is."""
        return self.line, self.col + self.replace

    def as_json(self) -> dict[str, Any]:
        return {
            "completion": self.completion,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
            "line": self.line,
            "col": self.col,
            "mode": self.mode,
            "raw": self.raw,
            "postprocess": self.steps,
            "finish_reason": self.finish_reason,
            "fim": self.fim,
            "notes": self.notes,
            "warnings": self.warnings,
            "speculation": self.speculation,
            "replace": self.replace,
            "replace_end": {"line": self.replace_end[0], "col": self.replace_end[1]},
            "workspace_cache": self.workspace_cache,
        }


def complete(
    engine: Any,
    doc: Document,
    offset: int,
    max_tokens: int = 64,
    budget: int = 1024,
    recent: RecentFiles | None = None,
    sampling: Sampling | None = None,
    cancel: CancelToken | None = None,
    time_budget: float | None = None,
    syntax: Syntax | None = None,
    workspace_cache: WorkspaceCache | None = None,
) -> CompletionResult:
    """The text to insert at character `offset` of `doc`, in place of the result's `replace`
    characters after it (`syntax`: `doc` already parsed, to reuse). With `workspace_cache` (and an
    in-process model), `doc` is fed to it and its n-gram prior is mixed into the model's choices."""
    started = time.monotonic()
    info = engine.info()
    if info.context:  # room for the template's markers and the file path too
        budget = max(16, min(budget, info.context - max_tokens - 32 - engine.count_tokens(doc.name)))
    syntax = syntax if syntax is not None else parse(doc)
    ctx = fim_context(doc, offset, engine.count_tokens, budget, syntax, recent)
    prefix_tail, suffix_head = doc.text[max(0, offset - TAIL_CHARS) : offset], doc.text[offset : offset + TAIL_CHARS]
    mode = decide_mode(prefix_tail, suffix_head, doc.lang)
    watcher = BlockWatcher(prefix_tail, suffix_head, doc.lang, mode)
    from demi.model.generate import CancelToken

    class _StopEarly(CancelToken):  # set at the end of the block, and set whenever the caller's token is
        @property
        def cancelled(self) -> bool:
            return super().cancelled or (cancel is not None and cancel.cancelled)

    stop_early = _StopEarly()
    hook = request_hook(engine, workspace_cache, doc.name, doc.text, offset, ctx.prefix)
    extra: dict[str, Any] = {"mix": hook} if hook is not None else {}

    def on_text(piece: str) -> None:
        if watcher.push(piece) or (cancel is not None and cancel.cancelled):
            stop_early.cancel()

    result = engine.infill(
        ctx,
        on_text=on_text,
        max_new_tokens=max_tokens,
        sampling=sampling,
        stop=["\n"] if mode == "single" else None,
        cancel=stop_early,
        time_budget=time_budget,
        **extra,
    )
    processed = postprocess(prefix_tail, result.text, suffix_head, doc.lang, mode)
    overlap = resolve_overlap(prefix_tail, processed.text, suffix_head, doc.lang)
    if overlap.action != "insert":  # it repeats the text right of the cursor, or replaces it
        processed.steps.append(f"overlap_{overlap.action}")
    warnings = []
    if info.instruct:
        warnings.append(instruct_warning(info.name))
    if info.kind == "in-process" and info.fim is None:
        warnings.append(
            f"{info.name} has no fill-in-the-middle tokens: completing from the text before the cursor only"
        )
    reason = result.finish_reason
    if reason == "cancelled" and watcher.done and not (cancel is not None and cancel.cancelled):
        reason = "stop"  # stopped early at the end of the block, not by the caller
    line, col = doc.position(offset)
    tokens = result.extra.get("completion_tokens", result.completion_tokens)
    return CompletionResult(
        overlap.text,
        result.text,
        mode,
        processed.steps,
        info.name,
        line,
        col,
        result.prompt_tokens,
        int(tokens),
        time.monotonic() - started,
        reason,
        result.extra.get("fim"),
        ctx.notes,
        warnings,
        result.extra.get("speculation"),
        overlap.replace,
        {"steps": hook.steps, "mixed": hook.mixed} if hook is not None else None,
    )
