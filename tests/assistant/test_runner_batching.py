"""Continuous batching on the model runner (assistant/runner.py): stepped runs parked on their decode
steps advance together in one `decode_batch` call, a new run's prefill runs between batch steps and
joins, a cancelled run leaves the batch and frees its slot, whole runs still go first, and errors
reach every member. First on a scripted batching engine (the scheduling alone, exactly), then on a
tiny real model (the text of batched runs is each run's text alone)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import tiny_checkpoint
from runner_support import Events, drain, wait_for

from demi.assistant.engines import CancelToken, Completion, GenerationRequest, InProcessEngine, open_engine
from demi.assistant.runner import ModelRunner, RunRequest, batches

# -- helpers -----------------------------------------------------------------------------------------


# -- a scripted batching engine --------------------------------------------------------------------


class Step:
    """A scripted decode step: whose it is and which token."""

    def __init__(self, name: str, index: int):
        self.name, self.index = name, index


class BatchScripted:
    """`LocalModel`'s batch protocol without a model: a run's prompt is its name; it yields "" for its
    prefill (`prefill` steps of it), its first piece, then per further token a `Step` whose answer
    (from `decode_batch`) is the piece. Records every batch, every solo step and every close."""

    def __init__(self, max_streams: int = 4, prefill: int = 1):
        self.max_streams, self.prefill = max_streams, prefill
        self.batches: list[list[str]] = []  # the names in each decode_batch call
        self.events: list[str] = []  # "batch:a,b", "solo:a", "close:a", in order
        self.closed: list[str] = []
        self.fail_batches = False
        self.lock = threading.Lock()

    def run(self, request: GenerationRequest, batch: bool = False) -> Iterator[Any]:
        name = str(request.prompt)
        out: list[int] = []
        reason = "length"
        try:
            for _ in range(self.prefill):
                self.events.append(f"solo:{name}")
                yield ""
            for i in range(request.max_new_tokens):
                if request.cancel is not None and request.cancel.cancelled:
                    reason = "cancelled"
                    break
                if i == 0 or not batch:
                    if i:
                        self.events.append(f"solo:{name}")
                    piece = f"{name}{i}"
                else:
                    piece = yield Step(name, i)
                    assert piece == f"{name}{i}", piece
                out.append(i)
                yield piece
            return Completion("", out, 2, reason, 0.0)
        finally:
            self.closed.append(name)
            self.events.append(f"close:{name}")

    def decode_batch(self, steps: list[Step]) -> list[str]:
        names = [s.name for s in steps]
        self.batches.append(names)
        self.events.append("batch:" + ",".join(names))
        if self.fail_batches:
            raise RuntimeError("the batch failed")
        return [f"{s.name}{s.index}" for s in steps]


def gen(name: str, n: int = 3, cancel: CancelToken | None = None) -> GenerationRequest:
    return GenerationRequest(name, max_new_tokens=n, cancel=cancel)


def _held(runner: ModelRunner) -> threading.Event:
    """Hold the model thread until the returned event is set (work queued meanwhile starts together)."""
    gate = threading.Event()
    runner.call(gate.wait)
    return gate


@pytest.fixture()
def scripted() -> Iterator[tuple[ModelRunner, BatchScripted]]:
    model = BatchScripted()
    runner = ModelRunner(model, name="test-batching")
    yield runner, model
    runner.stop()


def test_parked_runs_advance_together_in_one_batch_per_token(scripted) -> None:
    runner, model = scripted
    assert batches(model)
    gate = _held(runner)
    sinks = [Events() for _ in range(3)]
    runs = [runner.submit(RunRequest(gen(name, 5)), sink) for name, sink in zip("abc", sinks)]
    gate.set()
    for sink in sinks:
        assert sink.finished.wait(5)
    assert model.batches == [["a", "b", "c"]] * 4  # tokens 1..4, all three in each step
    for name, sink, run in zip("abc", sinks, runs):
        assert sink.pieces == [f"{name}{i}" for i in range(5)] and run.state == "done"
        assert run.steps == 6  # its prefill step and five pieces
    assert runner.batch_steps == 4 and runner.batched_tokens == 12 and runner.stats()["completed"] == 3


def test_a_new_run_prefills_between_batch_steps_and_joins(scripted) -> None:
    runner, model = scripted
    model.prefill = 3
    first = Events()
    long = runner.submit(RunRequest(gen("a", 100_000)), first)
    wait_for(lambda: len(model.batches) >= 2)
    late = Events()
    runner.submit(RunRequest(gen("b", 4)), late)
    assert late.finished.wait(5)
    long.cancel()
    assert first.finished.wait(5)
    events = list(model.events)
    b_start = events.index("solo:b")
    b_prefill = [i for i, e in enumerate(events) if e == "solo:b"]
    assert len(b_prefill) == 3
    # between b's prefill steps the batch of a kept going: no prefill waited for a's whole answer
    assert any(e.startswith("batch:") for e in events[b_prefill[0] : b_prefill[-1]])
    assert ["a", "b"] in model.batches and events.index("close:a") > b_start
    assert late.pieces == ["b0", "b1", "b2", "b3"]


def test_a_cancelled_run_leaves_the_batch_and_closes_at_once(scripted) -> None:
    runner, model = scripted
    gate = _held(runner)
    token = CancelToken()
    sinks = [Events() for _ in range(3)]
    runs = [runner.submit(RunRequest(gen(n, 100_000, token if n == "b" else None)), s) for n, s in zip("abc", sinks)]
    gate.set()
    wait_for(lambda: len(model.batches) >= 3)
    runs[1].cancel()
    assert sinks[1].finished.wait(5) and runs[1].state == "cancelled"
    wait_for(lambda: len(model.batches) >= model.events.count("batch:a,b,c") + 3)
    at = model.events.index("close:b")
    later = [b for b in model.events[at:] if b.startswith("batch:")]
    assert later and all(e == "batch:a,c" for e in later)  # a and c go on without it
    assert "batch:a,b,c" not in model.events[at:]
    for run, sink in ((runs[0], sinks[0]), (runs[2], sinks[2])):
        run.cancel()
        assert sink.finished.wait(5)
    assert runner.stats()["cancelled"] == 3


def test_a_whole_run_goes_before_the_next_batch_step(scripted) -> None:
    runner, model = scripted
    sinks = [Events() for _ in range(2)]
    for name, sink in zip("ab", sinks):
        runner.submit(RunRequest(gen(name, 400)), sink)
    wait_for(lambda: len(model.batches) >= 2)
    quick = runner.complete(gen("q", 6), priority=0)  # an editor completion: whole, never batched
    assert quick.token_ids == list(range(6))
    events = model.events
    q_steps = [i for i, e in enumerate(events) if e.endswith(":q")]
    assert not any(e.startswith("batch:") for e in events[q_steps[0] : q_steps[-1]])  # ran in one go
    assert all("q" not in names for names in model.batches)
    for run in list(runner._live):
        run.cancel()
    for sink in sinks:
        assert sink.finished.wait(5)


def test_a_failed_batch_reaches_every_member_and_the_runner_keeps_serving(scripted) -> None:
    runner, model = scripted
    model.fail_batches = True
    gate = _held(runner)
    sinks = [Events() for _ in range(2)]
    runs = [runner.submit(RunRequest(gen(n, 5)), s) for n, s in zip("ab", sinks)]
    gate.set()
    for sink in sinks:
        assert sink.finished.wait(5)
        kind, value = sink.items[-1]
        assert kind == "error" and "the batch failed" in str(value)
    assert [r.state for r in runs] == ["error", "error"] and sorted(model.closed) == ["a", "b"]
    model.fail_batches = False
    assert drain(runner.stream(gen("c", 3), priority=1))[0] == ["", "c0", "c1", "c2"]


def test_batching_can_be_turned_off() -> None:
    model = BatchScripted()
    runner = ModelRunner(model, batching=False)
    try:
        gate = _held(runner)
        sinks = [Events() for _ in range(2)]
        for name, sink in zip("ab", sinks):
            runner.submit(RunRequest(gen(name, 4)), sink)
        gate.set()
        for sink in sinks:
            assert sink.finished.wait(5)
        assert model.batches == [] and runner.batch_steps == 0
    finally:
        runner.stop()


def test_a_wrapper_whose_run_takes_no_batch_runs_plain() -> None:
    class Wrapped:  # forwards everything (decode_batch too) but overrides run without `batch`
        def __init__(self, inner: BatchScripted) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def run(self, request: GenerationRequest) -> Iterator[Any]:
            return self.inner.run(request)

    model = BatchScripted()
    wrapped = Wrapped(model)
    assert batches(model) and not batches(wrapped)
    runner = ModelRunner(wrapped)
    try:
        gate = _held(runner)
        sinks = [Events() for _ in range(2)]
        for name, sink in zip("ab", sinks):
            runner.submit(RunRequest(gen(name, 3)), sink)
        gate.set()
        for name, sink in zip("ab", sinks):
            assert sink.finished.wait(5) and sink.pieces == [f"{name}0", f"{name}1", f"{name}2"]
        assert model.batches == []
    finally:
        runner.stop()


def test_a_slow_reader_sits_out_until_it_catches_up(scripted) -> None:
    runner, model = scripted
    gate = _held(runner)
    fast = Events()
    runner.submit(RunRequest(gen("a", 60)), fast)
    slow = runner.pieces(runner.submit(RunRequest(gen("b", 60))))  # read by nobody yet
    gate.set()
    assert fast.finished.wait(5)
    assert sum("b" in names for names in model.batches) < 30  # it stopped AHEAD pieces ahead of its reader
    pieces, _ = drain(slow)
    assert pieces[1:] == [f"b{i}" for i in range(60)]


# -- a real model ----------------------------------------------------------------------------------

CONTEXT = 256


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[InProcessEngine]:
    model_dir = tiny_checkpoint(tmp_path_factory.mktemp("qwen2-batching"), max_position_embeddings=CONTEXT)
    e = open_engine(str(model_dir), context=CONTEXT)
    assert isinstance(e, InProcessEngine)
    yield e
    e.close()


PROMPTS = ["def add(a, b):", "class Stack:\n    ", "import os\n", "for i in range(10):"]


def test_concurrent_streams_are_batched_and_each_equals_its_run_alone(engine: InProcessEngine) -> None:
    local, runner = engine.local, engine.runner
    alone = [local.complete(p, max_new_tokens=24, stop_ids=set()) for p in PROMPTS]
    before = (runner.batch_steps, runner.batched_tokens)
    gate = _held(runner)
    sinks = [Events() for _ in PROMPTS]
    runs = [
        runner.submit(RunRequest(GenerationRequest(p, max_new_tokens=24, stop_ids=set()), model=local), sink)
        for p, sink in zip(PROMPTS, sinks)
    ]
    gate.set()
    for sink in sinks:
        assert sink.finished.wait(60)
    for run, sink, want in zip(runs, sinks, alone):
        got = run.result(1)
        assert got.token_ids == want.token_ids and got.text == want.text == "".join(sink.pieces)
    steps, rows = runner.batch_steps - before[0], runner.batched_tokens - before[1]
    assert steps >= 23 and rows == 4 * 23  # every token after the first came from a batch of four
    assert not any(slot.busy for slot in local.prefix_cache.slots)


def test_a_cancelled_batched_run_frees_its_slot_while_the_others_go_on(engine: InProcessEngine) -> None:
    local, runner = engine.local, engine.runner
    sinks = [Events() for _ in range(3)]
    runs = [
        runner.submit(RunRequest(GenerationRequest(p, max_new_tokens=150, stop_ids=set()), model=local), sink)
        for p, sink in zip(PROMPTS, sinks)
    ]
    wait_for(lambda: all(r.steps >= 3 for r in runs))
    runs[0].cancel()
    assert sinks[0].finished.wait(30) and runs[0].state == "cancelled"
    wait_for(lambda: sum(s.busy for s in local.prefix_cache.slots) == 2)
    assert not runs[1].done and not runs[2].done
    for run, sink in zip(runs[1:], sinks[1:]):
        assert sink.finished.wait(60) and run.result(1).completion_tokens == 150
