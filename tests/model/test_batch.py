"""Continuous batching's engine half (model/batch.py and batch mode in generate/engine): one decode
step for several sequences, each with its own KV cache, position, rotation and mask.

On every family's tiny random checkpoint (fp32): a batched step's logits are the one-row steps'
within float rounding (a many-row matmul may round differently from a one-row one), and greedy runs
driven together (joining at different steps, different lengths) give the tokens and text each gives
alone. On int8 (native kernels row by row, the head's int4 shadow rescored per row) the logits are
bit for bit a lone step's. Stop strings, stop tokens, token healing, speculation, cancellation and
deadlines keep working in batch mode, and a closed run gives its KV slot back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
import torch
from hf_models import FAMILIES

from demi.model.batch import DecodeStep, decode_batch, decode_rows
from demi.model.check_cost import CheckCost, check_cost
from demi.model.decoder import KVCache
from demi.model.engine import Completion, LocalModel
from demi.model.generate import CancelToken, GenerationRequest, decode_one_token, prefill
from demi.model.quantize import DECODE_ROWS

# fp32 rounding of a batched matmul against a one-row one; logits of these models are O(1-10)
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_lm(request, tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints(request.param)), context=256)


def _prompt(vocab: int, n: int, seed: int) -> list[int]:
    return [1, *torch.randint(3, min(vocab, 500), (n - 1,), generator=torch.Generator().manual_seed(seed)).tolist()]


def _prefilled(model: Any, prompts: list[list[int]], max_len: int = 96) -> list[KVCache]:
    caches = []
    for ids in prompts:
        cache = KVCache(model.config, max_len, dtype=model.dtype, device=model.device)
        with torch.inference_mode():
            prefill(model, torch.tensor([ids]), 0, cache)
        caches.append(cache)
    return caches


def _steps_both_ways(model: Any, prompts: list[list[int]], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [steps, B, V] of `steps` greedy decode steps per prompt, batched and one at a time, each
    feeding the lone run's own argmax so both see the same tokens."""
    lone, batched = _prefilled(model, prompts), _prefilled(model, prompts)
    tokens = [ids[-1] for ids in prompts]  # any token will do: the same on both sides
    positions = [len(ids) for ids in prompts]
    one_rows, many_rows = [], []
    for _ in range(steps):
        with torch.inference_mode():
            ones = torch.cat(
                [decode_one_token(model, torch.tensor([[t]]), p, c) for t, p, c in zip(tokens, positions, lone)]
            )
        many = decode_batch(model, torch.tensor(tokens), positions, batched)
        one_rows.append(ones)
        many_rows.append(many)
        tokens = ones.argmax(-1).tolist()
        positions = [p + 1 for p in positions]
    for a, b in zip(lone, batched):
        assert a.length == b.length
    return torch.stack(one_rows), torch.stack(many_rows)


def test_a_batched_step_gives_each_sequence_its_own_steps_logits(family_lm):
    model = family_lm.model
    vocab = model.config.vocab_size
    # different lengths: different positions, rotations and (mistral's window of 8) masks
    prompts = [_prompt(vocab, n, seed) for n, seed in ((5, 1), (17, 2), (11, 3), (30, 4))]
    one, many = _steps_both_ways(model, prompts, steps=6)
    assert one.shape == many.shape == (6, 4, vocab)
    assert (one - many).abs().max().item() < TOLERANCE


def test_batch_inputs_are_checked(family_lm):
    model = family_lm.model
    caches = _prefilled(model, [[1, 5, 6]])
    with pytest.raises(ValueError, match="one position"):
        decode_batch(model, torch.tensor([5, 6]), [3], caches)
    with pytest.raises(ValueError, match="of its own"):
        decode_batch(model, torch.tensor([5, 6]), [3, 3], caches * 2)


# -- driving batch-mode runs together ---------------------------------------------------------------


