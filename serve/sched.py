"""The request scheduler of `demi serve`: one worker thread owns the model.

The model is not thread-safe, so every `stream()` generator is created, advanced and closed on one
worker thread. Up to `max_active` generations are alive at once and advanced round-robin, one
`next()` (about one token) each per round, so a long generation never keeps a short one from
starting; the rest wait in a FIFO queue (bounded by `max_queue`). Each generation holds a KV slot in
the engine, so `max_active` never exceeds what the engine says it can hold (`engine_capacity`).

Requests talk to the worker through a `Job`: the worker pushes events ("piece", text), ("done",
Completion) or ("error", exception) onto the job's asyncio queue with `call_soon_threadsafe`; the
request side cancels with `Job.cancel()` (a client that went away). A cancelled queued job is removed
from the queue at once and never started; a cancelled active job is closed by the worker at the start
of its next turn (`generator.close()`: no further model step is run for it; the engine releases its KV
slot in the generator's `finally`) and its slot is free for the next queued job in the same round. The
cancel token is also the engine's own, so a `next()` already running stops at its next decode step.

Limits of the granularity: a job's first `next()` is its whole prefill, and a `next()` lasts several
tokens while the engine holds text back (an incomplete UTF-8 character, a possible stop-string start),
since it only yields text. Other jobs wait for that step.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from demi.model.generate import CancelToken, Sampling

log = logging.getLogger("demi.serve")


def engine_capacity(model: Any) -> int:
    """How many `stream()` generators the engine can keep alive at once, each in its own KV slot.

    `model.max_streams` if the engine says so, else the size of its prefix cache's slot pool
    (`model.prefix_cache.max_slots`); an engine with neither has one KV cache: one generation at a time.
    """
    value = getattr(model, "max_streams", None)
    if value is None:
        value = getattr(getattr(model, "prefix_cache", None), "max_slots", None)
    try:
        return max(1, int(value or 1))
    except (TypeError, ValueError):
        return 1


class QueueFull(Exception):
    """Too many requests are waiting."""


@dataclass
class GenParams:
    """Everything `LocalModel.stream` needs for one request."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)
    stop_ids: set[int] | None = None
    heal: str = ""  # token healing for FIM requests (demi.model.healing)


class Job:
    """One request's generation, shared by the request coroutine and the worker thread."""

    _ids = itertools.count(1)

    def __init__(self, params: GenParams, loop: asyncio.AbstractEventLoop, kind: str = "completion"):
        self.id = next(Job._ids)
        self.params, self.kind, self.loop = params, kind, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel_token = CancelToken()
        self.state = "queued"  # queued | active | done | cancelled | dropped | error
        self.steps = 0  # next() calls that produced text (worker side)
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.gen: Iterator[str] | None = None
        self._scheduler: Scheduler | None = None

    def cancel(self) -> None:
        """The client is gone: drop the job if queued, stop it if running. Safe from any thread."""
        self.cancel_token.cancel()
        if self._scheduler is not None:
            self._scheduler._cancel(self)

    @property
    def cancelled(self) -> bool:
        return self.cancel_token.cancelled

    def _emit(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def summary(self) -> dict[str, Any]:
        end = self.finished or time.monotonic()
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "steps": self.steps,
            "max_tokens": self.params.max_new_tokens,
            "prompt_tokens": len(self.params.prompt_ids),
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "queued_ms": round(((self.started or end) - self.created) * 1000, 1),
            "total_ms": round((end - self.created) * 1000, 1),
        }


