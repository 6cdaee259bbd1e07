"""`PromptInput`: the message box (sending, new lines, completion, and earlier messages on Up).

Why a TextArea and not an Input: messages span lines (ctrl+j), and code pasted into them keeps
its shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.widgets import TextArea

from demi.tui.completion import Completion


class PromptInput(TextArea):
    """The message box: Enter sends, ctrl+j / alt+enter / shift+enter add a line, Tab completes,
    Up and Down on the first and last line walk through earlier messages."""

    class Submitted(Message):
        def __init__(self, text: str, at: float) -> None:
            super().__init__()
            self.text, self.at = text, at

    class Hints(Message):
        """Completion candidates to show (empty: hide them)."""

        def __init__(self, candidates: list[str]) -> None:
            super().__init__()
            self.candidates = candidates

    NEWLINE_KEYS = frozenset({"ctrl+j", "shift+enter", "alt+enter", "ctrl+enter"})

    def __init__(self, completer: Callable[[str, int], Completion | None] | None = None, **kwargs: Any) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, compact=True, **kwargs)
        self.completer = completer
        self.sent: list[str] = []
        self._recall: int | None = None
        self._draft = ""
        self._cycle: tuple[Completion, int] | None = None
        self._cycle_end = 0
        self._hinting = False

    @property
    def cursor_offset(self) -> int:
        """The cursor as an index into `text` (not `offset`: that is the widget's position)."""
        row, col = self.cursor_location
        lines = self.text.split("\n")
        return sum(len(line) + 1 for line in lines[:row]) + col

    def remember(self, text: str) -> None:
        if text.strip() and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._recall = None

    async def _on_key(self, event: Any) -> None:
        key = event.key
        if key != "tab":
            self._cycle = None
            if self._hinting:  # typing on: the candidates shown no longer apply
                self._hinting = False
                self.post_message(self.Hints([]))
        if key == "enter":
            self._stop(event)
            self.post_message(self.Hints([]))
            self.post_message(self.Submitted(self.text, getattr(event, "time", None) or time.monotonic()))
        elif key in self.NEWLINE_KEYS:
            self._stop(event)
            self.insert("\n")
        elif key == "tab" and self._complete():
            self._stop(event)
        elif key == "up" and self.cursor_location[0] == 0 and self.sent:
            self._stop(event)
            self._walk(-1)
        elif key == "down" and self._recall is not None and self.cursor_location[0] == self.document.line_count - 1:
            self._stop(event)
            self._walk(1)

    @staticmethod
    def _stop(event: Any) -> None:
        event.stop()
        event.prevent_default()

    def _walk(self, step: int) -> None:
        if self._recall is None:
            self._draft, self._recall = self.text, len(self.sent)
        self._recall = max(0, min(len(self.sent), self._recall + step))
        text = self.sent[self._recall] if self._recall < len(self.sent) else self._draft
        if self._recall == len(self.sent):
            self._recall = None
        self.load_text(text)
        self.move_cursor(self.document.end)

    def _complete(self) -> bool:
        if self.completer is None:
            return False
        if self._cycle is not None:  # Tab again: the next candidate
            cycling, i = self._cycle
            i = (i + 1) % len(cycling.candidates)
            self._replace(cycling.start, self._cycle_end, cycling.candidates[i])
            self._cycle = (cycling, i)
            self._cycle_end = cycling.start + len(cycling.candidates[i])
            return True
        comp = self.completer(self.text, self.cursor_offset)
        if comp is None or not comp.candidates:
            self.post_message(self.Hints([]))
            return False
        common = comp.common()
        current = self.text[comp.start : comp.end]
        if len(comp.candidates) == 1:
            self._replace(comp.start, comp.end, comp.candidates[0])
            self.post_message(self.Hints([]))
        elif len(common) > len(current):
            self._replace(comp.start, comp.end, common)
            self.post_message(self.Hints(comp.candidates))
            self._hinting = True
        else:
            self.post_message(self.Hints(comp.candidates))
            self._hinting = True
            self._cycle = (comp, -1)
            self._cycle_end = comp.end
            return self._complete()
        return True

    def _replace(self, start: int, end: int, text: str) -> None:
        doc = self.document
        self.replace(text, self._location(doc, start), self._location(doc, end))

    @staticmethod
    def _location(doc: Any, offset: int) -> tuple[int, int]:
        row = 0
        for line in doc.lines:
            if offset <= len(line):
                return row, offset
            offset -= len(line) + 1
            row += 1
        return doc.end
