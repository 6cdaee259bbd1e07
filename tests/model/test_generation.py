"""Generation on a tiny random llama: parity with transformers' `generate` (greedy with a
repetition penalty, and seeded sampling with temperature / top-k / top-p), and the engine's own
behaviour: seeds, stop tokens and stop strings, time budget, cancellation, and streamed text
that always adds up to the final text.
"""

from __future__ import annotations

import threading

import pytest
import torch
from runner_support import drain

from demi.model.engine import LocalModel
from demi.model.errors import DemiUserError
from demi.model.generate import CancelToken, GenerationRequest, Run, Sampling, generate

transformers = pytest.importorskip("transformers")
PROMPT = "def read_config(path: str) -> dict:\n    "


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints):
    return tiny_checkpoints("llama")


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def lm(model_dir) -> LocalModel:
    return LocalModel.load(str(model_dir))


@pytest.fixture(scope="module")
def prompt_ids(lm) -> list[int]:
    ids = lm.encode(PROMPT)
    assert len(ids) > 5
    return ids


def _hf_generate(hf, prompt: list[int], n: int, **kwargs) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, pad_token_id=0, eos_token_id=None, **kwargs)
    return out[0, len(prompt) :].tolist()


def _run(lm: LocalModel, prompt, **kwargs):
    """(streamed pieces, Completion) through the `stream` generator protocol."""
    it, pieces = lm.stream(prompt, **kwargs), []
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as done:
            return pieces, done.value


# --- parity with transformers -----------------------------------------------------------------


def test_repetition_penalty_greedy_matches_transformers(lm, hf, prompt_ids):
    ref = _hf_generate(hf, prompt_ids, 32, do_sample=False, repetition_penalty=1.3)
    got = list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(repetition_penalty=1.3))))
    assert got == ref
    plain = list(generate(lm.model, GenerationRequest(prompt_ids, 32)))
    assert plain != got  # the penalty really changed the output
    assert len(set(got)) > len(set(plain))


SAMPLING_CASES = [
    dict(temperature=0.8, top_k=50, top_p=0.9),
    dict(temperature=1.3, top_k=0, top_p=0.95, repetition_penalty=1.2),
    dict(temperature=1.0, top_k=20, top_p=1.0),
]


@pytest.mark.parametrize("kw", SAMPLING_CASES, ids=lambda kw: "-".join(f"{k}{v}" for k, v in kw.items()))
def test_sampling_matches_transformers_with_the_same_global_seed(lm, hf, prompt_ids, kw):
    """Same processor order (penalty, temperature, top-k, top-p), softmax in fp32 and one
    `torch.multinomial` draw per token from the global RNG: the tokens are identical."""
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        ref = _hf_generate(hf, prompt_ids, 32, do_sample=True, **kw)
        torch.manual_seed(seed)
        got = list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(**kw))))
        assert got == ref, (seed, kw)


