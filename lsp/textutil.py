"""Positions as the client counts them, and the word before the cursor."""

from __future__ import annotations

import re

from lsprotocol import types as t

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_ODD_BREAKS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # str.splitlines breaks here; LSP does not


def lsp_lines(text: str) -> tuple[str, ...]:
    """Lines with their ends, split where LSP splits (\\n, \\r\\n, \\r) and nowhere else:
    str.splitlines also breaks at form feeds, \\x1c-\\x1e and U+2028, which would put every
    position after one of them on the wrong line."""
    if _ODD_BREAKS.search(text) is None:  # the usual case: str.splitlines agrees, and is 5x faster
        return tuple(text.splitlines(True))
    return tuple(m.group(0) for m in _LINE.finditer(text))


def units(text: str, encoding: str | None) -> int:
    """Length of `text` in the negotiated position encoding (UTF-16 unless agreed otherwise)."""
    enc = str(encoding or "utf-16").lower()
    if enc.endswith("32"):
        return len(text)
    if enc.endswith("8"):
        return len(text.encode("utf-8", errors="surrogatepass"))
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def index_of_units(line: str, n: int, encoding: str | None) -> int | None:
    """The character index `n` code units into `line`, or None when `n` is past its end."""
    if n == 0:
        return 0
    count = 0
    for i, c in enumerate(line):
        count += units(c, encoding)
        if count == n:
            return i + 1
        if count > n:
            return i + 1  # inside a character: the character after it (clients should not send this)
    return None


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