class Driver:
    """A minimal batching scheduler over `LocalModel.run(batch=True)`: every round, each run that is
    not waiting on a decode step is advanced until it is (or ends); then one `decode_batch` runs all
    the waiting steps. `joins[i]`: the round run i starts in (a prefill joining a live batch)."""

    def __init__(self, lm: LocalModel):
        self.lm = lm
        self.batch_sizes: list[int] = []

    def run(self, requests: list[GenerationRequest], joins: list[int] | None = None, hook: Any = None):
        lm, n = self.lm, len(requests)
        joins = joins or [0] * n
        gens: list[Any] = [None] * n
        pieces: list[list[str]] = [[] for _ in range(n)]
        results: list[Completion | None] = [None] * n
        waiting: dict[int, DecodeStep] = {}
        round_no = 0
        while any(r is None for r in results):
            for i in range(n):
                if gens[i] is None and joins[i] <= round_no and results[i] is None:
                    gens[i] = lm.run(requests[i], batch=True)
                if gens[i] is not None and results[i] is None and i not in waiting:
                    self._until_parked(i, gens, pieces, results, waiting, None)
            if hook is not None:
                hook(round_no, gens, results, waiting)
            if waiting:
                order = sorted(waiting)
                logits = lm.decode_batch([waiting.pop(i) for i in order])
                self.batch_sizes.append(len(order))
                for i, row in zip(order, logits):
                    self._until_parked(i, gens, pieces, results, waiting, row)
            round_no += 1
        return pieces, results

    @staticmethod
    def _until_parked(i, gens, pieces, results, waiting, reply) -> None:
        while True:
            try:
                item = gens[i].send(reply)
            except StopIteration as done:
                results[i] = done.value
                return
            reply = None
            if isinstance(item, DecodeStep):
                waiting[i] = item
                return
            assert isinstance(item, str)
            pieces[i].append(item)


def _alone(lm: LocalModel, request: GenerationRequest) -> tuple[list[str], Completion]:
    it, pieces = lm.run(request), []
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as done:
            return pieces, done.value


def _requests(lm: LocalModel, **fields: Any) -> list[GenerationRequest]:
    vocab = lm.model.config.vocab_size
    lengths = ((6, 20), (19, 33), (9, 12), (26, 27))
    return [
        GenerationRequest(_prompt(vocab, n, 10 + i), max_new_tokens=new, stop_ids=set(), **fields)
        for i, (n, new) in enumerate(lengths)
    ]


def test_greedy_runs_batched_together_equal_each_run_alone(family_lm):
    requests = _requests(family_lm)
    driver = Driver(family_lm)
    pieces, results = driver.run(requests, joins=[0, 0, 3, 7])  # two join a live batch later
    assert max(driver.batch_sizes) == len(requests)
    for request, got, got_pieces in zip(requests, results, pieces):
        want_pieces, want = _alone(family_lm, request)
        assert got is not None and got.token_ids == want.token_ids and got.text == want.text
        assert "".join(got_pieces) == got.text and got.finish_reason == want.finish_reason == "length"
    assert not any(slot.busy for slot in family_lm.prefix_cache.slots)


@pytest.fixture(scope="module")
def qwen_lm(tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints("qwen2")), context=256)


def test_stop_strings_stop_tokens_healing_and_speculation_in_a_batch(qwen_lm):
    lm = qwen_lm
    base = _requests(lm)
    plain = [_alone(lm, r)[1] for r in base]
    stop_text = plain[0].text[5:8]  # a stop string the first answer meets
    stop_id = plain[1].token_ids[4]  # a stop token the second meets
    requests = [
        replace(base[0], stop=[stop_text]),
        replace(base[1], stop_ids={stop_id}),
        GenerationRequest("def add(a, b):\n    retu", heal="retu", max_new_tokens=10, stop_ids=set()),
        replace(base[3], speculate=4, prompt=list(base[3].prompt) * 3),  # repeats: drafts get accepted
    ]
    _, results = Driver(lm).run(requests, joins=[0, 1, 2, 2])
    for request, got in zip(requests, results):
        want = _alone(lm, request)[1]
        assert got is not None and (got.text, got.token_ids, got.finish_reason) == (
            want.text,
            want.token_ids,
            want.finish_reason,
        )
    assert results[0].finish_reason == "stop" and stop_text not in results[0].text
    assert results[1].finish_reason == "stop" and results[1].token_ids[-1] == stop_id
    assert results[3].extra["speculation"]["k"] == 4


def test_a_speculating_batched_run_times_its_lone_steps_for_the_check_price(tiny_checkpoints):
    """In batch mode the driver runs a run's plain steps, so the driver times those that run alone
    (a batch of one) and the run's check price follows this model on this machine; a step of a
    larger batch, and the first after a prefill, are not timed."""
    from demi.model import check_cost as cost_module

    lm = LocalModel.load(str(tiny_checkpoints("qwen2")), context=256)
    timed: list[float] = []
    batches: list[list[bool]] = []  # each decode_batch call: its steps' `timed` flags

    class Recording(CheckCost):
        def lone(self, seconds: float) -> None:
            timed.append(seconds)
            super().lone(seconds)

    cost_module._COSTS[lm.model] = Recording()
    run_batch = lm.decode_batch

    def watched(steps: list[DecodeStep]) -> list[torch.Tensor]:
        batches.append([step.timed for step in steps])
        return run_batch(steps)

    lm.decode_batch = watched  # type: ignore[method-assign]
    request = _requests(lm, speculate=4)[1]  # 33 new tokens
    _, results = Driver(lm).run([request])
    plain = lm.complete(request.prompt, max_new_tokens=request.max_new_tokens, stop_ids=set())
    assert results[0] is not None and results[0].token_ids == plain.token_ids
    assert batches and batches[0] == [False]  # the first step after the prefill
    assert len(timed) == sum(flags == [True] for flags in batches) > 0
    assert all(t > 0 for t in timed) and check_cost(lm.model).step is not None
    timed.clear()
    batches.clear()
    Driver(lm).run(_requests(lm, speculate=4)[:2])  # two runs: their shared steps are not timed alone
    assert any(len(flags) == 2 for flags in batches)
    assert len(timed) == sum(flags == [True] for flags in batches)