def test_transformers_samples_with_an_implicit_top_k_of_50(lm, hf, prompt_ids):
    """transformers fills in top_k=50 when sampling without one; Demi's top_k defaults to 0 (off),
    like vLLM and the OpenAI API. So HF's `do_sample=True, temperature=T` is Demi's
    `Sampling(temperature=T, top_k=50)`, and differs from `Sampling(temperature=T)`."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        ref = _hf_generate(hf, prompt_ids, 32, do_sample=True, temperature=1.5)
        torch.manual_seed(seed)
        with_k = list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(temperature=1.5, top_k=50))))
        torch.manual_seed(seed)
        without = list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(temperature=1.5))))
        assert with_k == ref
        assert without != ref


def test_top_k_and_top_p_change_what_is_sampled(lm, prompt_ids):
    """The parity above is not trivial: the filters do change the draws."""

    def draw(**kw):
        torch.manual_seed(3)
        return list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(temperature=1.0, **kw))))

    plain = draw()
    assert draw(top_k=5) != plain
    assert draw(top_p=0.5) != plain


# --- sampling behaviour -----------------------------------------------------------------------


def test_seed_is_reproducible_and_leaves_the_global_rng_alone(lm, prompt_ids):
    def draw(seed: int) -> list[int]:
        return list(generate(lm.model, GenerationRequest(prompt_ids, 24, Sampling(temperature=1.5, seed=seed))))

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = draw(7), draw(7), draw(8)
    assert torch.equal(before, torch.get_rng_state())
    assert a == b
    assert a != c


def test_top_k_1_is_greedy(lm, prompt_ids):
    greedy = list(generate(lm.model, GenerationRequest(prompt_ids, 32)))
    torch.manual_seed(0)
    assert list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(temperature=0.8, top_k=1)))) == greedy
    assert (
        list(generate(lm.model, GenerationRequest(prompt_ids, 32, Sampling(temperature=5.0, top_k=1, seed=4))))
        == greedy
    )


@pytest.mark.parametrize(
    "kw",
    [dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(repetition_penalty=0.0)],
    ids=str,
)
def test_invalid_sampling_values_are_user_errors(kw):
    with pytest.raises(DemiUserError) as ei:
        Sampling(**kw)
    assert "\n" not in str(ei.value) and str(ei.value)


def test_negative_max_new_tokens_is_a_user_error(lm):
    with pytest.raises(DemiUserError):
        _run(lm, PROMPT, max_new_tokens=-1)


# --- stop conditions ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def greedy_full(lm, prompt_ids):
    """48 greedy tokens with nothing stopping them, and their text."""
    pieces, c = _run(lm, prompt_ids, max_new_tokens=48, stop_ids=set())
    assert c.finish_reason == "length" and c.completion_tokens == 48
    return c


def test_stop_token_ends_generation(lm, prompt_ids, greedy_full):
    ids = greedy_full.token_ids
    stop = ids[6]
    first = ids.index(stop)
    pieces, c = _run(lm, prompt_ids, max_new_tokens=48, stop_ids={stop})
    assert c.finish_reason == "stop"
    assert c.token_ids == ids[: first + 1]
    assert c.text == lm.tokenizer.decode(ids[:first])  # the stop token's own text is not output
    assert "".join(pieces) == c.text


def test_eos_ids_stop_by_default(lm, prompt_ids, greedy_full, monkeypatch):
    """Without `stop_ids`, the tokenizer's EOS and config.json's eos_token_id both stop."""
    assert lm.tokenizer.eos_token_ids == [0] and 0 in lm.stop_ids  # <|endoftext|>
    ids = greedy_full.token_ids
    stop = ids[9]
    monkeypatch.setattr(lm.model.config, "eos_token_id", [stop])
    assert lm.stop_ids == {0, stop}
    pieces, c = _run(lm, prompt_ids, max_new_tokens=48)
    assert c.finish_reason == "stop" and c.token_ids == ids[: ids.index(stop) + 1]


def _stop_string(text: str) -> tuple[str, int]:
    """A 4-character piece from the middle of `text`, at its first occurrence."""
    for k in range(len(text) // 2, len(text) - 4):
        sub = text[k : k + 4]
        if text.find(sub) == k and "\ufffd" not in sub and sub.strip():
            return sub, k
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_is_cut_and_never_streamed(lm, prompt_ids, greedy_full):
    full = greedy_full.text
    stop, at = _stop_string(full)
    pieces, c = _run(lm, prompt_ids, max_new_tokens=48, stop_ids=set(), stop=["\x01never\x02", stop])
    assert c.finish_reason == "stop"
    assert c.text == full[:at]
    assert stop not in c.text
    assert "".join(pieces) == c.text  # nothing past the cut, not even a held-back prefix, was sent
    assert len(pieces) > 1
    assert c.completion_tokens < 48


def test_partial_stop_string_is_held_back_then_released(lm, prompt_ids, greedy_full):
    """A stop string whose first characters appear but which never completes: the held-back
    text comes out in the end, so the stream still adds up to everything."""
    full = greedy_full.text
    stop, _ = _stop_string(full)
    pieces, c = _run(lm, prompt_ids, max_new_tokens=48, stop_ids=set(), stop=[stop[:3] + "\x00"])
    assert c.finish_reason == "length"
    assert c.text == full == "".join(pieces)


def test_time_budget(lm, prompt_ids):
    pieces, c = _run(lm, prompt_ids, max_new_tokens=100, stop_ids=set(), time_budget=1e-6)
    assert c.finish_reason == "time"
    assert c.completion_tokens < 100
    assert "".join(pieces) == c.text


def test_cancel_from_the_callback(lm, prompt_ids):
    cancel, seen = CancelToken(), []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.cancel()

    c = lm.complete(prompt_ids, on_text=on_text, max_new_tokens=64, stop_ids=set(), cancel=cancel)
    assert c.finish_reason == "cancelled"
    assert 3 <= c.completion_tokens < 64
    assert len(seen) >= 3 and "".join(seen) == c.text


def test_cancel_from_another_thread(lm, prompt_ids):
    cancel, started, done = CancelToken(), threading.Event(), threading.Event()

    def canceller() -> None:
        started.wait(10)
        cancel.cancel()
        done.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    pieces = []

    def on_text(piece: str) -> None:  # after the 2nd piece, wait until the other thread cancelled
        pieces.append(piece)
        if len(pieces) == 2:
            started.set()
            assert done.wait(10)

    c = lm.complete(prompt_ids, on_text=on_text, max_new_tokens=64, stop_ids=set(), cancel=cancel)
    thread.join(10)
    assert c.finish_reason == "cancelled"
    assert c.completion_tokens < 64
    assert "".join(pieces) == c.text


def test_generate_returns_why_it_ended(lm, prompt_ids, greedy_full):
    """The reason is `generate`'s return value: a stop token (yielded last), the length, the clock."""
    ids = greedy_full.token_ids
    stop = ids[5]
    got, reason = drain(generate(lm.model, GenerationRequest(prompt_ids, 48, stop_ids={stop})))
    assert reason == "stop" and got == ids[: ids.index(stop) + 1]
    assert drain(generate(lm.model, GenerationRequest(prompt_ids, 7))) == (ids[:7], "length")
    got, reason = drain(generate(lm.model, GenerationRequest(prompt_ids, 48, time_budget=1e-9)))
    assert reason == "time" and got == []
    with pytest.raises(DemiUserError):  # the core takes token ids; LocalModel.run encodes text
        next(generate(lm.model, GenerationRequest(PROMPT, 4)))


