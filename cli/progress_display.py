"""Progress on stderr while a command waits for long work: loading a model, quantizing it, measuring kernels.

The engine reports its stages through `demi.progress` (`report(stage, done, total)`); a command wraps
the wait in `showing_progress(label, json_output)`, which listens and draws. On a terminal it is a
live display (rich, already a dependency for the chat): the label with its elapsed time and a bar
per stage, erased when the work is done, so the command's own output reads as without it. It is off
with `--json` and when stderr is not a terminal, so scripts and pipes see nothing new.
`DEMI_PROGRESS=1` forces it on (off a terminal: plain `demi: STAGE DONE/TOTAL` lines, for logs),
`DEMI_PROGRESS=0` forces it off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol, TextIO

from demi.cli.main import UsageError
from demi.progress import progress_to

ENV = "DEMI_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
REDRAW_S = 0.1  # the live display redraws at most this often between a stage's first and last step
LINE_EVERY_S = 5.0  # off a terminal, a long stage gets a line this often


def wanted(json_output: bool, stream: TextIO | None = None) -> bool:
    """Whether to show progress: `DEMI_PROGRESS` if set, else only on a terminal and without --json."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in _ON:
        return True
    if forced in _OFF:
        return False
    if forced:
        raise UsageError(f"{ENV} must be 1 (show progress) or 0 (never), not {os.environ[ENV]!r}")
    stream = stream or sys.stderr
    return not json_output and _is_terminal(stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


@contextlib.contextmanager
def showing_progress(label: str, json_output: bool = False, animate: bool = True) -> Iterator[None]:
    """Show `label` and the stages the engine reports inside the block, as `wanted` says.

    `animate`: redraw the elapsed time on a timer too (a thread); off while the block measures speed
    (`demi bench`), where the display is redrawn only when a stage moves."""
    if not wanted(json_output):
        yield
        return
    display: _Display = LiveDisplay(label, animate) if _is_terminal(sys.stderr) else LineDisplay(label)
    try:
        with progress_to(display.update):
            yield
    finally:
        display.close()


class _Display(Protocol):
    def update(self, stage: str, done: int, total: int) -> None: ...

    def close(self) -> None: ...


class LiveDisplay:
    """The label and a bar per stage on the terminal (rich), erased when closed."""

    def __init__(self, label: str, animate: bool = True):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),  # a model's name is not markup
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            auto_refresh=animate,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.tasks: dict[str, Any] = {}
        self.drawn = 0.0
        self.progress.add_task(label, total=None, count="")
        self.progress.start()
        self.progress.refresh()

    def update(self, stage: str, done: int, total: int) -> None:
        task, count = self.tasks.get(stage), f"{done}/{total}"
        new = task is None
        if task is None:  # whole before the display's timer draws it
            self.tasks[stage] = self.progress.add_task(f"  {stage}", total=total, completed=done, count=count)
        else:
            self.progress.update(task, completed=done, total=total, count=count)
        now = time.monotonic()
        if new or done >= total or now - self.drawn >= REDRAW_S:
            self.progress.refresh()
            self.drawn = now

    def close(self) -> None:
        self.progress.stop()


class LineDisplay:
    """Plain lines on stderr (forced on where it is no terminal): the label, each stage when it
    ends, and a long stage every LINE_EVERY_S."""

    def __init__(self, label: str):
        self.started: dict[str, float] = {}
        self.ended: set[str] = set()
        self.written = time.monotonic()
        self._line(label)

    def update(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        started = self.started.setdefault(stage, now)
        if stage in self.ended:
            return
        if done >= total:
            self.ended.add(stage)
        elif now - self.written < LINE_EVERY_S:
            return
        self._line(f"{stage} {done}/{total} ({now - started:.1f} s)")
        self.written = now

    def close(self) -> None:
        pass

    @staticmethod
    def _line(text: str) -> None:
        print(f"demi: {text}", file=sys.stderr, flush=True)
