"""Progress of long work (loading, quantizing, measuring kernels), reported by the engine, shown by a front end.

The engine calls `report(stage, done, total)` as it goes: each stage starts at 0 and ends at `total`,
never going back. Whoever wants to hear it wraps the work in `progress_to(callback)`; the callback
is a plain function `(stage, done, total)`. Standard library only, and in the package root because
every layer may import it: `demi.model` reports, the front ends listen, and none of them imports
another layer for it (the import contracts in pyproject.toml hold).

The listener is held in a context variable, so it follows the work in the thread (or task) that set
it and no other, and the engine's signatures between a front end and the loader (`LocalModel.load`,
`bench`, `quantize_checkpoint`) need no extra argument. A callback that raises stops the work: it
is the caller's own code, like an `on_text` callback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Progress = Callable[[str, int, int], None]
"""`on_progress(stage, done, total)`: `done` of `total` steps of `stage` are finished."""

_listener: ContextVar[Progress | None] = ContextVar("demi_progress", default=None)


@contextlib.contextmanager
def progress_to(on_progress: Progress | None) -> Iterator[None]:
    """Send the progress of the work inside the block to `on_progress` (None: to no one)."""
    token = _listener.set(on_progress)
    try:
        yield
    finally:
        _listener.reset(token)


def report(stage: str, done: int, total: int) -> None:
    """`done` of `total` steps of `stage` are finished; nothing happens when no one listens."""
    on_progress = _listener.get()
    if on_progress is not None:
        on_progress(stage, done, total)