def test_max_new_tokens_zero_yields_nothing(lm, prompt_ids):
    assert list(generate(lm.model, GenerationRequest(prompt_ids, 0))) == []
    pieces, c = _run(lm, prompt_ids, max_new_tokens=0)
    assert pieces == [] and c.text == "" and c.token_ids == []
    assert c.finish_reason == "length" and c.prompt_tokens == len(prompt_ids)


# --- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_streamed_pieces_add_up_to_decode(lm, seed):
    """Greedy and hot sampling (which picks byte tokens that split UTF-8 characters, and ids
    the tokenizer does not have): pieces == text == tokenizer.decode(token_ids)."""
    sampling = Sampling() if seed is None else Sampling(temperature=2.0, seed=seed)
    pieces, c = _run(lm, PROMPT, max_new_tokens=40, sampling=sampling, stop_ids=set())
    assert c.completion_tokens == 40 and c.finish_reason == "length"
    assert "".join(pieces) == c.text == lm.tokenizer.decode(c.token_ids)
    # One yield per generated token (the stop token excepted): empty pieces are ticks for
    # schedulers while text is held back, so no single step runs many tokens.
    assert len(pieces) >= c.completion_tokens - 1


def test_tiny_temperatures_are_greedy_and_tiny_penalties_are_refused():
    """A temperature of 1e-40 overflowed the logits to inf (NaN probabilities); it is greedy now.
    A repetition penalty of 1e-320 did the same through the division: refused with one line."""
    import pytest
    import torch

    from demi.model.errors import DemiUserError
    from demi.model.generate import Sampling, sample_next

    logits = torch.tensor([[1.0, 3.0, 2.0]])
    assert Sampling(temperature=1e-40).greedy
    assert int(sample_next(logits, Sampling(temperature=1e-40), None)) == 1
    hot = sample_next(logits * 1e30, Sampling(temperature=1e-4, seed=0), torch.Generator().manual_seed(0))
    assert int(hot) == 1  # huge logits over a small temperature: no overflow, the top token
    with pytest.raises(DemiUserError, match="repetition_penalty"):
        Sampling(repetition_penalty=1e-320)


# -- prefill padding and short cached heads ---------------------------------------------------------


def test_padded_rows_rounds_up_to_few_sizes_and_never_past_the_cache():
    from demi.model.generate import max_padding, padded_rows

    assert [padded_rows(n, 4096, 63) for n in (1, 8, 9, 16, 17, 250, 257, 1300, 1342)] == [
        1,
        8,
        16,
        16,
        32,
        256,
        320,
        1344,
        1344,
    ]
    assert padded_rows(1300, 1310, 63) == 1300  # no room for the padding: the exact length
    sizes = {padded_rows(n, 4096, 63) for n in range(1000, 1500)}
    assert len(sizes) == 9  # 500 prompt lengths, 9 kernels to build
    # A large model pads only what is cheap against a kernel build: a 0.5B model in effect never.
    assert max_padding(12_600_000) >= 63 and max_padding(494_000_000) < 15
    assert padded_rows(1300, 4096, 2) == 1300 and padded_rows(1343, 4096, 2) == 1344