def test_cancellation_and_deadlines_end_a_batched_run_and_free_its_slot(qwen_lm):
    lm = qwen_lm
    token = CancelToken()
    requests = _requests(lm)
    requests[0] = replace(requests[0], cancel=token, max_new_tokens=200)
    requests[1] = replace(requests[1], time_budget=1e-9, max_new_tokens=200)  # already past at its first check

    def cancel_at_round_4(round_no, gens, results, waiting):
        if round_no == 4:
            token.cancel()

    _, results = Driver(lm).run(requests, hook=cancel_at_round_4)
    assert results[0].finish_reason == "cancelled" and 3 <= len(results[0].token_ids) <= 6
    assert results[1].finish_reason == "time"
    for request, got in zip(requests[2:], results[2:]):  # the others are untouched
        assert got.token_ids == _alone(lm, request)[1].token_ids
    assert not any(slot.busy for slot in lm.prefix_cache.slots)


def test_a_closed_batch_mode_run_gives_its_slot_back(qwen_lm):
    lm = qwen_lm
    gen = lm.run(_requests(lm)[1], batch=True)
    item = next(gen)
    while not isinstance(item, DecodeStep):
        item = next(gen)
    assert any(slot.busy for slot in lm.prefix_cache.slots)
    gen.close()  # what the runner does to a cancelled, parked run
    assert not any(slot.busy for slot in lm.prefix_cache.slots)


def test_a_run_resumed_without_its_logits_fails_clearly(qwen_lm):
    gen = qwen_lm.run(_requests(qwen_lm)[0], batch=True)
    item = next(gen)
    while not isinstance(item, DecodeStep):
        item = next(gen)
    with pytest.raises(RuntimeError, match="without its decode step's logits"):
        next(gen)
    assert not any(slot.busy for slot in qwen_lm.prefix_cache.slots)


# -- quantized: bit for bit ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_lm() -> LocalModel:
    return LocalModel.load("demi-tiny", quant="int8", context=512)


def test_int8_batched_logits_are_a_lone_steps_bit_for_bit(int8_lm):
    model = int8_lm.model
    assert decode_rows(model) == DECODE_ROWS
    head = type(model.lm_head).__name__
    vocab = model.config.vocab_size
    prompts = [_prompt(vocab, n, seed) for n, seed in ((7, 1), (23, 2), (14, 3), (40, 4), (9, 5))]
    one, many = _steps_both_ways(model, prompts, steps=4)
    assert torch.equal(one, many), (head, (one - many).abs().max().item())


def test_more_rows_than_the_decode_kernels_take_are_split(int8_lm):
    model = int8_lm.model
    vocab = model.config.vocab_size
    prompts = [_prompt(vocab, 5 + i, 20 + i) for i in range(DECODE_ROWS + 3)]
    one, many = _steps_both_ways(model, prompts, steps=2)
    assert torch.equal(one, many)


def test_int8_greedy_runs_batched_equal_each_run_alone(int8_lm):
    vocab = int8_lm.model.config.vocab_size
    requests = [
        GenerationRequest(_prompt(vocab, n, 30 + n), max_new_tokens=16, stop_ids=set()) for n in (8, 30, 15, 21)
    ]
    # each from an empty prefix cache: a prompt that finds part of itself cached prefills only the rest,
    # and fewer rows can take the decode kernel where the whole prompt took the prefill's float matmul
    # (the plan's crossover, measured: under load it can be 1 row), which rounds differently
    int8_lm.prefix_cache.clear()
    start = time.monotonic()
    _, results = Driver(int8_lm).run(requests, joins=[0, 0, 2, 5])
    assert time.monotonic() - start < 60
    for request, got in zip(requests, results):
        int8_lm.prefix_cache.clear()
        assert got.token_ids == _alone(int8_lm, request)[1].token_ids
