"""An answer in flight (`Job`) and when its text may go on screen (`Pacer`).

The model writes from a worker thread into the job's buffer; the screen takes the buffer in
batches. The pacer decides when: the first piece at once (the first token is what the user waits
for), then at most `hz` times a second, and less often when the answer's frames grow slow (a slow
terminal, a busy machine), so that drawing the answer takes at most about a quarter of the
screen's time and a key press rarely lands in the middle of such a frame.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from demi.assistant.errors import CancelToken  # standard library only: no torch on the screen's thread


@dataclass
class Job:
    """One answer in flight: where its text goes and how to stop it."""

    kind: str  # chat | explain | refactor | fix
    widget: Any  # the AssistantMessage it streams into
    conv: Any  # the Conversation it belongs to
    app: Any  # the app: pieces are announced with app.post_message
    submitted_at: float
    cancel: CancelToken = field(default_factory=CancelToken)
    received: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheduled: bool = False
    done: bool = False
    first_paint_at: float | None = None
    last_write: float = 0.0
    timer: bool = False

    def push(self, piece: str) -> None:
        """From the worker thread: queue a piece; the screen is woken once per batch."""
        if not piece:
            return
        with self.lock:
            self.received.append(piece)
            self.pending.append(piece)
            wake = not self.scheduled
            self.scheduled = True
        if wake:
            self.app.post_message(Flush(self))
        time.sleep(0)  # hand the GIL to the screen's thread if it is waiting (a key, a repaint)

    def take(self) -> str:
        """On the screen's thread: everything pending; the worker wakes the screen again after this."""
        with self.lock:
            text = "".join(self.pending)
            self.pending.clear()
            self.scheduled = False
        return text

    @property
    def text(self) -> str:
        with self.lock:
            return "".join(self.received)


class Flush(Message):
    """The job has text waiting (posted once per batch, by the worker or by a timer)."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job


class Pacer:
    """When the next batch of an answer may be drawn (all times from `time.monotonic()`)."""

    def __init__(self, hz: float = 10.0, share: float = 0.25) -> None:
        self.interval = 1.0 / hz  # the shortest time between two batches
        self.share = share  # drawing the answer takes at most this share of the time
        self.frame_cost = 0.0  # the last batch's time from its write to its repaint

    def painted(self, seconds: float) -> None:
        """A batch took `seconds` from its write to its repaint (a cheap measure of a frame's cost)."""
        self.frame_cost = max(0.0, seconds)

    def delay(self, last_write: float, now: float) -> float:
        """Seconds to wait before the next batch; 0 draws it now."""
        if not last_write:
            return 0.0  # the first piece: at once
        gap = max(self.interval, self.frame_cost / self.share - self.frame_cost)
        return max(0.0, last_write + gap - now)