@pytest.mark.parametrize("count", [13, 300, 1000])
def test_padded_prefill_gives_the_unpadded_logits_and_cache(lm, count):
    """The padding tokens come after the real ones: logits, keys and values of every real position
    are the same as an exact-length forward's, and the cache says how many are valid."""
    from demi.model.decoder import KVCache
    from demi.model.generate import padded_rows, prefill

    assert padded_rows(count, 4096, 63) > count
    torch.manual_seed(count)
    tokens = torch.randint(0, lm.model.config.vocab_size, (1, count))
    cfg = lm.model.config
    padded, exact = KVCache(cfg, 2048), KVCache(cfg, 2048)
    with torch.inference_mode():
        got = prefill(lm.model, tokens, 0, padded, max_pad=63)
        want = lm.model(tokens, start=0, cache=exact, last_only=True)[:, -1].float()
    assert padded.length == count == exact.length
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for layer in range(cfg.num_hidden_layers):
        torch.testing.assert_close(padded.k[layer][:, :, :count], exact.k[layer][:, :, :count], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(padded.v[layer][:, :, :count], exact.v[layer][:, :, :count], rtol=1e-4, atol=1e-5)


def test_a_short_cached_head_is_recomputed_and_a_long_one_reused():
    from demi.model.generate import worth_reusing

    assert worth_reusing(7, 1342) == 0  # a FIM prompt whose body changed: one causal prefill
    assert worth_reusing(7, 40) == 7  # most of a short prompt is cached: keep it
    assert worth_reusing(1300, 1342) == 1300  # typing on: reuse everything
    assert worth_reusing(65, 5000) == 65  # more than RECOMPUTE_REUSE_MAX: always kept


def test_greedy_output_is_the_same_with_and_without_a_reused_head(lm, prompt_ids):
    """The second request shares a short head with the first; whether it is reused or recomputed,
    the tokens are those of a cold run."""
    cold = list(generate(lm.model, GenerationRequest(prompt_ids + [7] * 40, 12)))
    lm.prefix_cache.clear()
    other = prompt_ids[:3] + [9] * 50
    slot, _, _ = lm.prefix_cache.acquire(other)
    list(generate(lm.model, GenerationRequest(other, 1), slot.cache))
    lm.prefix_cache.release(slot, other)
    slot, reuse, _ = lm.prefix_cache.acquire(prompt_ids + [7] * 40)
    try:
        assert reuse == 3
        warm = list(
            generate(
                lm.model,
                GenerationRequest(prompt_ids + [7] * 40, 12),
                slot.cache,
                Run(prompt_ids + [7] * 40, reuse=reuse),
            )
        )
    finally:
        lm.prefix_cache.release(slot, prompt_ids + [7] * 40)
    assert warm == cold


def test_warm_up_runs_each_padded_size_once_within_its_budget(lm, prompt_ids, greedy_full, monkeypatch):
    import demi.model.engine as engine
    from demi.model.generate import max_padding

    # padding and warm-up serve models whose prefill runs bf16 through oneDNN; this fp32 model is
    # given that model's padding to test the mechanism
    assert lm.max_pad == (max_padding(lm.params) if engine._builds_kernels_per_shape(lm.model) else 0)
    monkeypatch.setattr(lm, "max_pad", max_padding(lm.params))
    slots = [list(s.tokens) for s in lm.prefix_cache.slots]
    assert lm.warm_up(range(100, 200)) == [112, 128, 144, 160, 176, 192, 208]
    assert [list(s.tokens) for s in lm.prefix_cache.slots] == slots  # a scratch cache, not a slot
    assert list(generate(lm.model, GenerationRequest(prompt_ids, 48))) == greedy_full.token_ids
    monkeypatch.setattr(engine, "WARM_UP_FLOPS", 2 * engine._param_count(lm.model) * 300)
    assert lm.warm_up(range(100, 200)) == [128, 144]  # nearest the middle (~150) first, while they fit
    monkeypatch.setattr(lm, "max_pad", 2)
    assert lm.warm_up(range(100, 200)) == []  # a model that does not pad has no few sizes to warm
