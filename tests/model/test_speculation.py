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

from demi.model.check_cost import PRIOR, CheckCost, Price, check_cost
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


# Checks priced at nothing, so every draft up to k is checked: on these tiny random models a lone
# step is so short that a check's fixed costs make drafting a loss, and the engine would rightly not
# draft; the loop's correctness with drafts is what these tests are for.
FREE = Price(fixed=0.0, row=0.0)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tiny_checkpoints):
    model = LocalModel.load(str(tiny_checkpoints(request.param))).model
    check_cost(model).pin(FREE)
    return model


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


def test_lookup_checks_only_drafts_worth_their_price():
    """With a price, the j-th draft is proposed while p^j is above a draft's price, and none when what
    they would save does not pay for the check's fixed part; a weak (one-token) match is not looked
    up at all when its drafts are not worth a row."""
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]  # "1 2 3" matched: 4 5 6 7 8 follow
    look = PromptLookup(text, price=Price(fixed=0.0, row=0.5))
    # p = 0.85 (three-token prior): 0.85, 0.72, 0.61, 0.52 > 0.5; 0.44 is not
    assert look.acceptance(3) == pytest.approx(0.85)
    assert look.worth_checking(3, 8) == 4 and look.propose(8) == [4, 5, 6, 7]
    assert look.worth_checking(3, 2) == 2
    # the fixed part: 0.85 + 0.72 + 0.61 + 0.52 = 2.70 saved against fixed + 4 * 0.5
    assert PromptLookup(text, price=Price(fixed=0.6, row=0.5)).worth_checking(3, 8) == 4
    assert PromptLookup(text, price=Price(fixed=0.8, row=0.5)).worth_checking(3, 8) == 0
    assert PromptLookup(text, price=Price(fixed=0.0, row=0.9)).propose(8) == []
    # no price: every draft, as before
    assert PromptLookup(text).propose(8) == [4, 5, 6, 7, 8, 9, 1, 2]
    # a one-token match (prior 0.15) is not worth a row of 0.3; a three-token one is
    weak = PromptLookup([5, 9, 6, 1, 7, 6], price=Price(fixed=0.0, row=0.3))
    assert weak.propose(4) == [] and 1 not in weak._index
    assert PromptLookup([5, 9, 6, 1, 7, 6], price=Price(fixed=0.0, row=0.1)).propose(1) == [1]


def test_lookup_learns_acceptance_from_what_the_model_kept():
    """`settle` counts each kept draft and the first rejected one as checked: a match length whose
    drafts keep failing stops being drafted, one whose drafts are kept gets longer drafts."""
    text = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3]
    look = PromptLookup(text, price=Price(fixed=0.0, row=0.5))
    for _ in range(3):
        assert look.propose(8)
        look.settle(4, 0)  # rejected at the first draft: one checked, none kept
    assert look.acceptance(3) == pytest.approx(0.85 * 4 / 7)  # prior 3.4 of 4, then 0 of 3
    assert look.propose(8) == []  # below the row's price now
    look.settle(4, 4)  # no proposal in flight: nothing counted
    assert look.acceptance(3) == pytest.approx(3.4 / 7)
    good = PromptLookup(text, price=Price(fixed=0.0, row=0.5))
    for _ in range(5):
        assert good.propose(8)
        good.settle(4, 4)
    assert good.acceptance(3) == pytest.approx((3.4 + 20) / 24)
    assert good.worth_checking(3, 16) > 4


def test_check_cost_fits_a_fixed_part_and_a_part_per_draft():
    cost = CheckCost()
    assert cost.price == PRIOR  # nothing measured yet
    cost.check(3, 5.0)  # no lone step yet: a check alone says nothing
    assert cost.price == PRIOR
    cost.lone(1.0)
    cost.check(2, 1.5)  # one size so far: all of it per draft
    assert cost.price == Price(fixed=0.0, row=0.5)
    for drafts in (1, 4, 2, 8, 1, 4):  # a check of d drafts: 0.2 + 0.25 d steps more than a lone step
        cost.check(1 + drafts, 1.0 + 0.2 + 0.25 * drafts)
    price = cost.price
    assert price.row == pytest.approx(0.25, abs=0.03) and price.fixed == pytest.approx(0.2, abs=0.08)
    slow = CheckCost()
    slow.lone(1.0)
    slow.check(3, 50.0)  # a disturbed timing: the price is bounded, so drafting can recover
    assert slow.price.row <= 0.6 and slow.price.fixed == 0.0
    slow.pin(Price(0.0, 0.05))
    assert slow.price == Price(0.0, 0.05)
    slow.pin(None)
    assert slow.price.row <= 0.6


def test_engine_measures_its_checks_and_does_not_draft_weak_matches(tiny_checkpoints):
    """A real model's loop times its lone steps and checks (the price it weighs drafts with comes from
    them), and under that price one-token matches, whose drafts a small model rarely keeps, are not
    checked: every draft comes from a longer match."""
    model = LocalModel.load(str(tiny_checkpoints("qwen2"))).model
    prompt = _repeated_prompt(model.config.vocab_size)
    prompt += _gen(model, prompt, max_new_tokens=100)[0]
    cost = check_cost(model)
    cost.pin(Price(fixed=0.0, row=0.3))
    plain, _, _ = _gen(model, prompt, max_new_tokens=48)
    spec, _, run = _gen(model, prompt, max_new_tokens=48, speculate=8)
    assert spec == plain and run.drafted > 0
    assert cost.step is not None and cost.step > 0 and cost._sums[0] > 0  # both kinds of pass timed
    seen: list[int] = []

    class Watching(PromptLookup):
        def propose(self, k: int) -> list[int]:
            drafts = super().propose(k)
            if drafts:
                seen.append(self._last_n)
            return drafts

    import demi.model.generate as gen_module

    saved = gen_module.PromptLookup
    gen_module.PromptLookup = Watching  # type: ignore[misc]
    try:
        again, _, _ = _gen(model, prompt, max_new_tokens=48, speculate=8)
    finally:
        gen_module.PromptLookup = saved  # type: ignore[misc]
    assert again == plain and seen and set(seen) <= {2, 3}
    cost.pin(None)
