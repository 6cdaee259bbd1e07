"""The prefix cache: reused keys and values give exactly the tokens a cold run gives, slots are
checked out so interleaved generations never share one, and every ending returns its slot."""

from __future__ import annotations

import pytest

from demi.model.engine import LocalModel
from demi.model.errors import ContextOverflowError
from demi.model.generate import CancelToken
from demi.model.prefix_cache import common_prefix

PROMPT = list(range(40, 140))


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints):
    return str(tiny_checkpoints("qwen2"))


def fresh(model_dir: str) -> LocalModel:
    return LocalModel.load(model_dir, context=256)


def run(model: LocalModel, ids: list[int], n: int = 12):
    return model.complete(ids, max_new_tokens=n, stop_ids=set())


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2, 3]) == 2


def test_extended_prompt_reuses_and_matches_a_cold_run(model_dir):
    warm = fresh(model_dir)
    first = run(warm, PROMPT)
    assert first.extra["cached_tokens"] == 0
    typed = PROMPT + [7]  # one more "keystroke"
    again = run(warm, typed)
    assert again.extra["cached_tokens"] == len(PROMPT)
    assert again.token_ids == run(fresh(model_dir), typed).token_ids
    edited = PROMPT[:60] + [9, 9] + PROMPT[62:]  # an edit in the middle: reuse up to it
    third = run(warm, edited)
    assert third.extra["cached_tokens"] == 60
    assert third.token_ids == run(fresh(model_dir), edited).token_ids


def test_identical_prompt_reuses_all_but_the_last_token(model_dir):
    m = fresh(model_dir)
    a = run(m, PROMPT)
    b = run(m, PROMPT)
    assert b.extra["cached_tokens"] == len(PROMPT) - 1 and a.token_ids == b.token_ids


def test_interleaved_generations_use_separate_slots(model_dir):
    m = fresh(model_dir)
    prompts = [PROMPT, PROMPT[:50] + [3] * 10, list(range(200, 260))]
    expected = [run(fresh(model_dir), p).token_ids for p in prompts]
    streams = [m.stream(p, max_new_tokens=12, stop_ids=set()) for p in prompts]
    done: dict[int, list[int]] = {}
    while len(done) < len(streams):  # round-robin, as the server's worker does
        for i, s in enumerate(streams):
            if i in done:
                continue
            try:
                next(s)
            except StopIteration as stop:
                done[i] = stop.value.token_ids
    assert [done[i] for i in range(3)] == expected
    assert len(m.prefix_cache.slots) == 3 and not any(s.busy for s in m.prefix_cache.slots)


def test_slots_are_returned_on_cancel_and_close(model_dir):
    m = fresh(model_dir)
    token = CancelToken()
    pieces = m.stream(PROMPT, max_new_tokens=50, stop_ids=set(), cancel=token)
    next(pieces)
    assert any(s.busy for s in m.prefix_cache.slots)
    token.cancel()
    with pytest.raises(StopIteration) as stop:
        while True:
            next(pieces)
    assert stop.value.value.finish_reason == "cancelled"
    assert not any(s.busy for s in m.prefix_cache.slots)
    abandoned = m.stream(PROMPT, max_new_tokens=50, stop_ids=set())
    next(abandoned)
    abandoned.close()  # a client that went away
    assert not any(s.busy for s in m.prefix_cache.slots)
    assert run(m, PROMPT + [5]).extra["cached_tokens"] >= len(PROMPT)


def test_more_generations_than_slots_still_run(model_dir):
    m = LocalModel(fresh(model_dir).model, fresh(model_dir).tokenizer, "t", context=256, cache_slots=1)
    a = m.stream(PROMPT, max_new_tokens=5, stop_ids=set())
    b = m.stream(PROMPT[:30], max_new_tokens=5, stop_ids=set())
    next(a)
    next(b)  # no free slot: a temporary cache, not kept
    for s in (a, b):
        for _ in s:
            pass
    assert len(m.prefix_cache.slots) == 1


def test_prompt_over_the_context_is_refused_before_taking_a_slot(model_dir):
    m = fresh(model_dir)
    with pytest.raises(ContextOverflowError):
        run(m, list(range(300)))
    assert not any(s.busy for s in m.prefix_cache.slots)


def test_chunked_prefill_gives_the_same_tokens_and_can_be_cancelled(model_dir):
    from demi.model.generate import GenerationRequest, Run, generate

    m = fresh(model_dir)
    whole = list(generate(m.model, GenerationRequest(PROMPT, 10)))
    chunked = list(generate(m.model, GenerationRequest(PROMPT, 10), run=Run(PROMPT, chunk=16)))
    assert [t for t in chunked if t is not None] == whole
    assert chunked[:6] == [None] * 6 and chunked[6] is not None  # 100 tokens: 7 chunks, 6 ticks
    token = CancelToken()
    gen = generate(m.model, GenerationRequest(PROMPT, 10, cancel=token), run=Run(PROMPT, chunk=16))
    assert next(gen) is None
    token.cancel()
    with pytest.raises(StopIteration) as end:  # the stop reason is generate's return value
        next(gen)
    assert end.value.value == "cancelled"


def test_prefill_chunks_scale_with_model_size():
    """demi-tiny takes an editor's ~1,500-token FIM prompt in one step; big models keep 512-token
    chunks so a scheduler can interleave streams and a cancel lands quickly."""
    from demi.model.engine import MAX_PREFILL_CHUNK, MIN_PREFILL_CHUNK, prefill_chunk_for

    assert prefill_chunk_for(12_600_000) >= 1536
    assert prefill_chunk_for(494_000_000) == MIN_PREFILL_CHUNK == prefill_chunk_for(7_000_000_000)
    assert prefill_chunk_for(10_000) == MAX_PREFILL_CHUNK
