"""Reading a file's bytes with the checks every text reader needs, kept in one place for the
assistant (files the user names) and the training corpus (files it collects).

The size is checked before reading, so a huge file never lands in memory; OS errors become a
one-line message; a NUL byte marks a binary file. Each caller keeps its own error class and
wording, and decides what "too large" means to it: an error for the user, a recorded skip for
the corpus.
"""

from __future__ import annotations

from pathlib import Path


class TooLarge(Exception):
    """The file is over the size limit (not read)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size} bytes is over the {limit} byte limit")
        self.size, self.limit = size, limit


def read_checked(
    path: Path, max_bytes: int, error: type[Exception], binary: str, binary_window: int | None = None
) -> bytes:
    """`path`'s bytes. Raises TooLarge over `max_bytes`; `error("PATH: reason")` when it cannot be
    read, or when a NUL byte is in its first `binary_window` bytes (all of it when None), with
    `binary` as the reason."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(size, max_bytes)
        data = path.read_bytes()
    except PermissionError as exc:
        raise error(f"{path}: permission denied") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if b"\x00" in data[:binary_window]:
        raise error(f"{path}: {binary}")
    return data
