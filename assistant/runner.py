"""The one model runner: the single thread that owns an in-process model, for every front end.

The in-process engine is not thread-safe, so every model call (a generation, loading, warm-up,
perplexity) runs on a `ModelRunner`'s thread; the editor, the terminal UI, the command line and
`demi serve` all queue their work there. A request is a `RunRequest`: the engine's own
`GenerationRequest` (run by `LocalModel.run`, a generator of text pieces that returns a
`Completion`) plus the scheduling fields: priority, kind, and whether it runs *whole*.

Order of work, each time the thread picks its next step:

1. one-off calls (`call`: loading a model, its info, warm-up), first come first served;
2. whole runs (`RunRequest.whole`): an editor's completion, run from its first to its last step
   in one turn, its `on_text` callback (the block watcher that stops a completion early) on the
   model thread too, so no token waits for a thread switch. They are not held by the cap below
   (the engine gives a run a temporary KV cache if every slot is taken);
3. stepped runs, one step (a prefill chunk or about one token) at a time: the live run with the
   lowest priority number goes first, and among equal priorities the one stepped longest ago
   (round-robin), so a completion never waits more than one step behind a long answer, and a long
   answer never keeps a short one from starting.

Up to `max_live` stepped runs are live at once (each holds a KV slot: at most the engine's slot
count, `engine_capacity`); the rest wait in a queue ordered by priority, then arrival, bounded by
`max_queue` (`QueueFull` when it is full and every slot is busy).

Cancellation: `Run.cancel()` (or closing a `stream()` iterator early) drops a queued run at once,
so it never starts (`runs_skipped`), and closes a live one at its next turn without another model
step (`generator.close()`: the engine's `finally` returns its KV slot to the prefix cache). A run
whose `GenerationRequest.cancel` token is set while it waits is dropped when its turn comes; once
running, the engine itself sees the token at its next step and ends with a "cancelled"
`Completion` (what the terminal UI saves as a partial answer).

Readers: `stream()` hands pieces to a blocking reader on another thread (the model runs at most
AHEAD pieces ahead of it); `submit(..., sink=...)` calls `sink(kind, value)` on the model thread
with ("piece", text), ("done", Completion) or ("error", exception) (`demi serve` forwards these to
its asyncio queues); `complete()` waits for the whole answer.

Counters: `runs_started`, `runs_skipped`, `steps` (the language server's), `batch_steps` and
`batched_tokens` (continuous batching, below), and `stats()`, the
dict `demi serve` answers on /v1/demi/stats (active, queued, submitted, completed, cancelled,
dropped, errors, tokens, the active jobs and the recent ones).

Continuous batching: an engine with `decode_batch` (the in-process `LocalModel`) runs stepped runs in
batch mode (`model.run(request, batch=True)`): a run's generator yields text pieces, and in place of
each one-token decode step it yields a step request (anything that is not text; the engine's
`DecodeStep`) and waits. Such a run is *parked*. The thread treats the parked runs of one engine as
one scheduling unit, the batch, which takes its turn in the round-robin like a run (its priority and
turn are its members' best): one `decode_batch` call computes every member's step (each weight read
once for all of them, attention per run against its own KV cache), each member is sent its logits
and advanced to its next step request. A run's prefill chunks, speculative verification passes and
cancellation stay its own, so a new request's prefill runs between two batch steps and joins the
batch after its first token; a cancelled run is closed at its next turn instead of joining the next
batch (the engine's `finally` frees its KV slot); whole runs never batch and still go first. Runs
whose reader is AHEAD pieces behind sit out until it catches up. The runner counts `batch_steps`
(batched forward passes) and `batched_tokens` (the rows they held).

Everything the thread does to a run goes through `_advance` (one `next()` of the engine's generator,
or a `send` of its step's logits) and `_pick` (what goes next: a call, a whole run, a step of one
run, or a batch); speculative decoding stays inside the engine's generator (a step that may yield
several tokens), so the runner's contract (pieces, a `Completion`, a step count) does not change.

Exit: the thread is a daemon (a front end that forgets `stop` still exits), but the interpreter
must not finalize while it is inside torch: a daemon thread stopped there aborts the process
("terminate called without an active exception", exit code -6). So at exit every started runner
is stopped and its thread waited for (at most EXIT_WAIT_S in all: a step, a speed measurement or a
warm-up ends well within it).
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:  # the runner itself never imports torch: the language server starts without it
    from demi.model.generate import GenerationRequest

__all__ = [
    "AHEAD",
    "ModelRunner",
    "QueueFull",
    "Run",
    "RunCancelled",
    "RunRequest",
    "RunnerStopped",
    "current_priority",
    "engine_capacity",
    "priority",
    "set_priority",
]

log = logging.getLogger("demi.runner")

AHEAD = 16  # pieces the model may run ahead of a stream's reader
NOTIFY_EVERY = 8  # wake a reader once this many pieces wait (or at the end): fewer thread switches
RECENT = 32  # finished runs kept for stats()
EXIT_WAIT_S = 10.0  # at exit, how long the model threads may take to finish their current work
COMPLETION, STREAM = 0, 1  # the priorities an editor's completion and a long answer use

T = TypeVar("T")
Sink = Callable[[str, Any], None]
State = Literal["queued", "active", "done", "cancelled", "dropped", "error"]

_local = threading.local()


class RunCancelled(Exception):
    """The run was cancelled (before it started, or closed by its reader)."""


class QueueFull(Exception):
    """Too many requests are waiting for the model."""


class RunnerStopped(QueueFull, RunCancelled):
    """The runner has stopped: it takes no more work, and what was waiting or running is cancelled."""


def set_priority(value: int) -> None:
    """Priority of the runs the current thread starts (0 first: an editor's completion; 1: a long
    answer). Threads that never set it run at 0."""
    _local.priority = int(value)


def current_priority() -> int:
    return int(getattr(_local, "priority", COMPLETION))


@contextmanager
def priority(value: int) -> Iterator[None]:
    """`set_priority` for a block, restoring the previous value after it."""
    before = current_priority()
    set_priority(value)
    try:
        yield
    finally:
        set_priority(before)


def engine_capacity(model: Any) -> int:
    """How many generations the engine can keep alive at once, each in its own KV slot.

    `model.max_streams` if the engine says so, else the size of its prefix cache's slot pool
    (`model.prefix_cache.max_slots`); an engine with neither has one KV cache: one at a time.
    """
    value = getattr(model, "max_streams", None)
    if value is None:
        value = getattr(getattr(model, "prefix_cache", None), "max_slots", None)
    try:
        return max(1, int(value or 1))
    except (TypeError, ValueError):
        return 1


@dataclass(eq=False)
class RunRequest:
    """A generation with the fields that schedule it."""

    generation: GenerationRequest
    priority: int = STREAM
    kind: str = "completion"  # what it is for (stats only): completion | chat | stream | ...
    whole: bool = False  # run from start to end in one turn (an editor's completion)
    on_text: Callable[[str], None] | None = None  # whole runs: each non-empty piece, on the model thread
    model: Any = None  # the engine to run it on; None: the runner's


def batches(model: Any) -> bool:
    """Whether `model` can run stepped runs as a batch: it has `decode_batch(steps)` and a `run`
    that takes `batch` (`run(request, batch=True)` yields step requests for it, see the module
    docstring). A wrapper that forwards `decode_batch` but overrides `run` without `batch` does not."""
    run = getattr(model, "run", None)
    if not callable(getattr(model, "decode_batch", None)) or not callable(run):
        return False
    try:
        return "batch" in inspect.signature(run).parameters
    except (TypeError, ValueError):  # no signature to read
        return False


def _start_generation(model: Any, request: GenerationRequest, batch: bool = False) -> Generator[Any, Any, Any]:
    """The engine's generator for `request`: `model.run(request)` (in batch mode where asked and the
    engine `batches`), or for an engine with only the keyword API, `model.stream(prompt, **fields)`."""
    if batch and batches(model):
        return model.run(request, batch=True)
    run = getattr(model, "run", None)
    if callable(run):
        return run(request)
    kwargs = {f.name: getattr(request, f.name) for f in fields(request) if f.name != "prompt"}
    if kwargs.get("mix") is None:  # (a keyword-API engine need not know the newer hook when it is unused)
        kwargs.pop("mix", None)
    return model.stream(request.prompt, **kwargs)


def _drain(stream: Iterator[str], on_text: Callable[[str], None] | None) -> Any:
    """Run `stream` to its end, non-empty pieces to `on_text`; its return value."""
    while True:
        try:
            piece = next(stream)
        except StopIteration as done:
            return done.value
        if on_text is not None and piece:
            on_text(piece)


def _is_user_error(exc: BaseException) -> bool:
    from demi.assistant.errors import DemiUserError

    return isinstance(exc, DemiUserError)


class Run:
    """One request on the runner: its state and counters, and how its reader gets the pieces."""

    _ids = itertools.count(1)

    def __init__(self, runner: ModelRunner, request: RunRequest, sink: Sink | None, seq: int):
        self.id = next(Run._ids)
        self.runner, self.request, self.sink, self.seq = runner, request, sink, seq
        self.model = request.model if request.model is not None else runner.model
        self.state: State = "queued"
        self.steps = 0  # engine steps that gave a piece (next() calls, or batched steps' sends)
        self.created = time.monotonic()
        self.started: float | None = None
        self.finished: float | None = None
        self.finish_reason: str | None = None
        self.completion_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.gen: Generator[Any, Any, Any] | None = None
        self.began = False  # the engine's generator was started
        self.pending: Any = None  # parked: the step request (a DecodeStep) it waits on, run in a batch
        self.buffer: deque[str] = deque()
        self.done = False
        self.value: Any = None  # the generator's return value (a Completion)
        self.error: BaseException | None = None
        self.closing: BaseException | None = None  # set: close it at its next turn, with this error
        self.turn = 0

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def kind(self) -> str:
        return self.request.kind

    @property
    def cancelled(self) -> bool:
        """Cancelled by its token or by `cancel()`."""
        token = self.request.generation.cancel
        return self.closing is not None or (token is not None and token.cancelled)

    def cancel(self) -> None:
        """Drop the run if it is queued, close it at its next turn if it runs. Safe from any thread."""
        token = self.request.generation.cancel
        if token is not None:
            token.cancel()
        self.runner.cancel(self)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the end: the Completion, or the run's error raised here."""
        return self.runner._wait(self, timeout)

    def summary(self) -> dict[str, Any]:
        end = self.finished or time.monotonic()
        prompt = self.request.generation.prompt
        prompt_tokens = len(prompt) if isinstance(prompt, list) else int(self.prompt_tokens or 0)
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "steps": self.steps,
            "max_tokens": self.request.generation.max_new_tokens,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "queued_ms": round(((self.started or end) - self.created) * 1000, 1),
            "total_ms": round((end - self.created) * 1000, 1),
        }

    @property
    def runnable(self) -> bool:
        return not self.done and (
            self.closing is not None or self.sink is not None or self.request.whole or len(self.buffer) < AHEAD
        )


