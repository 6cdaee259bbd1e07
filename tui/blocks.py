"""Where a streamed Markdown answer can be cut between finished top-level blocks.

Why: Textual lays out a whole `Markdown` widget again whenever its last block grows, so a long
answer streamed into one widget costs more per frame the longer it gets (and a key pressed during
that frame waits for it). Cutting the answer into several widgets, each sealed once its blocks are
finished, keeps the per-frame cost to the last few blocks. A cut is only made where the two halves
parse to the same blocks as the whole: after a blank line outside a code fence, before a line that
starts a new block and cannot continue the one before (not indented, not a list item). Constructs
that reach across blocks (reference links, HTML blocks that may hold blank lines) are reported by
`needs_whole` so the finished answer can be drawn again as one document.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_WHOLE = re.compile(
    r"^ {0,3}(\[[^\]\n]+\]:|<(?:!--|pre|script|style|textarea|\?|![A-Za-z]|!\[CDATA\[))", re.MULTILINE | re.IGNORECASE
)


def needs_whole(text: str) -> bool:
    """True when blocks of `text` refer to each other (link definitions, multi-paragraph HTML)."""
    return _WHOLE.search(text) is not None


def starts_block(line: str) -> bool | None:
    """Whether a line after a blank line starts a block that a cut before it cannot change:
    True, False, or None while too little of the line has arrived to say."""
    if not line:
        return None
    first = line[0]
    if first in " \t":
        return False  # indented: a list item's continuation or indented code
    if first in "-*+":
        if len(line) < 2:
            return None
        return line[1] not in " \t\n"  # "- item" is a list item ("-x", "**bold**", "---" are not)
    if first.isdigit():
        i = 0
        while i < len(line) and line[i].isdigit():
            i += 1
        if i == len(line):
            return None
        if line[i] not in ".)":
            return True
        if i + 1 == len(line):
            return None
        return line[i + 1] not in " \t\n"  # "1. item" continues an ordered list
    return True


class BlockCuts:
    """Fed a streamed Markdown text piece by piece; reports the offsets where it may be cut.

    `feed` returns the new safe cut offsets (each is the start of a line that begins a block);
    `undecided` is the offset of a possible cut still waiting for more of its line (the text from
    there on should be held back until it is decided, so nothing shown has to be taken back)."""

    def __init__(self) -> None:
        self.pos = 0  # characters fed so far
        self.line = ""  # the current, unfinished line
        self.line_start = 0
        self.fence: tuple[str, int] | None = None
        self.after_blank = False  # the current line follows a blank line
        self.seen_text = False  # a non-blank line came before (no cut at the top)
        self._decided = False  # the current line's cut question is settled

    @property
    def undecided(self) -> int | None:
        if self._candidate() and not self._decided:
            return self.line_start
        return None

    def _candidate(self) -> bool:
        return self.after_blank and self.seen_text and self.fence is None

    def feed(self, text: str) -> list[int]:
        cuts: list[int] = []
        while text:
            newline = text.find("\n")
            part = text if newline < 0 else text[: newline + 1]
            text = "" if newline < 0 else text[newline + 1 :]
            self.line += part
            self.pos += len(part)
            if self._candidate() and not self._decided and self.line.strip():
                verdict = starts_block(self.line)  # a complete line always gets a verdict
                if verdict is not None:
                    self._decided = True
                    if verdict:
                        cuts.append(self.line_start)
            if part.endswith("\n"):
                self._end_line(self.line[:-1])
        return cuts

    def _end_line(self, line: str) -> None:
        blank = line.strip() == ""
        if self.fence is not None:
            m = _FENCE.match(line)
            char, size = self.fence
            if m and m.group(1)[0] == char and len(m.group(1)) >= size and line[m.end() :].strip() == "":
                self.fence = None
            blank = False  # a blank line inside a fence ends nothing
        elif not blank:
            m = _FENCE.match(line)
            if m and not (m.group(1)[0] == "`" and "`" in line[m.end() :]):
                self.fence = (m.group(1)[0], len(m.group(1)))
        if not blank:
            self.seen_text = True
        self.after_blank = blank
        self.line = ""
        self.line_start = self.pos
        self._decided = False
