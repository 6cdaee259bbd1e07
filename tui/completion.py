"""Tab completion in the message box: /commands, @paths, @path:symbols and command paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from demi.tui.commands import BY_NAME, COMMANDS, QUANTS

MAX_CANDIDATES = 200


@dataclass
class Completion:
    start: int  # text[start:end] is replaced by a candidate
    end: int
    candidates: list[str]

    def common(self) -> str:
        return os.path.commonprefix(self.candidates) if self.candidates else ""


def _token_start(text: str, cursor: int) -> int:
    i = cursor
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    return i


def _paths(partial: str, root: Path, dirs_only: bool = False) -> list[str]:
    """Entries completing `partial` (relative to root); directories end with '/'."""
    head, _, prefix = partial.rpartition("/")
    folder_text = head + "/" if _ else ""
    base = Path(folder_text).expanduser() if folder_text else Path(".")
    folder = base if base.is_absolute() else root / base
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if not e.name.startswith(prefix) or (e.name.startswith(".") and not prefix.startswith(".")):
            continue
        try:
            is_dir = e.is_dir()
        except OSError:
            continue
        if dirs_only and not is_dir:
            continue
        out.append(folder_text + e.name + ("/" if is_dir else ""))
        if len(out) >= MAX_CANDIDATES:
            break
    return out


def complete(
    text: str, cursor: int, root: Path, symbols: Callable[[Path], list[str]] | None = None
) -> Completion | None:
    """What Tab offers at `cursor`, or None when nothing applies."""
    start = _token_start(text, cursor)
    token = text[start:cursor]
    line_start = text.rfind("\n", 0, start) + 1
    if start == 0 and token.startswith("/") and " " not in token:  # a command name
        names = [f"/{c.name}" for c in COMMANDS if f"/{c.name}".startswith(token.lower())]
        return Completion(start, cursor, [n + " " for n in names]) if names else None
    if token.startswith("@"):
        return _complete_target(token[1:], start + 1, cursor, root, symbols)
    words = text[:start].split()
    if start > 0 and words and words[0].startswith("/") and text[:line_start].strip() == "":
        command = BY_NAME.get(words[0][1:].lower())
        if command is not None and command.takes_path and (len(words) == 1 or words[1:] == ["--force"]):
            return _complete_target(token, start, cursor, root, symbols if command.name != "undo" else None)
        if command is not None and command.name == "model" and len(words) == 2:
            quants = [q for q in QUANTS if q.startswith(token)]
            return Completion(start, cursor, quants) if quants else None
    return None


def _complete_target(
    partial: str, start: int, cursor: int, root: Path, symbols: Callable[[Path], list[str]] | None
) -> Completion | None:
    if ":" in partial and symbols is not None:
        path, _, prefix = partial.partition(":")
        file = Path(path).expanduser()
        file = file if file.is_absolute() else root / file
        if file.is_file():
            names = [n for n in symbols(file) if n.startswith(prefix)]
            seen: list[str] = []
            for n in names:
                if n not in seen:
                    seen.append(n)
            return Completion(start, cursor, [f"{path}:{n}" for n in seen[:MAX_CANDIDATES]]) if seen else None
        return None
    found = _paths(partial, root)
    return Completion(start, cursor, found) if found else None
