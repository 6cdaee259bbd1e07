"""Positions as the client counts them, and the word before the cursor."""

from __future__ import annotations

import re

from lsprotocol import types as t

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_ODD_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines breaks here; LSP does not
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # two UTF-16 code units each
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON can carry them ("\\ud800"); UTF-8 cannot


def lsp_lines(text: str) -> tuple[str, ...]:
    """Lines with their ends, split where LSP splits (\\n, \\r\\n, \\r) and nowhere else:
    str.splitlines also breaks at form feeds, \\x1c-\\x1e and U+2028, which would put every
    position after one of them on the wrong line."""
    if _ODD_BREAKS.search(text) is None:  # the usual case: str.splitlines agrees, and is 5x faster
        return tuple(text.splitlines(True))
    return tuple(m.group(0) for m in _LINE.finditer(text))


def _enc(encoding: object) -> str:
    return str(getattr(encoding, "value", encoding) or "utf-16").lower()


def units(text: str, encoding: object) -> int:
    """Length of `text` in the negotiated position encoding (UTF-16 unless agreed otherwise)."""
    enc = _enc(encoding)
    if enc.endswith("32"):
        return len(text)
    if enc.endswith("8"):
        return len(text.encode("utf-8", errors="surrogatepass"))
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def index_of_units(line: str, n: int, encoding: object) -> int | None:
    """The character index `n` code units into `line`, or None when `n` is past its end. A
    position inside a character (between the halves of a surrogate pair) means the start of that
    character, as VS Code reads it."""
    if n == 0:
        return 0
    enc = _enc(encoding)
    if (
        enc.endswith("32")
        or (not enc.endswith("8") and _ASTRAL.search(line, 0, n) is None)
        or (enc.endswith("8") and line[:n].isascii())
    ):
        return n if n <= len(line) else None  # one unit per character up to n: no loop over a long line
    count = 0
    for i, c in enumerate(line):
        count += units(c, enc)
        if count == n:
            return i + 1
        if count > n:
            return i  # inside a character: its start (clients should not send this)
    return None


def offset_at(text: str, line: int, character: int, encoding: object, lines: tuple[str, ...] | None = None) -> int:
    """The character offset of an LSP position in `text`, clamped the way editors clamp a
    change's range: a line past the end is the end of the text, a character past the end of its
    line is the end of the line (before its line break)."""
    lines = lsp_lines(text) if lines is None else lines
    if line >= len(lines):
        return len(text)
    start = sum(map(len, lines[:line]))
    content = line_text(lines[line])
    col = index_of_units(content, character, encoding)
    return start + (len(content) if col is None else col)


def without_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD: one UTF-16 unit for one, so every
    position the client sends still means the same place, and the text can be encoded again."""
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def line_text(line: str) -> str:
    """A line without its end-of-line characters."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith(("\n", "\r")):
        return line[:-1]
    return line


def word_before(before: str) -> str:
    """The identifier characters just before the cursor (what a client filters completions by)."""
    i = len(before)
    while i > 0 and (before[i - 1].isalnum() or before[i - 1] == "_"):
        i -= 1
    return before[i:]


def advance(pos: t.Position, text: str, encoding: str | None) -> t.Position:
    """The position after `text` (one line only) starting at `pos`."""
    return t.Position(line=pos.line, character=pos.character + units(text, encoding))


def position_at(text: str, offset: int, encoding: object, lines: tuple[str, ...] | None = None) -> t.Position:
    """The LSP position of character `offset` in `text` (lines as LSP splits them)."""
    lines = lsp_lines(text) if lines is None else lines
    start = 0
    for i, line in enumerate(lines):
        if offset < start + len(line) or (
            offset == start + len(line) and i == len(lines) - 1 and not line.endswith(("\n", "\r"))
        ):
            return t.Position(line=i, character=units(text[start:offset], encoding))
        start += len(line)
    return t.Position(line=len(lines), character=0)  # the end of a text that ends with a line break


def replace_changed_lines(old: str, new: str, encoding: object) -> t.TextEdit | None:
    """One TextEdit turning `old` into `new`: the lines between their common first and last
    lines (LSP's lines: a lone \\r ends one, U+2028 and form feeds do not), None when equal."""
    if old == new:
        return None
    a, b = lsp_lines(old), lsp_lines(new)
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < len(a) - lo and hi < len(b) - lo and a[-1 - hi] == b[-1 - hi]:
        hi += 1
    start = sum(map(len, a[:lo]))
    end = len(old) - sum(map(len, a[len(a) - hi :]))
    text = new[start : len(new) - (len(old) - end)]
    return t.TextEdit(
        range=t.Range(start=position_at(old, start, encoding, a), end=position_at(old, end, encoding, a)), new_text=text
    )
