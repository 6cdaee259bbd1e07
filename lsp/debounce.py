"""How long an automatic completion waits before it starts the model.

Invoked requests never wait. An automatic one (the editor asks on every keystroke) waits for a
pause in typing: a run started mid-word is cancelled by the next keystroke, so it only costs
CPU. The wait follows two measurements, both exponential moving averages:

- the interval between edits of a document while the user types (gaps over a second are
  pauses, not typing speed), with its mean deviation, as TCP estimates a round-trip time: the
  wait is the mean plus two deviations (at least 30% over the mean, at most twice the mean), so
  ordinary jitter does not read as a pause (a run started by one that does is cancelled by the
  next keystroke) and a jittery typist still gets a suggestion soon after stopping; and
- the latency of recent completions.

When the model answers well within the typing interval and the suggestion would then stay on
screen for a while before the next keystroke (a fast model, a slow typist), it is worth showing
between keystrokes, so the wait is the minimum. Otherwise the wait is a little longer than the
typing interval, so runs start at the pauses (a suggestion flashing for a few milliseconds
mid-word helps nobody). A fixed `debounceMs` setting replaces all of this.
"""

from __future__ import annotations

import threading
import time

PAUSE_S = 1.0  # a gap this long between edits is a pause, not typing speed
DEFAULT_INTERVAL_S = 0.12
INTERVAL_FACTOR = 1.3  # wait at least this much longer than a typical gap between keystrokes
DEVIATIONS = 2.0  # ...and this many mean deviations of the gap over it
FAST_MODEL_RATIO = 0.5  # latency under half the typing interval...
VISIBLE_S = 0.1  # ...and the suggestion on screen this long before the next key: suggest between keys


class Debouncer:
    def __init__(self, min_s: float = 0.015, max_s: float = 0.3, fixed_s: float | None = None, alpha: float = 0.3):
        self.min_s, self.max_s, self.fixed_s, self.alpha = min_s, max_s, fixed_s, alpha
        self.interval_s: float | None = None  # typing interval (EMA)
        self.deviation_s = 0.0  # its mean deviation (EMA)
        self.latency_s: float | None = None  # completion latency (EMA)
        self._last_edit: dict[str, float] = {}
        self._lock = threading.Lock()

    def configure(self, min_s: float, max_s: float, fixed_s: float | None) -> None:
        self.min_s, self.max_s, self.fixed_s = min_s, max(min_s, max_s), fixed_s

    def edited(self, uri: str, now: float | None = None) -> None:
        """A document changed (a keystroke, a paste, an undo)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last_edit.get(uri)
            self._last_edit[uri] = now
            if last is None:
                return
            gap = now - last
            if 0 < gap < PAUSE_S:
                if self.interval_s is None:
                    self.interval_s, self.deviation_s = gap, gap / 4
                else:
                    self.deviation_s = (1 - self.alpha) * self.deviation_s + self.alpha * abs(gap - self.interval_s)
                    self.interval_s = (1 - self.alpha) * self.interval_s + self.alpha * gap

    def forget(self, uri: str) -> None:
        with self._lock:
            self._last_edit.pop(uri, None)

    def observed(self, latency_s: float) -> None:
        """A completion took `latency_s` from the model run's start to its answer."""
        with self._lock:
            self.latency_s = (
                latency_s if self.latency_s is None else (1 - self.alpha) * self.latency_s + self.alpha * latency_s
            )

    def delay(self) -> float:
        """Seconds an automatic request waits now."""
        if self.fixed_s is not None:
            return self.fixed_s
        with self._lock:
            interval = self.interval_s if self.interval_s is not None else DEFAULT_INTERVAL_S
            deviation = self.deviation_s if self.interval_s is not None else 0.0
            latency = self.latency_s
        if latency is not None and latency < FAST_MODEL_RATIO * interval and interval - latency >= VISIBLE_S:
            return self.min_s
        wait = max(INTERVAL_FACTOR * interval, interval + min(DEVIATIONS * deviation, interval))
        return min(self.max_s, max(self.min_s, wait))

    def as_dict(self) -> dict[str, float | None]:
        ms = lambda v: None if v is None else round(v * 1000, 1)
        return {
            "typingIntervalMs": ms(self.interval_s),
            "deviationMs": ms(self.deviation_s),
            "latencyMs": ms(self.latency_s),
            "delayMs": ms(self.delay()),
        }
