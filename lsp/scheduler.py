"""One thread touches the model; completions run on it whole, long answers a step at a time.

The in-process engine is not thread-safe, so every model call runs on the `ModelThread`. Tasks
(context building, tree-sitter, post-processing) run on other threads. Two ways in:

- `call`: a whole generation as one job, with the caller's per-token callback (the block
  watcher that stops a completion early) running on the model thread too, so no token waits
  for a thread switch. Calls go before any stream step. Completions (priority 0) use this.
- `stream`: a generation the model thread advances one step (a prefill chunk or a token) at a
  time, handing pieces to the reader in batches; between steps it runs pending calls, then the
  next stream by priority and round-robin. Explanations and refactors (priority 1) use this, so
  a completion never waits behind a long answer for more than one step.

A cancelled generation stops at its next step (its KV slot goes back to the prefix cache at
once), and one cancelled before it started never runs at all (`runs_skipped`).

`SteppedModel` wraps a `LocalModel` so `InProcessEngine` can use it unchanged.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("demi.lsp")

AHEAD = 16  # pieces the model may run ahead of a stream's reader
NOTIFY_EVERY = 8  # wake the reader once this many pieces wait (or at the end): fewer thread switches
_local = threading.local()


class StreamCancelled(Exception):
    """The stream was cancelled before the model started it."""


def set_priority(priority: int) -> None:
    """Priority for the streams the current thread opens (0 first; completions use 0)."""
    _local.priority = priority


def current_priority() -> int:
    return getattr(_local, "priority", 0)


class _Stream:
    def __init__(self, make: Callable[[], Iterator[str]], priority: int, cancel: Any):
        self.make, self.priority, self.cancel = make, priority, cancel
        self.gen: Iterator[str] | None = None
        self.buffer: deque[str] = deque()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.turn = 0

    @property
    def runnable(self) -> bool:
        return not self.done and (self.abandoned or len(self.buffer) < AHEAD)


class ModelThread:
    """The single thread that runs model work: one-off calls first, then stream steps."""

    def __init__(self, name: str = "demi-model"):
        self._cond = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._streams: list[_Stream] = []
        self._turns = itertools.count(1)
        self._stopped = False
        self.runs_started = 0  # streams the model actually began
        self.runs_skipped = 0  # streams cancelled before their first step
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- submitting ---------------------------------------------------------------------------------

    def call(self, fn: Callable[[], Any], cancel: Any = None, run: bool = False) -> Future:
        """Run `fn` on the model thread before any further stream step. With `run`, it counts as
        a model run; with `cancel`, it is skipped (StreamCancelled) if cancelled before it starts."""
        fut: Future = Future()

        def job() -> Any:
            if cancel is not None and cancel.cancelled:
                self.runs_skipped += 1
                raise StreamCancelled("cancelled before it started")
            if run:
                self.runs_started += 1
            return fn()

        with self._cond:
            if self._stopped:
                fut.set_exception(RuntimeError("the model thread has stopped"))
                return fut
            self._calls.append((job, fut))
            self._cond.notify_all()
        return fut

    def stream(self, make: Callable[[], Iterator[str]], priority: int = 0, cancel: Any = None) -> Iterator[str]:
        """Pieces of `make()`'s generator, each produced on the model thread; returns its value."""
        s = _Stream(make, priority, cancel)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the model thread has stopped")
            self._streams.append(s)
            self._cond.notify_all()
        try:
            while True:
                with self._cond:
                    while not s.buffer and not s.done:
                        self._cond.wait()
                    if s.buffer:
                        piece = s.buffer.popleft()
                        self._cond.notify_all()  # room to run ahead again
                    elif s.error is not None:
                        raise s.error
                    else:
                        return s.value
                yield piece
        finally:
            with self._cond:
                if not s.done:
                    s.abandoned = True
                    self._cond.notify_all()

    def stop(self) -> None:
        """Stop taking work: queued calls fail, streams are closed at their next step."""
        with self._cond:
            self._stopped = True
            calls, self._calls = list(self._calls), deque()
            for s in self._streams:
                s.abandoned = True
            self._cond.notify_all()
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the model thread has stopped"))

    # -- the loop -----------------------------------------------------------------------------------

    def _pick(self) -> tuple[str, Any] | None:
        if self._calls:
            return "call", self._calls.popleft()
        ready = [s for s in self._streams if s.runnable]
        if not ready:
            return None
        s = min(ready, key=lambda x: (not x.abandoned, x.priority, x.turn))  # close abandoned ones first
        s.turn = next(self._turns)
        return "step", s

    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._pick()
                while job is None:
                    if self._stopped and not self._streams:
                        return
                    self._cond.wait(0.5 if self._stopped else None)
                    job = self._pick()
            kind, item = job
            if kind == "call":
                fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)
                continue
            self._step(item)

    def _finish(self, s: _Stream, value: Any = None, error: BaseException | None = None) -> None:
        with self._cond:  # always wakes the reader
            s.done, s.value, s.error = True, value, error
            if s in self._streams:
                self._streams.remove(s)
            self._cond.notify_all()

    def _step(self, s: _Stream) -> None:
        if s.abandoned:
            if s.gen is not None:
                try:
                    s.gen.close()  # runs the engine's cleanup (the KV slot back to the cache) here
                except Exception:  # noqa: BLE001 - closing must never take the thread down
                    log.exception("closing an abandoned stream")
            self._finish(s, error=StreamCancelled("abandoned"))
            return
        if s.gen is None:
            if s.cancel is not None and s.cancel.cancelled:
                self.runs_skipped += 1
                self._finish(s, error=StreamCancelled("cancelled before it started"))
                return
            try:
                s.gen = s.make()
            except BaseException as exc:  # noqa: BLE001
                self._finish(s, error=exc)
                return
            self.runs_started += 1
        try:
            piece = next(s.gen)
        except StopIteration as done:
            self._finish(s, value=done.value)
            return
        except BaseException as exc:  # noqa: BLE001 - the reader re-raises it
            self._finish(s, error=exc)
            return
        self.steps += 1
        with self._cond:
            s.buffer.append(piece)
            if len(s.buffer) >= NOTIFY_EVERY or (s.priority == 0 and len(s.buffer) == 1):
                self._cond.notify_all()


class SteppedModel:
    """A `LocalModel` whose generation steps run on a `ModelThread` (everything else delegates)."""

    def __init__(self, local: Any, thread: ModelThread):
        self._local = local
        self._thread = thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local, name)

    def stream(self, prompt: Any, **kwargs: Any) -> Iterator[str]:
        local = self._local
        return self._thread.stream(lambda: local.stream(prompt, **kwargs), current_priority(), kwargs.get("cancel"))

    def complete(self, prompt: Any, on_text: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
        from demi.assistant.engines import drain  # the model is loaded by now: no import cost

        if current_priority() == 0:  # a completion: the whole generation as one call
            local, thread = self._local, self._thread

            def step() -> None:
                thread.steps += 1

            return thread.call(
                lambda: drain(local.stream(prompt, **kwargs), on_text, step), kwargs.get("cancel"), run=True
            ).result()
        return drain(self.stream(prompt, **kwargs), on_text)
