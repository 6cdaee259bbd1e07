"""Stopping a chat answer or an explanation that loops, and cutting the loop off.

Small models fall into loops in prose as they do in code ("The stock of the stock of ...", one
`if` block or docstring sentence over and over) and then run to the token cap. `AnswerLoopGuard`
sits once between the engine's stream and whoever shows it (`chat.answer`, `explain.explain`), so
every front end (CLI, demi-chat, LSP) gets the same behaviour:

- it passes the text on as it comes, holding back only a tail that already repeats
  (`postprocess.repeat_hold`), so nothing shown is later taken back (at most a few characters of
  a second copy are shown before a loop is sure, and then kept);
- once the tail is a loop it stops decoding through the cancel token it hands the engine;
- the answer ends after the first copy of the repeated text (at a word's end), with a code fence
  it left open closed.

A loop is what `postprocess.loop_tails` finds, with longer units than completions use (whole
lines, sentences, small blocks) and, besides covering 40% of the answer, a long enough repeating
tail counts too: a long answer that starts looping need not loop for as long again.
Prose that repeats a word or starts every bullet alike does not end in exact copies, so it passes.
"""

from __future__ import annotations

from collections.abc import Callable

from demi.assistant.postprocess import LOOP_MIN_REPEATS, LOOP_MIN_SHARE, loop_tails, repeat_hold
from demi.model.cancel import CancelToken

ANSWER_MAX_UNIT = 160  # a repeated unit of up to this many characters: a few lines of code
ANSWER_MIN_CHARS = 200  # a repeating tail this long is a loop however long the answer before it
STOP_REPEATS = LOOP_MIN_REPEATS + 2  # while streaming, two copies more than the final cut needs
HOLD_SLACK = 8  # a tail repeating for fewer characters than this is passed on (prose does that all the time)
STOP_MIN_CHARS = 80  # and a loop this long at least: `[0, 0, 0, 0, 0, 0, ...` early in an answer is no loop yet


def loop_end(text: str, repeats: int = LOOP_MIN_REPEATS, min_loop: int = 0, keep: int = 0) -> int | None:
    """Where an answer that ends in a loop (of `min_loop` characters at least) should end: after the
    first copy of the repeated text (or `keep` characters, when more: what was already shown), moved
    on to the end of a word when one is near; None when the answer does not loop."""
    tails = loop_tails(text, repeats, ANSWER_MAX_UNIT, LOOP_MIN_SHARE, ANSWER_MIN_CHARS)
    tails = [(start, unit) for start, unit in tails if len(text) - start >= min_loop]
    if not tails:
        return None
    start, unit = min(tails, key=lambda t: t[0] + t[1])
    end = max(start + unit, keep)
    for j in range(end, min(len(text), end + unit) + 1):
        if j == len(text) or text[j].isspace() or text[j - 1].isspace():
            return j
    return end


def _open_fence(text: str) -> str | None:
    """The fence (```) a Markdown text leaves open, or None."""
    fence: str | None = None
    for line in text.splitlines():
        stripped = line.lstrip()
        if not stripped.startswith("```"):
            continue
        ticks = stripped[: len(stripped) - len(stripped.lstrip("`"))]
        if fence is None:
            fence = ticks
        elif stripped.rstrip() == fence or (stripped.startswith(fence) and not stripped[len(fence) :].strip()):
            fence = None
    return fence


class _StopToken(CancelToken):
    """Set when a loop is found, and whenever the caller's own token is."""

    def __init__(self, caller: CancelToken | None):
        super().__init__()
        self.caller = caller

    @property
    def cancelled(self) -> bool:
        return super().cancelled or (self.caller is not None and self.caller.cancelled)


class AnswerLoopGuard:
    """Between an engine's stream and `on_text`: `push` each piece, hand `token` to the engine as its
    cancel token, and call `finish` with the engine's whole text for the answer to keep."""

    def __init__(self, on_text: Callable[[str], None] | None = None, cancel: CancelToken | None = None):
        self.on_text = on_text
        self.caller = cancel
        self.token = _StopToken(cancel)
        self.text = ""  # everything the engine streamed
        self.sent = 0  # how much of it went on to `on_text`
        self.looped = False  # decoding was stopped for a loop
        self.cut = False  # the answer was cut where it started looping

    def push(self, piece: str) -> None:
        if self.looped or not piece:
            return
        self.text += piece
        if loop_end(self.text, STOP_REPEATS, STOP_MIN_CHARS) is not None:
            self.looped = True
            self.token.cancel()
            return
        end = repeat_hold(self.text, ANSWER_MAX_UNIT, HOLD_SLACK)
        body = self.text.rstrip()
        if "\n" in self.text[len(body) :]:  # a line break waits for the next line: a cut answer drops it
            end = min(end, len(body))
        self._send_to(end)

    def _send_to(self, end: int) -> None:
        if end > self.sent:
            piece, self.sent = self.text[self.sent : end], end
            if self.on_text:
                self.on_text(piece)

    def finish(self, full: str | None = None) -> str:
        """The answer: the streamed text (or `full`, when it goes on from it) without a looping
        tail; what was held back and still belongs to it goes to `on_text` now."""
        if full is not None and not self.looped and full.startswith(self.text):
            self.text = full
        end = loop_end(self.text, keep=self.sent)
        if end is None:
            self._send_to(len(self.text))
            return self.text
        self.cut = True
        answer = self.text[: max(len(self.text[:end].rstrip()), self.sent)]  # blanks already shown stay
        self._send_to(len(answer))
        fence = _open_fence(answer)
        if fence:
            closing = ("" if answer.endswith("\n") else "\n") + fence
            answer += closing
            if self.on_text:
                self.on_text(closing)
        return answer

    def finish_reason(self, engine_reason: str) -> str:
        """ "loop" when the answer was cut for looping (and the caller did not cancel it)."""
        if self.cut and not (self.caller is not None and self.caller.cancelled):
            return "loop"
        return engine_reason