class ModelRunner:
    """The single thread that runs model work: calls first, then whole runs, then stepped runs by
    priority and round-robin, at most `max_live` of them live (see the module docstring)."""

    def __init__(
        self,
        model: Any = None,
        *,
        max_live: int | None = None,
        max_queue: int = 64,
        name: str = "demi-model",
        recent: int = RECENT,
        batching: bool = True,
    ):
        self.model = model
        self.name = name
        self.batching = batching  # run stepped runs as batches on engines that can (see the module docstring)
        self.live_limit = None if max_live is None else max(1, int(max_live))
        self.max_queue = max(0, int(max_queue))
        self._cv = threading.Condition()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._queue: list[Run] = []
        self._live: list[Run] = []
        self._seq = itertools.count()
        self._turns = itertools.count(1)
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.runs_started = 0  # generations the engine actually began
        self.steps = 0  # engine steps, all runs together
        self.counts = {
            "submitted": 0,
            "completed": 0,
            "cancelled": 0,
            "dropped": 0,
            "errors": 0,
            "completion_tokens": 0,
            "prompt_tokens": 0,
            "cached_tokens": 0,
            "shifted_tokens": 0,
        }
        self.batch_steps = 0  # batched forward passes (`decode_batch` calls)
        self.batched_tokens = 0  # the decode steps they held, all runs together
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)

    # -- configuration ------------------------------------------------------------------------------

    def attach(self, model: Any) -> None:
        """Make `model` the runner's default engine (runs already submitted keep theirs)."""
        with self._cv:
            self.model = model
            self._cv.notify_all()

    @property
    def max_live(self) -> int:
        """Stepped runs live at once: the limit asked for, never above the engine's KV slots."""
        cap = engine_capacity(self.model) if self.model is not None else (self.live_limit or 1)
        return min(self.live_limit, cap) if self.live_limit is not None else cap

    @property
    def runs_skipped(self) -> int:
        """Runs cancelled before their first step (they never reached the engine)."""
        return self.counts["dropped"]

    @property
    def on_thread(self) -> bool:
        """Whether the caller is the model thread itself (its work then runs inline)."""
        return self._thread is not None and threading.current_thread() is self._thread

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        with self._cv:
            self._start_locked()

    def _start_locked(self) -> None:
        if self._stopped:
            raise RunnerStopped("the model runner has stopped")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            _STARTED.add(self)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Take no more work: queued calls and runs fail (`RunnerStopped`), live runs are closed at
        their next turn; waits up to `timeout` seconds for the thread to finish (None: does not wait)."""
        error = RunnerStopped("the model runner has stopped")
        with self._cv:
            self._stopped = True
            calls, self._calls = list(self._calls), deque()
            queued, self._queue = list(self._queue), []
            for run in self._live:
                if run.closing is None:
                    run.closing = error
            self._cv.notify_all()
        for _, fut in calls:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(error)
        for run in queued:
            self._finish(run, "dropped", error=error)
        if timeout:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds for the model thread to end after `stop`; True when it has
        (or never started). A process must not finalize while this thread is inside torch: a daemon
        thread stopped there by the interpreter's exit aborts the process."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- submitting ---------------------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the model thread before any further generation step (loading, warm-up)."""
        fut: Future[T] = Future()
        if self.on_thread:  # already there: queueing it would wait for itself
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
            return fut
        with self._cv:
            if self._stopped:
                fut.set_exception(RunnerStopped("the model runner has stopped"))
                return fut
            self._start_locked()
            self._calls.append((fn, fut))
            self._cv.notify_all()
        return fut

    def submit(self, request: RunRequest, sink: Sink | None = None) -> Run:
        """Queue a run. With `sink`, its events go there (on the model thread); without, read it
        with `pieces(run)` or wait with `run.result()`. `QueueFull` when the queue is full."""
        with self._cv:
            if self._stopped:
                raise RunnerStopped("the model runner has stopped")
            run = Run(self, request, sink, next(self._seq))
            if not request.whole:  # every slot busy and the queue full (counted before admission, so no race)
                waiting = sum(1 for r in self._queue if not r.request.whole)
                live = sum(1 for r in self._live if not r.request.whole)
                if live + waiting >= self.max_live + self.max_queue:
                    behind = max(0, waiting - max(0, self.max_live - live))
                    raise QueueFull(f"{behind} requests are already waiting; try again shortly")
            self._start_locked()
            self._queue.append(run)
            self.counts["submitted"] += 1
            self._cv.notify_all()
        return run

    def cancel(self, run: Run) -> None:
        """Drop `run` if it is queued; close it at its next turn if it is live."""
        with self._cv:
            if run.done:
                return
            if run in self._queue:
                self._queue.remove(run)
                queued = True
            else:
                queued = False
                if run.closing is None:
                    run.closing = RunCancelled("cancelled")
                self._cv.notify_all()
        if queued:
            self._finish(run, "dropped", error=RunCancelled("cancelled before it started"))

    def pieces(self, run: Run) -> Iterator[str]:
        """The pieces of a run submitted without a sink, as they come; returns its Completion.
        Leaving early (closing the iterator) cancels the run."""
        try:
            while True:
                with self._cv:
                    while not run.buffer and not run.done:
                        self._cv.wait()
                    if run.buffer:
                        piece = run.buffer.popleft()
                        self._cv.notify_all()  # room to run ahead again
                    elif run.error is not None:
                        raise run.error
                    else:
                        return run.value
                yield piece
        finally:
            if not run.done:
                self.cancel(run)

    def stream(
        self, generation: GenerationRequest, priority: int | None = None, kind: str = "stream", model: Any = None
    ) -> Iterator[str]:
        """A generation advanced a step at a time on the model thread: its pieces; returns its
        Completion. `priority`: the current thread's (`set_priority`) unless given; `model`: the
        runner's unless given."""
        if self.on_thread:
            return _start_generation(model if model is not None else self.model, generation)
        prio = current_priority() if priority is None else priority
        return self.pieces(self.submit(RunRequest(generation, prio, kind, model=model)))

    def complete(
        self,
        generation: GenerationRequest,
        on_text: Callable[[str], None] | None = None,
        priority: int | None = None,
        kind: str = "completion",
        model: Any = None,
    ) -> Any:
        """The whole answer (the Completion). At priority 0 (a completion) it runs whole, `on_text`
        on the model thread; otherwise it is stepped like `stream`, `on_text` on the caller's thread."""
        if self.on_thread:
            return _drain(_start_generation(model if model is not None else self.model, generation), on_text)
        prio = current_priority() if priority is None else priority
        if prio > COMPLETION:
            return _drain(self.pieces(self.submit(RunRequest(generation, prio, kind, model=model))), on_text)
        return self.submit(RunRequest(generation, prio, kind, True, on_text, model)).result()

    def _wait(self, run: Run, timeout: float | None) -> Any:
        end = None if timeout is None else time.monotonic() + timeout
        try:
            with self._cv:
                while not run.done:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cv.wait(left)
        except BaseException:  # Ctrl-C while waiting: stop the model too
            self.cancel(run)
            raise
        if not run.done:
            raise TimeoutError("the run did not finish in time")
        if run.error is not None:
            raise run.error
        return run.value

    # -- stats --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What `demi serve` answers on /v1/demi/stats."""
        with self._cv:
            return {
                "active": len(self._live),
                "queued": len(self._queue),
                "max_active": self.max_live,
                "max_queue": self.max_queue,
                "engine_capacity": engine_capacity(self.model),
                **self.counts,
                "batch_steps": self.batch_steps,
                "batched_tokens": self.batched_tokens,
                "active_jobs": [r.summary() for r in self._live],
                "recent": list(self.recent),
            }

    # -- the loop -----------------------------------------------------------------------------------

    def _pick(self) -> tuple[str, Any] | None:
        """The next piece of work (caller holds the lock): a call, a whole run, or a step."""
        if self._calls:
            return "call", self._calls.popleft()
        whole = [r for r in self._queue if r.request.whole]
        if whole:
            run = min(whole, key=lambda r: (r.priority, r.seq))
            self._queue.remove(run)
            self._live.append(run)  # counted as active while it runs (it leaves in _finish)
            return "whole", run
        while self._queue and len(self._live) < self.max_live:  # admit: priority first, then arrival
            run = min(self._queue, key=lambda r: (r.priority, r.seq))
            self._queue.remove(run)
            run.state, run.started = "active", time.monotonic()
            self._live.append(run)
        ready = [r for r in self._live if r.runnable and not r.request.whole]
        if not ready:
            return None
        closing = [r for r in ready if r.closing is not None]
        if closing:  # close the cancelled first, parked or not: they leave before the next batch
            run = min(closing, key=lambda r: r.turn)
            run.turn = next(self._turns)
            return "step", run
        # Candidates: each run that is not parked, and per engine the batch of its parked runs, which
        # takes its turn as one unit (its members' best priority, their oldest turn).
        options: list[tuple[tuple[int, int], str, Any]] = [
            ((r.priority, r.turn), "step", r) for r in ready if r.pending is None
        ]
        groups: dict[int, list[Run]] = {}
        for r in ready:
            if r.pending is not None:
                groups.setdefault(id(r.model), []).append(r)
        for members in groups.values():
            options.append(((min(r.priority for r in members), min(r.turn for r in members)), "batch", members))
        _, kind, item = min(options, key=lambda option: option[0])
        turn = next(self._turns)
        for r in item if kind == "batch" else [item]:
            r.turn = turn
        return kind, item

    def _loop(self) -> None:
        while True:
            with self._cv:
                job = self._pick()
                while job is None:
                    if self._stopped and not self._live:
                        return
                    self._cv.wait(0.5 if self._stopped else None)
                    job = self._pick()
            kind, item = job
            if kind == "call":
                fn, fut = item
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller
                        fut.set_exception(exc)
            elif kind == "whole":
                self._run_whole(item)
            elif kind == "batch":
                self._batch(item)
            else:
                self._step(item)

    def _begin(self, run: Run) -> bool:
        """Start the engine's generator for `run`; False when it was dropped or failed instead."""
        if run.cancelled:  # never started: no model work at all
            self._finish(run, "dropped", error=run.closing or RunCancelled("cancelled before it started"))
            return False
        try:
            batch = self.batching and not run.request.whole
            run.gen = _start_generation(run.model, run.request.generation, batch)
        except Exception as exc:  # noqa: BLE001 - the reader gets it
            self._fail(run, exc)
            return False
        run.started = run.started or time.monotonic()
        with self._cv:
            run.state, run.began = "active", True
            self.runs_started += 1
        return True

    def _advance(self, run: Run, reply: Any = None) -> tuple[bool, Any]:
        """One engine step of `run`: `next()` of its generator, or with `reply` (a batched step's
        logits) `send(reply)`. (True, a piece or a step request), or (False, the generation's return
        value) at its end."""
        assert run.gen is not None
        try:
            piece = next(run.gen) if reply is None else run.gen.send(reply)
        except StopIteration as done:
            run.gen = None
            return False, done.value
        if isinstance(piece, str):
            run.steps += 1
            self.steps += 1
        return True, piece

    def _run_whole(self, run: Run) -> None:
        if not self._begin(run):
            return
        on_text = run.request.on_text
        try:
            while True:
                if run.closing is not None:
                    self._close(run)
                    self._finish(run, "cancelled", error=run.closing)
                    return
                more, value = self._advance(run)
                if not more:
                    self._done(run, value)
                    return
                if not isinstance(value, str):  # whole runs are started without batch mode
                    raise TypeError(f"the engine yielded {type(value).__name__}, not text, to a whole run")
                if value:
                    if on_text is not None:
                        on_text(value)
                    elif run.sink is not None:
                        run.sink("piece", value)
        except Exception as exc:  # noqa: BLE001 - the engine's or the callback's: the caller gets it
            self._close(run)
            self._fail(run, exc)

    def _batch(self, runs: list[Run]) -> None:
        """One batched step: the parked `runs` (of one engine) have their step requests run by one
        `decode_batch` call; each is sent its logits (its next piece) and advanced once more, to its
        next step request (or its end, or a step of its own such as a speculative check)."""
        model = runs[0].model
        steps = [r.pending for r in runs]
        for r in runs:
            r.pending = None
        try:
            outputs = list(model.decode_batch(steps))
            if len(outputs) != len(runs):
                raise RuntimeError(f"decode_batch answered {len(outputs)} steps for {len(runs)}")
        except Exception as exc:  # noqa: BLE001 - every member's reader gets it; the thread keeps serving
            for r in runs:
                self._close(r)
                self._fail(r, exc)
            return
        with self._cv:
            self.batch_steps += 1
            self.batched_tokens += len(runs)
        for r, logits in zip(runs, outputs):
            self._step(r, logits)
            if not r.done and r.gen is not None and r.pending is None and r.runnable and r.closing is None:
                self._step(r)

    def _step(self, run: Run, reply: Any = None) -> None:
        """One step of one run (`reply`: its batched step's logits), its piece delivered."""
        if run.closing is not None:
            self._close(run)
            self._finish(run, "cancelled" if run.began else "dropped", error=run.closing)
            return
        if run.gen is None and not self._begin(run):
            return
        try:
            more, value = self._advance(run, reply)
        except Exception as exc:  # noqa: BLE001 - reported to the reader; the thread keeps serving
            self._close(run)
            self._fail(run, exc)
            return
        if not more:
            self._done(run, value)
        elif not isinstance(value, str):
            run.pending = value  # parked: it waits for the next batch
        elif run.sink is not None:
            if value:
                run.sink("piece", value)
        else:
            with self._cv:
                run.buffer.append(value)
                if len(run.buffer) >= NOTIFY_EVERY or (run.priority == COMPLETION and len(run.buffer) == 1):
                    self._cv.notify_all()

    def _close(self, run: Run) -> None:
        gen, run.gen = run.gen, None
        if gen is not None:
            try:
                gen.close()  # the engine's cleanup (its KV slot back to the cache), no further step
            except Exception:  # noqa: BLE001 - closing must never take the thread down
                log.debug("closing run %s failed", run.id, exc_info=True)

    def _done(self, run: Run, completion: Any) -> None:
        run.finish_reason = getattr(completion, "finish_reason", None)
        token_ids = getattr(completion, "token_ids", None)
        run.completion_tokens = len(token_ids or [])
        run.prompt_tokens = int(getattr(completion, "prompt_tokens", 0) or 0)
        extra = getattr(completion, "extra", None) or {}
        with self._cv:
            self.counts["completion_tokens"] += run.completion_tokens
            self.counts["prompt_tokens"] += run.prompt_tokens
            self.counts["cached_tokens"] += int(extra.get("cached_tokens", 0) or 0)
            self.counts["shifted_tokens"] += int(extra.get("shifted_tokens", 0) or 0)
        self._finish(run, "cancelled" if run.finish_reason == "cancelled" else "done", value=completion)

    def _fail(self, run: Run, exc: BaseException) -> None:
        run.finish_reason = "error"
        if not _is_user_error(exc):
            log.warning("generation %s failed: %s", run.id, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        self._finish(run, "error", error=exc)

    def _finish(self, run: Run, state: State, value: Any = None, error: BaseException | None = None) -> None:
        with self._cv:
            if run.done:
                return
            if run in self._live:
                self._live.remove(run)
            if state in ("dropped", "cancelled") and run.finish_reason is None:
                run.finish_reason = "cancelled"
            run.state, run.finished = state, time.monotonic()
            run.value, run.error, run.done = value, error, True
            key = {"done": "completed", "cancelled": "cancelled", "dropped": "dropped", "error": "errors"}[state]
            self.counts[key] += 1
            self.recent.append(run.summary())
            self._cv.notify_all()
        if run.sink is not None:
            try:
                if error is not None:
                    run.sink("error", error)
                else:
                    run.sink("done", value)
            except Exception:  # noqa: BLE001 - a reader that went away must not stop the thread
                log.debug("the sink of run %s failed", run.id, exc_info=True)


_STARTED: weakref.WeakSet[ModelRunner] = weakref.WeakSet()  # runners whose thread was started


@atexit.register
def _stop_at_exit() -> None:
    """Stop every runner and wait for its thread before the interpreter finalizes (module docstring)."""
    runners = list(_STARTED)
    for runner in runners:
        runner.stop(timeout=None)
    deadline = time.monotonic() + EXIT_WAIT_S
    for runner in runners:
        if not runner.join(max(0.0, deadline - time.monotonic())):
            log.warning("the model thread %s did not stop within %.0f s of exit", runner.name, EXIT_WAIT_S)