class Scheduler:
    """A single worker thread that runs up to `max_active` generations round-robin."""

    def __init__(self, model: Any, max_active: int = 4, max_queue: int = 64):
        self.model = model
        self.max_active = max(1, min(int(max_active), engine_capacity(model)))
        self.max_queue = max(0, int(max_queue))
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self._active: list[Job] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = {
            "submitted": 0,
            "completed": 0,
            "cancelled": 0,
            "dropped": 0,
            "errors": 0,
            "completion_tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
        }
        self.recent: deque[dict[str, Any]] = deque(maxlen=32)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="demi-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- request side ---------------------------------------------------------------------------

    def submit(self, params: GenParams, kind: str = "completion") -> Job:
        """Queue a generation; must be called from the event loop that will read its events."""
        job = Job(params, asyncio.get_running_loop(), kind)
        job._scheduler = self
        with self._cv:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            busy = len(self._active) >= self.max_active
            if busy and len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting; try again shortly")
            self._queue.append(job)
            self.counts["submitted"] += 1
            self._cv.notify_all()
        return job

    def _cancel(self, job: Job) -> None:
        with self._cv:
            if job.state == "queued" and job in self._queue:
                self._queue.remove(job)
                job.state, job.finish_reason, job.finished = "dropped", "cancelled", time.monotonic()
                self.counts["dropped"] += 1
                self.recent.append(job.summary())
            self._cv.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {
                "active": len(self._active),
                "queued": len(self._queue),
                "max_active": self.max_active,
                "max_queue": self.max_queue,
                "engine_capacity": engine_capacity(self.model),
                **self.counts,
                "active_jobs": [j.summary() for j in self._active],
                "recent": list(self.recent),
            }

    # -- worker side ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._queue and not self._active:
                        self._cv.wait()
                    if self._stopping:
                        break
                    self._admit()
                    turn = list(self._active)
                for job in turn:
                    self._step(job)
        finally:
            self._shutdown()

    def _admit(self) -> None:
        """Move queued jobs into free slots, FIFO (caller holds the lock)."""
        while self._queue and len(self._active) < self.max_active:
            job = self._queue.popleft()
            if job.cancelled:  # raced with _cancel: never started
                job.state, job.finish_reason, job.finished = "dropped", "cancelled", time.monotonic()
                self.counts["dropped"] += 1
                self.recent.append(job.summary())
                continue
            job.state, job.started = "active", time.monotonic()
            self._active.append(job)

    def _retire(self, job: Job, state: str) -> None:
        with self._cv:
            if job in self._active:
                self._active.remove(job)
            job.state, job.finished = state, time.monotonic()
            key = {"done": "completed", "cancelled": "cancelled", "error": "errors"}[state]
            self.counts[key] += 1
            self.recent.append(job.summary())
            self._admit()  # the freed slot goes to the next queued job in this round

    def _close(self, job: Job) -> None:
        gen, job.gen = job.gen, None
        if gen is not None:
            try:
                gen.close()  # runs the engine's cleanup (slot release) without another model step
            except Exception:  # noqa: BLE001 - a failing cleanup must not kill the worker
                log.debug("closing generation %s failed", job.id, exc_info=True)

    def _step(self, job: Job) -> None:
        if job.cancelled:
            self._close(job)
            job.finish_reason = "cancelled"
            self._retire(job, "cancelled")
            return
        try:
            if job.gen is None:
                p = job.params
                job.gen = self.model.stream(
                    p.prompt_ids,
                    max_new_tokens=p.max_new_tokens,
                    sampling=p.sampling,
                    stop=p.stop,
                    cancel=job.cancel_token,
                    stop_ids=p.stop_ids,
                    heal=p.heal,
                )
            piece = next(job.gen)
        except StopIteration as done:
            job.gen = None
            completion = done.value
            job.finish_reason = getattr(completion, "finish_reason", None)
            job.completion_tokens = len(getattr(completion, "token_ids", []) or [])
            self.counts["completion_tokens"] += job.completion_tokens
            self.counts["prompt_tokens"] += int(getattr(completion, "prompt_tokens", 0) or 0)
            extra = getattr(completion, "extra", None) or {}
            self.counts["cached_tokens"] += int(extra.get("cached_tokens", 0) or 0)
            cancelled = job.finish_reason == "cancelled"
            self._retire(job, "cancelled" if cancelled else "done")
            job._emit("done", completion)
        except Exception as exc:  # noqa: BLE001 - reported to the request, the worker keeps serving
            self._close(job)
            job.finish_reason = "error"
            if not _is_user_error(exc):
                log.warning("generation %s failed: %s", job.id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._retire(job, "error")
            job._emit("error", exc)
        else:
            job.steps += 1
            if piece:
                job._emit("piece", piece)

    def _shutdown(self) -> None:
        with self._cv:
            jobs = list(self._active) + list(self._queue)
            self._active.clear()
            self._queue.clear()
        for job in jobs:
            self._close(job)
            job.state = "cancelled"
            job._emit("error", QueueFull("the server is shutting down"))


def _is_user_error(exc: BaseException) -> bool:
    from demi.model.errors import DemiUserError

    return isinstance(exc, DemiUserError)
