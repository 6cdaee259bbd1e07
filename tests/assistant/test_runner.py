"""The one model runner (assistant/runner.py): priorities, cancellation, fairness, capacity, the
queue bound and the counters, on a scripted engine (the scheduling alone) and on a tiny real model
(the KV slots, the text, the engine's own cancellation)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_checkpoint
from runner_support import Events, drain, wait_for

from demi.assistant.engines import CancelToken, Completion, GenerationRequest, InProcessEngine, open_engine
from demi.assistant.runner import (
    ModelRunner,
    QueueFull,
    Run,
    RunCancelled,
    RunnerStopped,
    RunRequest,
    engine_capacity,
    set_priority,
)

# -- a scripted engine -----------------------------------------------------------------------------


class Scripted:
    """`LocalModel.run`'s contract without a model: request.prompt is a name, each step yields
    "<name><i>" after `delay` seconds, and every step and close is recorded with its thread."""

    def __init__(self, max_streams: int = 4, delay: float = 0.0):
        self.max_streams, self.delay = max_streams, delay
        self.seen: list[tuple[str, str]] = []  # (name, thread) per step, in order
        self.closed: list[tuple[str, str]] = []
        self.started: list[str] = []
        self.live = self.max_live = 0
        self.lock = threading.Lock()

    def run(self, request: GenerationRequest) -> Iterator[str]:
        name = str(request.prompt)
        if name == "boom":
            raise ValueError("bad request")
        self.started.append(name)
        with self.lock:
            self.live += 1
            self.max_live = max(self.max_live, self.live)
        reason, out = "length", []
        try:
            for i in range(request.max_new_tokens):
                if request.cancel is not None and request.cancel.cancelled:
                    reason = "cancelled"
                    break
                if name == "fails" and i == 1:
                    raise RuntimeError("engine failure")
                self.seen.append((name, threading.current_thread().name))
                if self.delay:
                    time.sleep(self.delay)
                out.append(i)
                yield f"{name}{i}"
            return Completion("", out, 3, reason, 0.0, extra={"cached_tokens": 1})
        finally:
            with self.lock:
                self.live -= 1
            self.closed.append((name, threading.current_thread().name))


def gen(name: str, n: int = 3, cancel: CancelToken | None = None) -> GenerationRequest:
    return GenerationRequest(name, max_new_tokens=n, cancel=cancel)


@pytest.fixture()
def runner_and_model() -> Iterator[tuple[ModelRunner, Scripted]]:
    model = Scripted()
    runner = ModelRunner(model, name="test-model")
    yield runner, model
    runner.stop()


# -- the basics ------------------------------------------------------------------------------------


def test_every_step_and_close_runs_on_the_model_thread(runner_and_model) -> None:
    runner, model = runner_and_model
    pieces, value = drain(runner.stream(gen("a", 5), priority=1))
    assert pieces == ["a0", "a1", "a2", "a3", "a4"] and value.finish_reason == "length"
    assert {t for _, t in model.seen} == {"test-model"} and model.closed == [("a", "test-model")]
    assert runner.call(lambda: threading.current_thread().name).result(5) == "test-model"
    done = runner.complete(gen("b", 2), on_text=lambda p: model.seen.append((p, threading.current_thread().name)))
    assert done.token_ids == [0, 1] and all(t == "test-model" for _, t in model.seen)
    assert runner.runs_started == 2 and runner.steps == 7 and runner.runs_skipped == 0


def test_the_engine_keyword_api_works_too() -> None:
    """An engine with only `stream(prompt, **fields)` (what `demi serve`'s tests script) runs as well."""

    class KeywordsOnly:
        def stream(self, prompt: str, max_new_tokens: int = 1, **fields: Any) -> Iterator[str]:
            assert set(fields) >= {"sampling", "stop", "stop_ids", "heal", "cancel", "time_budget"}
            yield from (prompt * (i + 1) for i in range(max_new_tokens))
            return "done"

    runner = ModelRunner(KeywordsOnly())
    try:
        assert drain(runner.stream(gen("x", 2))) == (["x", "xx"], "done")
    finally:
        runner.stop()


def test_errors_reach_the_reader_and_the_runner_keeps_serving(runner_and_model) -> None:
    runner, _ = runner_and_model
    it = runner.stream(gen("fails", 5), priority=1)
    assert next(it) == "fails0"
    with pytest.raises(RuntimeError, match="engine failure"):
        next(it)
    with pytest.raises(ValueError, match="bad request"):
        runner.complete(gen("boom"))
    assert drain(runner.stream(gen("ok", 1)))[0] == ["ok0"]
    s = runner.stats()
    assert s["errors"] == 2 and s["completed"] == 1 and s["active"] == 0


# -- priorities ------------------------------------------------------------------------------------


def test_a_completion_runs_whole_ahead_of_a_long_answer() -> None:
    """A priority-0 completion waits at most one step behind a priority-1 stream, then runs alone."""
    model = Scripted(delay=0.002)
    runner = ModelRunner(model)
    try:
        long = runner.submit(RunRequest(gen("explain", 200), priority=1))
        reader = threading.Thread(target=lambda: pytest.raises(RunCancelled, drain, runner.pieces(long)))
        reader.start()
        wait_for(lambda: len(model.seen) >= 5)
        result = runner.complete(gen("complete", 10), priority=0)
        names = [n for n, _ in model.seen]
        first = names.index("complete")
        assert result.token_ids == list(range(10))
        assert names[first : first + 10] == ["complete"] * 10  # nothing stepped in between
        assert not long.done and long.state == "active"  # the long answer is still going
        long.cancel()
        reader.join(10)
        assert long.state == "cancelled"
    finally:
        runner.stop()


def test_lower_priority_streams_go_first() -> None:
    model = Scripted(delay=0.002)
    runner = ModelRunner(model)
    order: list[str] = []

    def consume(name: str, prio: int, n: int) -> None:
        set_priority(prio)  # the thread's priority, as the language server's task threads set it
        for piece in runner.stream(gen(name, n)):
            order.append(piece)

    try:
        slow = threading.Thread(target=consume, args=("explain", 1, 40))
        slow.start()
        wait_for(lambda: len(order) >= 2)
        fast = threading.Thread(target=consume, args=("stream", 0, 10))
        fast.start()
        fast.join(10)
        slow.join(10)
        steps = [n for n, _ in model.seen]
        first, last = steps.index("stream"), len(steps) - 1 - steps[::-1].index("stream")
        assert steps[first : last + 1].count("explain") <= 1  # one step already under way, at most
        assert len(order) == 50
    finally:
        runner.stop()


# -- cancellation ----------------------------------------------------------------------------------


def test_cancelled_before_start_never_runs(runner_and_model) -> None:
    runner, model = runner_and_model
    token = CancelToken()
    token.cancel()
    with pytest.raises(RunCancelled):
        drain(runner.stream(gen("x", 3, token), priority=1))
    with pytest.raises(RunCancelled):
        runner.complete(gen("y", 3, token), priority=0)
    assert model.started == [] and runner.runs_started == 0 and runner.runs_skipped == 2
    assert [r["state"] for r in runner.stats()["recent"]] == ["dropped", "dropped"]


def test_a_queued_run_cancelled_is_dropped_at_once_and_never_starts() -> None:
    model = Scripted(max_streams=1, delay=0.002)
    runner = ModelRunner(model)
    try:
        first = runner.submit(RunRequest(gen("first", 10_000)), Events())
        wait_for(lambda: runner.stats()["active"] == 1 and model.seen)
        waiting = runner.submit(RunRequest(gen("second", 3)), events := Events())
        assert runner.stats()["queued"] == 1
        waiting.cancel()
        s = runner.stats()
        assert s["queued"] == 0 and s["dropped"] == 1 and waiting.state == "dropped"
        assert events.finished.wait(5) and isinstance(events.items[-1][1], RunCancelled)
        first.cancel()
        wait_for(lambda: first.done)
        assert "second" not in model.started and runner.runs_skipped == 1
    finally:
        runner.stop()


def test_a_running_run_is_closed_at_its_next_step(runner_and_model) -> None:
    runner, model = runner_and_model
    model.delay = 0.002
    run = runner.submit(RunRequest(gen("long", 10_000)), events := Events())
    wait_for(lambda: len(model.seen) >= 3)
    run.cancel()
    assert events.finished.wait(5)
    assert model.closed == [("long", "test-model")]  # the engine's cleanup ran on the model thread
    assert run.state == "cancelled" and len(model.seen) < 100
    s = runner.stats()
    assert s["cancelled"] == 1 and s["active"] == 0


def test_a_reader_that_leaves_closes_its_stream(runner_and_model) -> None:
    runner, model = runner_and_model
    model.delay = 0.001
    it = runner.stream(gen("y", 100), priority=1)
    assert next(it) == "y0"
    it.close()  # the reader stops early (a cancelled request)
    wait_for(lambda: model.closed)
    assert model.closed == [("y", "test-model")] and len(model.seen) < 40


def test_the_engine_ends_a_run_whose_token_is_cancelled(runner_and_model) -> None:
    """Cancelled through the engine's own token while running: the answer so far, "cancelled"."""
    runner, model = runner_and_model
    model.delay = 0.002
    token = CancelToken()
    got: list[str] = []

    def on_text(piece: str) -> None:
        got.append(piece)
        if len(got) == 3:
            token.cancel()

    result = runner.complete(gen("c", 1000, token), on_text=on_text, priority=0)
    assert result.finish_reason == "cancelled" and got == ["c0", "c1", "c2"]
    assert runner.stats()["cancelled"] == 1


# -- fairness, capacity, the queue -----------------------------------------------------------------


def test_streams_of_equal_priority_take_turns(runner_and_model) -> None:
    runner, model = runner_and_model
    sinks = [Events() for _ in range(3)]
    gate = threading.Event()
    runner.call(gate.wait)  # hold the thread until all three are queued: they are then admitted together
    runs = [runner.submit(RunRequest(gen(name, 6)), sink) for name, sink in zip("abc", sinks, strict=True)]
    gate.set()
    for sink in sinks:
        assert sink.finished.wait(5)
    names = [n for n, _ in model.seen]
    assert names == ["a", "b", "c"] * 6  # round-robin, one step each
    assert all(r.state == "done" for r in runs) and sinks[0].pieces == [f"a{i}" for i in range(6)]


def test_live_generations_never_exceed_the_engine_kv_slots() -> None:
    model = Scripted(max_streams=2, delay=0.001)
    runner = ModelRunner(model, max_live=4)
    try:
        assert runner.max_live == 2 and engine_capacity(model) == 2
        sinks = [Events() for _ in range(5)]
        for i, sink in enumerate(sinks):
            runner.submit(RunRequest(gen(f"r{i}", 20)), sink)
        for sink in sinks:
            assert sink.finished.wait(10)
        assert model.max_live == 2 and model.started == [f"r{i}" for i in range(5)]  # FIFO admission
        s = runner.stats()
        assert s["max_active"] == 2 and s["engine_capacity"] == 2 and s["completed"] == 5
    finally:
        runner.stop()


def test_a_full_queue_is_refused_with_a_clear_error() -> None:
    model = Scripted(max_streams=1, delay=0.002)
    runner = ModelRunner(model, max_queue=1)
    try:
        running = runner.submit(RunRequest(gen("running", 10_000)), Events())
        waiting = runner.submit(RunRequest(gen("waiting", 2)), Events())
        with pytest.raises(QueueFull, match="already waiting"):
            runner.submit(RunRequest(gen("refused", 2)), Events())
        s = runner.stats()
        assert s["submitted"] == 2 and s["queued"] + s["active"] == 2
        running.cancel()
        wait_for(lambda: waiting.done)
        assert waiting.state == "done" and "refused" not in model.started
    finally:
        runner.stop()


def test_engine_capacity_reads_what_the_engine_says() -> None:
    class Slots:
        class prefix_cache:  # noqa: N801 - the attribute's name
            max_slots = 3

    assert engine_capacity(Slots()) == 3 and engine_capacity(object()) == 1
    assert ModelRunner(None, max_live=5).max_live == 5


# -- stats and stopping ----------------------------------------------------------------------------


def test_stats_books_balance_and_summaries(runner_and_model) -> None:
    runner, _ = runner_and_model
    drain(runner.stream(gen("one", 2), priority=1))
    runner.complete(gen("two", 3))
    with pytest.raises(RuntimeError):
        runner.complete(gen("fails", 5))
    token = CancelToken()
    token.cancel()
    with pytest.raises(RunCancelled):
        runner.complete(gen("never", 2, token))
    s = runner.stats()
    assert s["submitted"] == s["completed"] + s["cancelled"] + s["dropped"] + s["errors"] == 4
    assert s["completion_tokens"] == 5 and s["prompt_tokens"] == 6 and s["cached_tokens"] == 2
    last = s["recent"][1]
    assert last["state"] == "done" and last["steps"] == 3 and last["max_tokens"] == 3
    assert last["finish_reason"] == "length" and last["queued_ms"] <= last["total_ms"]


def test_stop_fails_waiting_work_and_closes_live_runs() -> None:
    model = Scripted(max_streams=1, delay=0.002)
    runner = ModelRunner(model)
    runner.submit(RunRequest(gen("live", 10_000)), live_events := Events())
    wait_for(lambda: model.seen)
    gate = threading.Event()
    first = runner.call(lambda: gate.wait(5))
    queued_call = runner.call(lambda: "never")
    wait_for(lambda: first.running())
    queued = runner.submit(RunRequest(gen("queued", 3)), Events())
    stopper = threading.Thread(target=runner.stop)
    stopper.start()
    wait_for(lambda: runner.stopped)
    gate.set()
    stopper.join(10)
    assert first.result(5) is True
    with pytest.raises(RunnerStopped, match="stopped"):
        queued_call.result(5)
    assert live_events.finished.wait(5) and isinstance(live_events.items[-1][1], RunnerStopped)
    assert queued.state == "dropped" and "queued" not in model.started
    assert model.closed == [("live", "demi-model")]
    with pytest.raises(RunnerStopped):
        runner.submit(RunRequest(gen("late", 1)))


# -- a real model ----------------------------------------------------------------------------------

CONTEXT = 256


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[InProcessEngine]:
    model_dir: Path = tiny_checkpoint(tmp_path_factory.mktemp("qwen2-runner"), max_position_embeddings=CONTEXT)
    e = open_engine(str(model_dir), context=CONTEXT)
    assert isinstance(e, InProcessEngine)
    yield e
    e.close()


def test_the_in_process_engine_runs_on_its_runner(engine: InProcessEngine) -> None:
    local, runner = engine.local, engine.runner
    assert runner.max_live == local.max_streams == engine_capacity(local)
    ref = local.complete("def add(a, b):", max_new_tokens=12)  # the engine alone, on this thread
    before = runner.runs_started
    whole = engine.complete("def add(a, b):", max_new_tokens=12)
    set_priority(1)
    try:
        stepped = engine.complete("def add(a, b):", max_new_tokens=12)
    finally:
        set_priority(0)
    assert whole.text == stepped.text == ref.text and whole.token_ids == ref.token_ids
    assert runner.runs_started == before + 2


def test_a_cancelled_generation_gives_its_kv_slot_back(engine: InProcessEngine) -> None:
    local, runner = engine.local, engine.runner
    run = runner.submit(RunRequest(GenerationRequest("class Stack:", max_new_tokens=200), model=local), Events())
    wait_for(lambda: run.steps >= 2)
    assert any(s.busy for s in local.prefix_cache.slots)
    run.cancel()
    wait_for(lambda: run.done)
    assert run.state == "cancelled" and run.steps < 200
    assert not any(s.busy for s in local.prefix_cache.slots)  # back in the prefix cache


def test_a_completion_overtakes_a_long_stream_on_a_real_model(engine: InProcessEngine) -> None:
    runner = engine.runner
    long: Run = runner.submit(
        RunRequest(GenerationRequest("import os\n", max_new_tokens=CONTEXT - 20, stop_ids=set()), priority=1),
        long_events := Events(),
    )
    wait_for(lambda: long.steps >= 1)
    token = CancelToken()
    quick = engine.complete("x = ", max_new_tokens=3, cancel=token, stop_ids=set())
    assert quick.completion_tokens == 3
    assert not long.done  # the completion did not wait for the long stream to end
    long.cancel()
    assert long_events.finished.wait(30)


EXIT_SCRIPT = """
import time, torch
from demi.assistant.runner import ModelRunner

def busy():  # about a second of torch work on the model thread
    a = torch.randn(256, 256)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        a = torch.nn.functional.linear(a, a).tanh()
    print("call finished", flush=True)

runner = ModelRunner(None)
runner.call(busy)
time.sleep(0.2)  # the call is inside torch now; the script ends without stopping the runner
"""


def test_exit_waits_for_the_model_thread_inside_torch():
    """A process that ends while its model thread is inside torch exits cleanly: the runner's
    exit hook stops it and waits, where finalizing under it would abort (exit code -6)."""
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "call finished" in proc.stdout
