"""A source file as the tasks see it: text, language, and 1-based positions checked once, here.

Positions from the CLI are 1-based LINE:COL in characters; the language server sends 0-based
lines and UTF-16 columns. Both end up as a character offset into `text`. A position past the
end of a line or of the file is a user error with the valid range in the message (`clamp=True`
instead moves it to the nearest valid place, which is what an editor wants).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from demi.assistant.files import MAX_FILE_BYTES, read_text_file
from demi.assistant.languages import LangSpec, language_for
from demi.model.errors import DemiUserError


class PositionError(DemiUserError):
    """A line, column or range outside the file."""


@dataclass
class Document:
    text: str
    path: Path | None = None
    lang: LangSpec | None = None
    lossy: bool = False  # the bytes were not valid UTF-8 (decoded with U+FFFD)
    digest: str = ""  # sha256 of the bytes as read, to notice a change before writing
    _starts: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        starts = [0]
        for i, ch in enumerate(self.text):
            if ch == "\n":
                starts.append(i + 1)
        self._starts = starts

    @classmethod
    def load(cls, path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Document:
        """Read a user's file: missing, binary and oversized files are one-line user errors."""
        p = Path(path)
        read_text_file(p, max_bytes=max_bytes)  # the checks and their messages
        data = p.read_bytes()  # again, so the digest belongs to exactly this text
        try:
            text, lossy = data.decode("utf-8"), False
        except UnicodeDecodeError:
            text, lossy = data.decode("utf-8", errors="replace"), True
        return cls(text, p, language_for(p, text), lossy, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_text(cls, text: str, path: str | Path | None = None) -> Document:
        p = Path(path) if path is not None else None
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls(text, p, language_for(p, text) if p else None, False, digest)

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<text>"

    @property
    def line_count(self) -> int:
        """Lines an editor shows: "a\\nb\\n" has three (the last one empty)."""
        return len(self._starts)

    def line(self, line: int) -> str:
        """Text of 1-based `line` without its end-of-line characters."""
        start = self._starts[line - 1]
        end = self._starts[line] - 1 if line < len(self._starts) else len(self.text)
        return self.text[start:end].rstrip("\r")

    def line_start(self, line: int) -> int:
        return self._starts[line - 1]

    def line_of(self, offset: int) -> int:
        """1-based line holding character `offset`."""
        lo, hi = 0, len(self._starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    def position(self, offset: int) -> tuple[int, int]:
        """(line, col), both 1-based, of character `offset`."""
        line = self.line_of(offset)
        return line, offset - self._starts[line - 1] + 1

    def offset(self, line: int, col: int, clamp: bool = False) -> int:
        """Character offset of 1-based (line, col); col may be one past the line's last character."""
        n = self.line_count
        if not 1 <= line <= n:
            if not clamp:
                raise PositionError(f"{self.name}: line {line} is outside the file (lines 1-{n})")
            line = min(max(line, 1), n)
            col = len(self.line(line)) + 1 if line == n else col
        width = len(self.line(line))
        if not 1 <= col <= width + 1:
            if not clamp:
                raise PositionError(f"{self.name}:{line}: column {col} is outside the line (columns 1-{width + 1})")
            col = min(max(col, 1), width + 1)
        return self._starts[line - 1] + col - 1

    def offset_utf16(self, line0: int, character: int, clamp: bool = True) -> int:
        """Offset of an LSP position (0-based line, UTF-16 code units)."""
        if not 0 <= line0 < self.line_count:
            if not clamp:
                raise PositionError(f"{self.name}: line {line0 + 1} is outside the file")
            return 0 if line0 < 0 else len(self.text)
        text, units, col = self.line(line0 + 1), 0, 0
        while col < len(text) and units < character:
            units += 2 if ord(text[col]) > 0xFFFF else 1
            col += 1
        return self._starts[line0] + col

    def lsp_position(self, offset: int) -> dict[str, int]:
        """{"line", "character"} (0-based, UTF-16) of a character offset."""
        line, col = self.position(offset)
        before = self.text[self._starts[line - 1] : self._starts[line - 1] + col - 1]
        return {"line": line - 1, "character": sum(2 if ord(c) > 0xFFFF else 1 for c in before)}

    def check_lines(self, first: int, last: int) -> tuple[int, int]:
        """Validate a 1-based inclusive line range."""
        n = self.line_count
        if self.text.endswith("\n") and n > 1:
            n -= 1  # the empty line after the final newline is not code
        if first < 1 or last < first:
            raise PositionError(f"bad line range {first}-{last}: use A-B with 1 <= A <= B")
        if last > n:
            raise PositionError(f"{self.name}: lines {first}-{last} run past the end of the file ({n} lines)")
        return first, last

    def line_span(self, first: int, last: int) -> tuple[int, int]:
        """Character offsets [start, end) of whole lines first..last, end-of-line included."""
        start = self._starts[first - 1]
        end = self._starts[last] if last < len(self._starts) else len(self.text)
        return start, end

    @property
    def newline(self) -> str:
        return "\r\n" if "\r\n" in self.text else "\n"


def parse_position(spec: str) -> tuple[int, int]:
    """'LINE:COL' (1-based) as a pair of ints."""
    parts = spec.strip().split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        line, col = int(parts[0]), int(parts[1])
    except ValueError:
        raise PositionError(f"bad position {spec!r}: use LINE:COL, both 1-based (e.g. 12:5)") from None
    if line < 1 or col < 1:
        raise PositionError(f"bad position {spec!r}: LINE and COL start at 1")
    return line, col


def parse_line_range(spec: str) -> tuple[int, int]:
    """'A-B' or 'A' (1-based, inclusive)."""
    parts = spec.strip().split("-")
    try:
        if len(parts) == 1:
            first = last = int(parts[0])
        elif len(parts) == 2:
            first, last = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise PositionError(f"bad line range {spec!r}: use A-B (1-based, inclusive), e.g. 10-24") from None
    if first < 1 or last < first:
        raise PositionError(f"bad line range {spec!r}: use A-B with 1 <= A <= B")
    return first, last
