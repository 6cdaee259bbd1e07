"""Reading the user's files safely: clear errors for missing, binary or huge files, never a crash on bad UTF-8."""

from __future__ import annotations

from pathlib import Path

from demi.model.errors import DemiUserError
from demi.model.filecheck import TooLarge, read_checked

MAX_FILE_BYTES = 2 * 1024 * 1024


class FileInputError(DemiUserError):
    """A file the user named cannot be used as text."""


def read_text_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text; invalid UTF-8 is decoded with replacement characters."""
    p = Path(path)
    if not p.exists():
        raise FileInputError(f"{p}: no such file")
    if p.is_dir():
        raise FileInputError(f"{p}: is a directory, not a file")
    try:
        data = read_checked(p, max_bytes, FileInputError, "looks like a binary file, not text", binary_window=8192)
    except TooLarge as exc:
        raise FileInputError(f"{p}: {exc.size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit") from None
    return data.decode("utf-8", errors="replace")
