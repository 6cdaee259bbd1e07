"""The one-call decode step (model/decode_stack.py, `demi_decode_stack`): on every dense family with
native quantized decode kernels it gives exactly the layer-by-layer path's logits and cache (int8
and int4, biases, a sliding window, tied heads), batches and speculative checks still agree with
lone steps, and the families and set-ups it does not fit keep the layer-by-layer path."""

from __future__ import annotations

import pytest
import torch

from demi.model import native_kernels
from demi.model.decoder import KVCache
from demi.model.generate import decode_one_token, prefill
from demi.model.loading import load_model

pytestmark = pytest.mark.skipif(
    not any(native_kernels.library(p) for p in native_kernels.candidate_paths()), reason="no native kernels here"
)
DENSE = ["llama", "llama-bias", "llama-tied", "mistral", "qwen2"]


@pytest.fixture(autouse=True)
def native_decode(monkeypatch):
    """The plan may pick torch's int4 kernels for decode on some CPUs (then there is no stack): these
    tests force the first native path this CPU runs."""
    path = next(p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None)
    monkeypatch.setenv("DEMI_KERNEL", path)


def greedy(model, prompt: list[int], steps: int) -> tuple[torch.Tensor, KVCache]:
    cache = KVCache(model.config, len(prompt) + steps + 4, dtype=model.dtype)
    logits, token = [], prompt[-1]
    with torch.inference_mode():
        prefill(model, torch.tensor([prompt[:-1]]), 0, cache)
        for i in range(steps):
            row = decode_one_token(model, torch.tensor([[token]]), len(prompt) - 1 + i, cache)
            logits.append(row)
            token = int(row.argmax())
    return torch.cat(logits), cache


@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("family", DENSE)
def test_one_call_steps_equal_the_layer_by_layer_path_bit_for_bit(family, quant, tiny_checkpoints):
    model = load_model(tiny_checkpoints(family), quant=quant)
    assert model.decode_stack is not None, family
    prompt = torch.randint(3, 400, (14,), generator=torch.Generator().manual_seed(2)).tolist()
    fast, cache = greedy(model, prompt, steps=12)  # past Mistral's window of 8
    stack, model.decode_stack = model.decode_stack, None
    slow, ref_cache = greedy(model, prompt, steps=12)
    model.decode_stack = stack
    assert torch.equal(fast, slow)
    assert all(torch.equal(a, b) for a, b in zip(cache.k + cache.v, ref_cache.k + ref_cache.v))


def test_a_batch_and_a_speculative_check_agree_with_one_call_steps(tiny_checkpoints):
    from demi.model.batch import decode_batch

    model = load_model(tiny_checkpoints("llama-bias"), quant="int8")
    assert model.decode_stack is not None
    prompts = [[5, 9, 14, 3, 22, 7], [40, 2, 2, 8, 19, 33, 4, 11]]
    caches = [KVCache(model.config, 32) for _ in prompts]
    with torch.inference_mode():
        for p, c in zip(prompts, caches):
            prefill(model, torch.tensor([p[:-1]]), 0, c)
        lone_caches = [KVCache(model.config, 32) for _ in prompts]
        for p, c in zip(prompts, lone_caches):
            prefill(model, torch.tensor([p[:-1]]), 0, c)
        lone = torch.cat(
            [decode_one_token(model, torch.tensor([[p[-1]]]), len(p) - 1, c) for p, c in zip(prompts, lone_caches)]
        )
        many = decode_batch(model, torch.tensor([p[-1] for p in prompts]), [len(p) - 1 for p in prompts], caches)
        # a speculative check: rows one by one through the layer-by-layer path, against steps through the stack
        check_cache, step_cache = KVCache(model.config, 32), KVCache(model.config, 32)
        p = prompts[1]
        prefill(model, torch.tensor([p[:4]]), 0, check_cache)
        prefill(model, torch.tensor([p[:4]]), 0, step_cache)
        stack, model.decode_stack = model.decode_stack, None  # the check through the layer-by-layer path
        rows = model.lm_head(model.hidden_states(torch.tensor([p[4:]]), 4, check_cache, rowwise=True))[0]
        model.decode_stack = stack
        tail = enumerate(p[4:])
        steps = torch.cat([decode_one_token(model, torch.tensor([[t]]), 4 + i, step_cache) for i, t in tail])
    assert torch.equal(lone.view(many.shape), many)
    assert torch.equal(rows.view(steps.shape), steps)


