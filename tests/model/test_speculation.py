"""Speculative decoding from the prompt (prompt lookup): the n-gram drafter, the acceptance rule,
and the decode loop against plain decoding on every family's tiny random checkpoint.

Greedy output must be the plain loop's token for token (with drafts actually accepted); stop
tokens, max_new_tokens, cancellation, the repetition penalty and token healing behave as in the
plain loop; sampled tokens follow the model's distribution.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import FAMILIES

from demi.model.decoder import KVCache
from demi.model.engine import LocalModel, drain
from demi.model.generate import CancelToken, GenerationRequest, Run, Sampling, accept_draft, generate, processed_logits
from demi.model.lookup import PromptLookup

# --- the drafter ----------------------------------------------------------------------------------


def test_lookup_proposes_what_followed_the_latest_longest_match():
    # "1 2 3" occurs twice before the end; the latest is followed by 7 8
    look = PromptLookup([1, 2, 3, 4, 5, 1, 2, 3, 7, 8, 9, 0, 2, 3])
    assert look.match() == (8, 2)  # "2 3" (no earlier "0 2 3"), most recent occurrence ends at 8
    assert look.propose(2) == [7, 8]
    assert look.propose(4) == [7, 8, 9, 0]
    assert look.propose(0) == []


def test_lookup_prefers_longer_ngrams():
    # the bigram "5 6" last occurred before 9; the unigram "6" last occurred before 1
    look = PromptLookup([5, 6, 9, 6, 1, 5, 6], max_ngram=3)
    assert look.propose(1) == [9]
    look = PromptLookup([5, 6, 9, 6, 1, 5, 6], max_ngram=1)
    assert look.propose(1) == [1]


def test_lookup_never_matches_the_suffix_itself_and_handles_short_texts():
    assert PromptLookup([]).propose(3) == []
    assert PromptLookup([4]).propose(3) == []
    assert PromptLookup([1, 2, 3]).propose(3) == []  # nothing repeats
    assert PromptLookup([1, 2, 3], min_ngram=2).match() is None


def test_lookup_continues_a_repetition_past_the_end():
    # a period-2 loop: the draft keeps repeating it instead of stopping at the text's end
    assert PromptLookup([7, 1, 2, 1, 2]).propose(5) == [1, 2, 1, 2, 1]
    assert PromptLookup([3, 3]).propose(4) == [3, 3, 3, 3]


def test_lookup_follows_extended_text():
    look = PromptLookup([1, 2, 3, 9])
    assert look.propose(2) == []
    look.extend([1, 2])
    assert look.propose(2) == [3, 9]
    look.extend([4])  # "1 2 4": now only the unigram "4" could match, and it has not occurred before
    assert look.propose(2) == []


def test_lookup_rejects_bad_ngram_bounds():
    with pytest.raises(ValueError):
        PromptLookup([], max_ngram=1, min_ngram=2)


# --- the acceptance rule --------------------------------------------------------------------------

LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])


@pytest.mark.parametrize(
    "sampling",
    [Sampling(temperature=1.0), Sampling(temperature=0.7, top_k=4), Sampling(temperature=1.3, top_p=0.8)],
    ids=["t1", "t0.7-topk4", "t1.3-topp0.8"],
)
@pytest.mark.parametrize("draft", [0, 2, 5])
def test_accept_draft_keeps_the_models_distribution(sampling, draft):
    """Accept-or-resample with a one-hot draft yields tokens distributed as p, whatever the draft."""
    p = processed_logits(LOGITS, sampling).softmax(-1)
    gen = torch.Generator().manual_seed(1234 + draft)
    n = 6000
    counts = torch.zeros(len(LOGITS))
    accepted = 0
    for _ in range(n):
        ok, token = accept_draft(LOGITS, draft, sampling, gen)
        assert ok == (token == draft)
        counts[token] += 1
        accepted += ok
    freq = counts / n
    bound = 4.5 * (p * (1 - p) / n).sqrt() + 1e-3
    assert bool(((freq - p).abs() <= bound).all()), (freq, p)
    assert abs(accepted / n - float(p[draft])) <= 4.5 * (float(p[draft] * (1 - p[draft])) / n) ** 0.5 + 1e-3
    assert counts[p == 0].sum() == 0  # never a token top-k/top-p removed


def test_accept_draft_greedy_is_the_argmax():
    assert accept_draft(LOGITS, 0, Sampling(), None) == (True, 0)
    assert accept_draft(LOGITS, 3, Sampling(), None) == (False, 0)


def test_accept_draft_with_all_the_mass_on_the_draft_accepts():
    logits = torch.tensor([0.0, 50.0, -50.0])
    assert accept_draft(logits, 1, Sampling(temperature=0.5, top_k=1), torch.Generator().manual_seed(0)) == (True, 1)


# --- the decode loop on every family --------------------------------------------------------------


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tiny_checkpoints):
    return LocalModel.load(str(tiny_checkpoints(request.param))).model


def _repeated_prompt(vocab: int, seed: int = 3) -> list[int]:
    """Text that repeats (a block of random tokens, three times) so drafts have something to match."""
    block = torch.randint(3, min(vocab, 500), (12,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [1, *block, *block, *block[:6], *block]


@pytest.fixture(scope="module")
def copy_prompt(family_model) -> list[int]:
    """The repeated prompt plus the first 100 tokens the model writes after it. A random model does
    not copy its prompt, but its greedy output falls into loops: with 100 of them in the prompt, the
    rest of the answer repeats what the prompt holds, so drafts are accepted."""
    prompt = _repeated_prompt(family_model.config.vocab_size)
    return prompt + _gen(family_model, prompt, max_new_tokens=100)[0]


def _gen(model, prompt: list[int], **fields) -> tuple[list[int], str, Run]:
    request = GenerationRequest(prompt, **fields)
    run = Run.of(request)
    out: list[int] = []
    stream = generate(model, request, run=run)
    while True:
        try:
            token = next(stream)
        except StopIteration as done:
            return out, done.value, run
        if token is not None:
            out.append(token)


@pytest.mark.parametrize("k", [1, 4, 8])
@pytest.mark.parametrize("repeated", [False, True], ids=["prompt", "loop"])
def test_greedy_output_is_identical_with_speculation(family_model, copy_prompt, k, repeated):
    prompt = copy_prompt if repeated else _repeated_prompt(family_model.config.vocab_size)
    plain, reason, plain_run = _gen(family_model, prompt, max_new_tokens=48)
    spec, spec_reason, run = _gen(family_model, prompt, max_new_tokens=48, speculate=k)
    assert spec == plain and spec_reason == reason == "length"
    assert plain_run.speculation() is None
    stats = run.speculation()
    assert stats is not None and stats["k"] == k
    if repeated and k > 1:
        assert stats["accepted"] > 0, stats  # the drafts were used, not only checked
    assert stats["accepted"] <= stats["drafted"]
    assert stats["acceptance"] == (round(stats["accepted"] / stats["drafted"], 3) if stats["drafted"] else 0.0)
    # each step feeds one token and yields its accepted drafts, then the next token (unless the end came first)
    assert stats["steps"] + stats["accepted"] in (len(plain) - 1, len(plain))


def test_verifying_several_tokens_at_an_offset_matches_one_at_a_time(family_model):
    """The decoder's forward of [token, drafts] at a cache offset (the causal mask with an offset,
    the sliding window) gives the logits single-token decode steps give."""
    ids = torch.tensor([_repeated_prompt(family_model.config.vocab_size)])
    cfg = family_model.config
    one, many = KVCache(cfg, 64), KVCache(cfg, 64)
    with torch.inference_mode():
        family_model(ids[:, :20], 0, one)
        family_model(ids[:, :20], 0, many)
        steps = torch.cat([family_model(ids[:, i : i + 1], i, one) for i in range(20, 29)], dim=1)
        block = family_model(ids[:, 20:29], 20, many)
    assert (steps - block).abs().max().item() < 1e-4


def test_stop_tokens_inside_an_accepted_run_end_it(family_model):
    prompt = _repeated_prompt(family_model.config.vocab_size)
    plain, _, _ = _gen(family_model, prompt, max_new_tokens=40)
    checked = 0
    for stop in sorted(set(plain[1:])):
        want, want_reason, _ = _gen(family_model, prompt, max_new_tokens=40, stop_ids={stop})
        got, reason, _ = _gen(family_model, prompt, max_new_tokens=40, stop_ids={stop}, speculate=6)
        assert got == want and reason == want_reason == "stop" and got[-1] == stop
        checked += 1
    assert checked > 0


def test_max_new_tokens_is_never_exceeded(family_model):
    prompt = _repeated_prompt(family_model.config.vocab_size)
    plain, _, _ = _gen(family_model, prompt, max_new_tokens=30)
    for n in (0, 1, 2, 3, 5, 8, 13, 29):
        got, reason, run = _gen(family_model, prompt, max_new_tokens=n, speculate=8)
        assert got == plain[:n] and reason == "length"


def test_no_speculation_with_a_repetition_penalty(family_model):
    prompt = _repeated_prompt(family_model.config.vocab_size)
    s = Sampling(repetition_penalty=1.3)
    plain, _, _ = _gen(family_model, prompt, max_new_tokens=24, sampling=s)
    got, _, run = _gen(family_model, prompt, max_new_tokens=24, sampling=Sampling(repetition_penalty=1.3), speculate=8)
    assert got == plain and run.speculation() is None


def test_sampled_generation_with_a_seed_is_reproducible(family_model):
    prompt = _repeated_prompt(family_model.config.vocab_size)
    a, _, _ = _gen(family_model, prompt, max_new_tokens=32, sampling=Sampling(temperature=0.8, seed=5), speculate=6)
    b, _, _ = _gen(family_model, prompt, max_new_tokens=32, sampling=Sampling(temperature=0.8, seed=5), speculate=6)
    assert a == b and len(a) == 32


# --- through LocalModel: cancellation, healing, the prefix cache, Completion.extra ----------------


@pytest.fixture(scope="module")
def lm(tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints("llama")))


PROMPT = "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add("


def test_local_model_reports_speculation_and_keeps_the_text(lm):
    plain = drain(lm.stream(PROMPT, max_new_tokens=40, stop_ids=set()))
    spec = drain(lm.stream(PROMPT, max_new_tokens=40, stop_ids=set(), speculate=8))
    assert spec.text == plain.text and spec.token_ids == plain.token_ids
    assert plain.extra["speculation"] is None
    stats = spec.extra["speculation"]
    assert set(stats) == {"k", "drafted", "accepted", "acceptance", "steps"} and stats["k"] == 8
    # the prefix cache holds exactly the kept tokens: a follow-up from the answer reuses them
    again = drain(lm.stream(PROMPT, max_new_tokens=40, stop_ids=set(), speculate=8))
    assert again.token_ids == plain.token_ids and again.extra["cached_tokens"] > 0


def test_healing_then_speculation_matches_plain(lm):
    plain = drain(lm.stream(PROMPT, max_new_tokens=24, stop_ids=set(), heal="    "))
    spec = drain(lm.stream(PROMPT, max_new_tokens=24, stop_ids=set(), heal="    ", speculate=8))
    assert spec.token_ids == plain.token_ids and spec.text == plain.text


def test_cancel_lands_within_one_step(lm):
    token = CancelToken()
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        token.cancel()

    result = lm.complete(PROMPT, on_text=on_text, max_new_tokens=64, stop_ids=set(), speculate=8, cancel=token)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens <= 1 + 8  # the step in flight finishes, nothing after it


def test_time_budget_ends_a_speculative_run(lm):
    result = lm.complete(PROMPT, max_new_tokens=200, stop_ids=set(), speculate=8, time_budget=1e-9)
    assert result.finish_reason == "time"


def test_quantized_model_checks_at_most_the_decode_kernels_rows_and_keeps_greedy_output(tiny_checkpoints):
    """int8 on a CPU: through the layer-by-layer path more rows than DECODE_ROWS would leave the decode
    kernel (different rounding), so k is capped there; the one-call decode stack takes any number of
    rows as lone steps, so with it k is what was asked. Either way the output is the plain loop's."""
    from demi.model.quantize import DECODE_ROWS

    q = LocalModel.load(str(tiny_checkpoints("llama")), quant="int8").model
    prompt = _repeated_prompt(q.config.vocab_size)
    prompt += _gen(q, prompt, max_new_tokens=100)[0]
    plain, _, _ = _gen(q, prompt, max_new_tokens=64)
    stack = q.decode_stack
    if stack is not None:
        spec, _, run = _gen(q, prompt, max_new_tokens=64, speculate=16)
        assert spec == plain
        assert run.speculation()["k"] == 16
    q.decode_stack = None
    spec, _, run = _gen(q, prompt, max_new_tokens=64, speculate=16)
    q.decode_stack = stack
    assert spec == plain
    assert run.speculation()["k"] == DECODE_ROWS - 1


def test_draft_depth_adapts_to_what_was_accepted():
    """A rejection shortens the next draft to what was kept plus one; a fully kept draft doubles it,
    never past k nor below one."""
    from demi.model.generate import next_depth

    assert next_depth(8, 2, 8, k=8) == 3
    assert next_depth(8, 0, 8, k=8) == 1
    assert next_depth(3, 3, 3, k=8) == 6
    assert next_depth(6, 6, 6, k=8) == 8
    assert next_depth(1, 1, 1, k=16) == 2
    assert next_depth(4, 2, 2, k=8) == 8  # a draft cut short by the match (2 of 2 kept) counts as kept