@pytest.mark.parametrize(
    "family, quant, vocab",
    [("llama-bias", "int8", None), ("llama-bias", "int4", None), ("mistral", "int8", None), ("mistral", "int4", None),
     ("qwen2", "int8", 4608)],
)  # fmt: skip
def test_a_long_speculative_check_in_one_call_is_lone_steps_bit_for_bit(family, quant, vocab, tiny_checkpoints):
    """A check of more rows than the layer path's decode kernels take (DECODE_ROWS) goes through the
    stack in one call, each row what a lone step gives (Mistral's window of 8 slides inside it), so
    speculation has no row limit there; a vocabulary of 4,096 or more gets the int8 head with an int4
    shadow (RescoredHead), checked DECODE_ROWS rows at a time as a batch step is."""
    from demi.model.generate import max_verify_rows, verify_logits
    from demi.model.quantize import DECODE_ROWS, RescoredHead

    model = load_model(tiny_checkpoints(family, **({"vocab_size": vocab} if vocab else {})), quant=quant)
    assert isinstance(model.lm_head, RescoredHead) == bool(vocab)
    prompt = torch.randint(3, 400, (6,), generator=torch.Generator().manual_seed(5)).tolist()
    drafts = torch.randint(3, 400, (DECODE_ROWS + 6,), generator=torch.Generator().manual_seed(6)).tolist()
    check_cache, step_cache = KVCache(model.config, 40), KVCache(model.config, 40)
    assert max_verify_rows(model, check_cache) is None
    with torch.inference_mode():
        prefill(model, torch.tensor([prompt]), 0, check_cache)
        prefill(model, torch.tensor([prompt]), 0, step_cache)
        rows = verify_logits(model, torch.tensor([drafts]), len(prompt), check_cache)
        at = len(prompt)
        steps = [decode_one_token(model, torch.tensor([[t]]), at + i, step_cache) for i, t in enumerate(drafts)]
    assert torch.equal(rows, torch.cat(steps))
    assert check_cache.length == step_cache.length == len(prompt) + len(drafts)
    assert all(torch.equal(a, b) for a, b in zip(check_cache.k + check_cache.v, step_cache.k + step_cache.v))


def test_a_check_cut_into_chunks_across_more_threads_is_lone_steps_bit_for_bit(tiny_checkpoints):
    """A check's rows share their keys and values as one run; with more threads than (run, key/value
    head) pairs the run is cut into chunks of rows (decode_ops.c's attend_rows). Five threads against
    one: every row is still what a lone step gives."""
    from demi.model.generate import verify_logits

    model = load_model(tiny_checkpoints("llama-bias"), quant="int8")
    prompt = torch.randint(3, 400, (9,), generator=torch.Generator().manual_seed(7)).tolist()
    drafts = torch.randint(3, 400, (11,), generator=torch.Generator().manual_seed(8)).tolist()
    check_cache, step_cache = KVCache(model.config, 40), KVCache(model.config, 40)
    threads = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            prefill(model, torch.tensor([prompt]), 0, check_cache)
            prefill(model, torch.tensor([prompt]), 0, step_cache)
            at = len(prompt)
            steps = [decode_one_token(model, torch.tensor([[t]]), at + i, step_cache) for i, t in enumerate(drafts)]
            torch.set_num_threads(5)
            assert model.config.num_key_value_heads < 5
            rows = verify_logits(model, torch.tensor([drafts]), len(prompt), check_cache)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(rows, torch.cat(steps))
    assert all(torch.equal(a, b) for a, b in zip(check_cache.k + check_cache.v, step_cache.k + step_cache.v))


def test_a_batch_of_int4_sequences_in_one_call_is_their_lone_steps(tiny_checkpoints):
    from demi.model.batch import decode_batch

    model = load_model(tiny_checkpoints("qwen2"), quant="int4")
    prompts = [[5, 9, 14, 3], [40, 2, 2, 8, 19, 33, 4, 11, 7, 7], [8, 1]]
    batched, lone = ([KVCache(model.config, 24) for _ in prompts] for _ in range(2))
    with torch.inference_mode():
        for p, a, b in zip(prompts, batched, lone):
            prefill(model, torch.tensor([p[:-1]]), 0, a)
            prefill(model, torch.tensor([p[:-1]]), 0, b)
        many = decode_batch(model, torch.tensor([p[-1] for p in prompts]), [len(p) - 1 for p in prompts], batched)
        alone = [decode_one_token(model, torch.tensor([[p[-1]]]), len(p) - 1, c) for p, c in zip(prompts, lone)]
    assert torch.equal(many, torch.cat(alone))
    assert [c.length for c in batched] == [len(p) for p in prompts]


@pytest.mark.parametrize("family, quant", [("qwen3", "int8"), ("mixtral", "int8"), ("llama", "none")])
def test_what_the_stack_does_not_fit_keeps_the_layers(family, quant, tiny_checkpoints):
    """QK norm (Qwen3), experts (Mixtral) and unquantized weights keep the layer-by-layer path."""
    model = load_model(tiny_checkpoints(family), quant=quant)
    assert model.decode_stack is None
    logits, _ = greedy(model, [3, 4, 5, 6, 7], steps=3)
    assert torch.isfinite(logits).all()


def test_a_position_outside_the_cache_is_refused_before_anything_is_written(tiny_checkpoints):
    model = load_model(tiny_checkpoints("llama"), quant="int8")
    cache = KVCache(model.config, 8)
    before = [t.clone() for t in cache.k]
    with torch.inference_mode(), pytest.raises(ValueError, match="outside the cache"):
        decode_one_token(model, torch.tensor([[3]]), 8, cache)
    assert all(torch.equal(a, b) for a, b in zip(before, cache.k))
