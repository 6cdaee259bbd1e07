"""Token generation in the manner of gpt-fast's generate.py: `prefill` the prompt into a
preallocated KV cache, `decode_one_token` at a time after it, and `generate`, which runs the two for
one request and returns why it stopped.

`generate` yields token ids as they come so callers can stream; it checks the request's
cancellation token and deadline every step, and stops on stop tokens. Sampling follows Hugging
Face's order (repetition penalty, temperature, top-k, top-p) so greedy and seeded runs can be
compared token for token.

With `GenerationRequest.speculate` = k > 0, decoding is speculative from the prompt (prompt lookup
decoding): `lookup.PromptLookup` drafts up to k tokens from an earlier occurrence of the last few
tokens, one forward pass checks the token just chosen plus the drafts (`_decode_speculative`), and
the longest run the model agrees with is kept, so one step yields 1 to k+1 tokens. Greedy output is
the plain loop's, token for token; sampled output follows the same distribution (`accept_draft`).
No speculation with a repetition penalty (each accepted token would change the next row's
penalty), nor while a token-healing constraint is still spelling its text.

With `Run.batch` (continuous batching, see batch.py), `generate` does not run its one-token decode
steps itself: it yields a `batch.DecodeStep` and the driver sends back that step's logits, computed
together with other sequences' steps (`batch.decode_batch`). Prefill and speculative verification
passes stay the run's own. Without it (the default) the loop is the plain one.

With `GenerationRequest.mix` (a caller's priors, e.g. the session layer's workspace n-gram cache),
each next-token distribution is mixed with the distributions the hook returns for the tokens made
so far (`apply_priors`: p = (1 - w) p_model + w p_prior), before sampling or argmax. A request with
a hook does not speculate (drafts would be checked against the model alone); batch mode applies it
as the plain loop does. A hook that returns nothing leaves the logits as they were, bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence, Set
from dataclasses import dataclass, field

import torch
from torch import Tensor

from demi.model.batch import DecodeStep, decode_rows, head_rows
from demi.model.cancel import CancelToken
from demi.model.check_cost import check_cost
from demi.model.decoder import KVCache, Transformer
from demi.model.errors import ContextOverflowError, DemiUserError
from demi.model.healing import ForcedPrefix
from demi.model.lookup import PromptLookup
from demi.model.quantize import DECODE_ROWS

MIN_TEMPERATURE = 1e-5  # below it sampling is greedy (as vLLM does)
# A prefill that starts after cached tokens needs an explicit mask, and SDPA with a mask runs at
# about half the speed of its causal kernel. A short cached head (a FIM prompt's first tokens, when
# the rest changed) is cheaper to compute again than to attend around.
RECOMPUTE_REUSE_MAX = 64


# oneDNN (torch's bf16 matmul on CPU) builds a kernel for every new row count, ~0.5-4 ms per
# weight shape, so a prefill of a length not seen before paid ~20 ms on demi-tiny. Prefill rows are
# padded up to a few bucket sizes; the padding tokens come after the real ones, so causal attention
# keeps them out of every real position, and their cache entries are overwritten by the decode.
# A larger model's padding costs more than the build it saves (a 0.5B model's cold 2,000-token
# prefill was 4% slower padded), so a model pads at most PAD_FLOPS of work: demi-tiny up to ~80
# tokens, a 0.5B model 2, so in effect never.
PAD_BUCKETS = ((8, 1), (256, 16), (1 << 30, 64))  # up to N tokens: round up to a multiple of M
PAD_FLOPS = 2e9


def max_padding(params: int) -> int:
    """Padding tokens worth their work for a model of `params` parameters."""
    return int(PAD_FLOPS // (2 * max(1, params)))


def padded_rows(count: int, room: int, max_pad: int) -> int:
    """Rows to run for `count` prompt tokens with `room` cache positions free from the start."""
    step = next(mult for limit, mult in PAD_BUCKETS if count <= limit)
    padded = -(-count // step) * step
    return padded if padded <= room and padded - count <= max_pad else count


def prefill(
    model: Transformer, tokens: Tensor, start: int, cache: KVCache, max_pad: int = 0, limit: int | None = None
) -> Tensor:
    """Logits [B, V] of the last of `tokens` at positions start.., written into `cache`; with
    `max_pad`, the rows are padded to a bucket size (see PAD_BUCKETS), never past position `limit`
    (rows there already hold keys and values: a shifted run, see prefix_cache.py)."""
    count = tokens.shape[1]
    rows = padded_rows(count, (cache.max_len if limit is None else limit) - start, max_pad)
    if rows > count:
        tokens = torch.cat([tokens, tokens[:, -1:].expand(-1, rows - count)], dim=1)
    hidden = model.hidden_states(tokens, start, cache)[:, count - 1 : count]
    cache.length = start + count
    return model.lm_head(hidden)[:, -1].float()


def prefill_spans(run: Run, step: int) -> list[tuple[int, int, int | None]]:
    """(start, end, padding limit) of each prefill pass: the prompt after its cached head in
    chunks of `step`, skipping the positions a shifted run already fills."""
    ids = run.ids
    start = worth_reusing(min(run.reuse, len(ids) - 1), len(ids))
    gaps: list[tuple[int, int, int | None]] = [(start, len(ids), None)]
    if run.shifted is not None and start == run.reuse:
        gaps = [(start, run.shifted.start, run.shifted.start), (run.shifted.stop, len(ids), None)]
    return [(lo, min(lo + step, end), limit) for begin, end, limit in gaps for lo in range(begin, end, step)]


def worth_reusing(reuse: int, prompt_len: int) -> int:
    """The cached tokens to keep: all of them, or none when they are few against what is new."""
    fresh = prompt_len - reuse
    return reuse if reuse > RECOMPUTE_REUSE_MAX or reuse * 8 >= fresh else 0


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty < 0.01:
            raise DemiUserError(
                "sampling needs temperature >= 0, 0 < top_p <= 1, top_k >= 0, repetition_penalty >= 0.01"
            )

    @property
    def greedy(self) -> bool:
        """Temperatures this small are greedy: dividing logits by them overflows to inf and NaN."""
        return self.temperature < MIN_TEMPERATURE


@dataclass(frozen=True)
class Prior:
    """A distribution over a few token ids to mix into the model's next-token distribution:
    p = (1 - weight) p_model + weight p_prior, applied only where the model's most likely token has
    a probability below `below` (1.0: always; lower: only where the model hesitates)."""

    ids: Sequence[int]
    probs: Sequence[float]  # over `ids`, summing to 1
    weight: float  # in [0, 1]
    below: float = 1.0


# A request's hook: the output's token ids so far -> the priors for the next token (empty: none).
Mix = Callable[[Sequence[int]], Sequence[Prior]]


@dataclass
class GenerationRequest:
    """Everything one generation needs, in one value: what the model runner queues and the
    engine runs (`LocalModel.run`)."""

    prompt: str | list[int]
    max_new_tokens: int = 256
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the answer)
    stop_ids: set[int] | None = None  # stop tokens; None: the model's end-of-sequence tokens
    heal: str = ""  # text cut off the prompt's end for token healing (see healing.py)
    cancel: CancelToken | None = None
    time_budget: float | None = None  # seconds from the start, then the answer ends ("time")
    add_special_tokens: bool = True
    speculate: int = 0  # draft tokens per step from prompt lookup (see `_decode_speculative`); 0 = off
    # reuse cached runs of at least this many tokens found later in the prompt, moved and re-rotated
    # (an approximation, see prefix_cache.py; for prefix-first FIM while typing); 0 = exact reuse only
    cache_shift: int = 0
    # priors mixed into each next-token distribution, from the tokens made so far (see `apply_priors`);
    # called on the model thread once per decoded token; a request with one does not speculate
    mix: Mix | None = None


@dataclass
class Run:
    """One generation in flight: its prompt's token ids, what its request resolved to, how the
    prompt is prefilled, and the tokens made so far (`generate` appends each before yielding it)."""

    ids: list[int]
    stop_ids: Set[int] = frozenset()
    deadline: float | None = None  # a time.monotonic() value; then the answer ends ("time")
    reuse: int = 0  # leading prompt tokens the cache already holds (kept when `worth_reusing`)
    chunk: int | None = None  # prefill this many prompt tokens at a time, yielding None in between
    max_pad: int = 0  # prefill rows may be padded by up to this many tokens (see PAD_BUCKETS)
    constraint: ForcedPrefix | None = None  # token healing: the first tokens spell its text
    started: float = field(default_factory=time.monotonic)
    tokens: list[int] = field(default_factory=list)
    shifted: range | None = None  # prompt positions the cache already holds, moved there (prefix_cache.py)
    # speculative decoding: the depth used (0: off), draft tokens checked and accepted, decode passes
    speculate: int = 0
    drafted: int = 0
    accepted: int = 0
    steps: int = 0
    batch: bool = False  # yield a DecodeStep for each one-token decode step (a batching driver runs it)

    def speculation(self) -> dict[str, int | float] | None:
        """What speculative decoding did (for `Completion.extra`), or None when it was off; the
        acceptance rate is the share of drafted tokens the model kept (0 when nothing was drafted)."""
        if not self.speculate:
            return None
        rate = round(self.accepted / self.drafted, 3) if self.drafted else 0.0
        return {"k": self.speculate, "drafted": self.drafted, "accepted": self.accepted, "acceptance": rate,
                "steps": self.steps}  # fmt: skip

    @classmethod
    def of(cls, request: GenerationRequest) -> Run:
        """A request with a token-id prompt run on its own: its stop ids (None: none, as the model's
        end tokens need its tokenizer: `LocalModel.run` resolves them), nothing cached."""
        if not isinstance(request.prompt, list):
            raise DemiUserError("generate takes the prompt as token ids; LocalModel.run encodes text")
        started = time.monotonic()
        deadline = started + request.time_budget if request.time_budget else None
        return cls(list(request.prompt), frozenset(request.stop_ids or ()), deadline, started=started)

    def interrupted(self, cancel: CancelToken | None) -> str | None:
        """Why the run must end now ("cancelled" or "time"), or None."""
        if cancel is not None and cancel.cancelled:
            return "cancelled"
        if self.deadline is not None and time.monotonic() > self.deadline:
            return "time"
        return None


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    picked = logits.gather(-1, seen)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits.scatter(-1, seen, picked)


def sample_next(logits: Tensor, s: Sampling, generator: torch.Generator | None) -> Tensor:
    """Next token [B] from last-position logits [B, V] (already penalised)."""
    if s.greedy:
        return logits.argmax(-1)
    probs = processed_logits(logits, s).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def processed_logits(logits: Tensor, s: Sampling) -> Tensor:
    """Logits [..., V] after temperature, top-k and top-p (not greedy): their softmax is the
    distribution `sample_next` draws from."""
    logits = (logits.float() - logits.float().amax(-1, keepdim=True)) / s.temperature  # no overflow
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - s.top_p
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def accept_draft(logits: Tensor, draft: int, s: Sampling, generator: torch.Generator | None) -> tuple[bool, int]:
    """Check one draft token against the model's logits [V] at its position: (accepted, the token).

    Greedy: accepted when it is the argmax, else the argmax replaces it. Sampling: the speculative
    sampling rule for a deterministic (one-hot) draft: accept with probability p(draft) under the
    processed distribution, else draw from p with the draft removed (renormalised). Either way the
    token kept is distributed exactly as `sample_next`'s would be."""
    if s.greedy:
        best = int(logits.argmax(-1).item())
        return best == draft, best
    probs = processed_logits(logits, s).softmax(-1).reshape(-1)
    if float(torch.rand((), generator=generator, device=probs.device)) < float(probs[draft]):
        return True, draft
    probs[draft] = 0.0
    if not float(probs.sum()) > 0.0:  # all the mass was on the draft (up to rounding)
        return True, draft
    return False, int(torch.multinomial(probs, 1, generator=generator).item())


def apply_priors(logits: Tensor, priors: Sequence[Prior], keep: Tensor | None = None) -> Tensor:
    """Logits [1, V] with `priors` mixed in, in order, as log-probabilities: log((1 - w) p + w q) for
    each prior's (q, w); `logits` itself when none applies (no prior, zero weights, or the model
    sure enough for each prior's `below`). A prior's ids are distinct.

    The ids in `keep` (the run's stop tokens) keep the model's probability: a prior says what text
    comes next, not whether the answer ends here, so it shares out only the rest of the mass
    (p'(x) = (1 - w) p(x) + w (1 - p_stop) q(x), p'(stop) = p(stop); a prior's mass on a stop token
    is dropped). Two passes over the vocabulary (a log-softmax and a shift); the rest touches only
    the prior's ids and `keep`."""
    out: Tensor | None = None
    stops = keep if keep is not None and keep.numel() else None
    for prior in priors:
        if prior.weight <= 0.0 or not prior.ids:
            continue
        logp = out if out is not None else logits.float().log_softmax(-1)
        if prior.below < 1.0 and float(logp.amax()) >= math.log(prior.below):
            continue
        weight = min(1.0, float(prior.weight))
        ids = torch.tensor(list(prior.ids), dtype=torch.long, device=logits.device)
        q = torch.tensor(list(prior.probs), dtype=logp.dtype, device=logits.device)
        share = torch.full_like(logp[..., :1], weight)
        kept = None
        if stops is not None:
            kept = logp.index_select(-1, stops)  # log p of the stop tokens
            share = share * (1.0 - kept.exp().sum(-1, keepdim=True))
        mixed = logp.index_select(-1, ids).exp() * (1.0 - weight) + q * share
        new = logp + (math.log1p(-weight) if weight < 1.0 else float("-inf"))
        new.index_copy_(-1, ids, mixed.log())
        if stops is not None and kept is not None:
            new.index_copy_(-1, stops, kept)
        out = new
    return logits if out is None else out


def next_token(
    logits: Tensor,
    seen: Tensor,
    s: Sampling,
    generator: torch.Generator | None,
    constraint: ForcedPrefix | None,
    priors: Sequence[Prior] = (),
    keep: Tensor | None = None,
) -> Tensor:
    """Next token [B] from last-position logits [B, V]: the repetition penalty over `seen`, the
    `priors` (`apply_priors`, the ids in `keep` left alone), the healing constraint's mask, then
    `sample_next`."""
    if s.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
    if priors:
        logits = apply_priors(logits, priors, keep)
    allowed = constraint.mask(logits.shape[-1], logits.device) if constraint is not None else None
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return sample_next(logits, s, generator)


def decode_one_token(model: Transformer, token: Tensor, pos: int, cache: KVCache) -> Tensor:
    """Logits [B, V] after `token` [B, 1] at position `pos`, its keys and values written into `cache`."""
    return model(token, start=pos, cache=cache)[:, -1].float()


def max_verify_rows(model: Transformer, cache: KVCache) -> int | None:
    """The most tokens one speculative verification pass may hold so that each row's logits are
    the ones a decode step of that token gives (greedy output must not change): a quantized CPU
    model runs its decode kernels, which work row by row, only up to DECODE_ROWS rows; more go
    through the prefill path, whose rounding differs (measured: a near-tie on demi-tiny int8 flipped).
    The one-call decode stack (decode_stack.py) takes any number of rows as lone steps: no limit."""
    stack = model.decode_stack
    if stack is not None and stack.usable(cache):
        return None
    return decode_rows(model)


def verify_logits(model: Transformer, tokens: Tensor, pos: int, cache: KVCache) -> Tensor:
    """Logits [T, V] after each of `tokens` [1, T] at positions pos.., written into `cache`: one pass
    through the layers, attention row by row (`hidden_states(rowwise=True)`), and an int8 head that
    decodes through an int4 shadow (`RescoredHead`) as a batched step does (`batch.head_rows`: the
    shadow on up to DECODE_ROWS rows, each row's candidates rescored alone): each row is what a
    decode step of that token computes."""
    hidden = model.hidden_states(tokens, pos, cache, rowwise=True)
    # the head on up to DECODE_ROWS rows at once, as a batch step: more rows would be a prefill's
    # matmul (a float copy of the weight where the plan says so), which rounds unlike a step
    rows = hidden.reshape(-1, 1, hidden.shape[-1])
    return torch.cat(
        [head_rows(model.lm_head, rows[i : i + DECODE_ROWS]) for i in range(0, rows.shape[0], DECODE_ROWS)]
    )


# What `generate` yields: a token id, None between prefill chunks, or (batch mode) a decode step to
# be run by the driver, which sends its logits [1, V] back.
Yielded = int | None | DecodeStep


@torch.inference_mode()
def generate(
    model: Transformer, request: GenerationRequest, cache: KVCache | None = None, run: Run | None = None
) -> Generator[Yielded, Tensor | None, str]:
    """Yield up to `request.max_new_tokens` new token ids after the prompt; return why it ended:
    "stop" (a stop token, yielded last), "length", "cancelled" or "time".

    The prompt's ids and what the request resolved to come from `run` (`Run.of(request)` without
    one); `cache` (a fresh one without) may already hold `run.reuse` of its leading tokens, which
    are then not prefilled again. With `run.chunk`, a long prompt is prefilled that many tokens at
    a time and None is yielded between chunks, so a scheduler can interleave other work and a
    cancellation lands within one chunk instead of after the whole prompt. With `run.batch`, each
    one-token decode step is yielded as a `DecodeStep` and its logits are what the driver sends.
    """
    run = run if run is not None else Run.of(request)
    ids, s = run.ids, request.sampling
    ctx = cache.max_len if cache is not None else model.config.context_limit
    if not ids:
        raise DemiUserError("the prompt is empty")
    if len(ids) >= ctx:
        raise ContextOverflowError(f"the prompt has {len(ids)} tokens but the context window is {ctx}")
    end = len(ids) + min(request.max_new_tokens, ctx - len(ids))
    if cache is None:
        cache = KVCache(model.config, min(ctx, end), dtype=model.dtype, device=model.device)
    generator = None if s.seed is None else torch.Generator(device=model.device).manual_seed(s.seed)
    seen = torch.tensor([ids], device=model.device)
    step = run.chunk or len(ids)
    for lo, hi, limit in prefill_spans(run, step):
        logits = prefill(model, seen[:, lo:hi], lo, cache, run.max_pad, limit)
        if hi < len(ids):
            yield None
            if reason := run.interrupted(request.cancel):
                return reason
    run.speculate = max(0, request.speculate) if s.repetition_penalty == 1.0 and request.mix is None else 0
    if (rows := max_verify_rows(model, cache)) is not None:
        run.speculate = min(run.speculate, rows - 1)
    if run.speculate > 0:
        return (yield from _decode_speculative(model, request, run, cache, logits, seen, generator, end))
    keep = None  # the stop tokens, whose probability priors leave alone (see `apply_priors`)
    if request.mix is not None:
        keep = torch.tensor(sorted(run.stop_ids), dtype=torch.long, device=model.device)
    for pos in range(len(ids), end):
        run.steps += pos > len(ids)
        if reason := run.interrupted(request.cancel):
            return reason
        priors = request.mix(run.tokens) if request.mix is not None else ()
        nxt = next_token(logits, seen, s, generator, run.constraint, priors, keep)
        token = int(nxt.item())  # the one host round-trip per token: the stream needs the id
        if run.constraint is not None:
            run.constraint.advance(token)
        run.tokens.append(token)
        yield token
        if token in run.stop_ids:
            return "stop"
        if pos + 1 == end:
            break
        if s.repetition_penalty != 1.0:  # the history is only needed for the penalty
            seen = torch.cat([seen, nxt.view(1, 1)], dim=1)
        if run.batch:
            logits = yield from _batched_step(nxt.view(1, 1), pos, cache)
        else:
            logits = decode_one_token(model, nxt.view(1, 1), pos, cache)
    return "length"


def _batched_step(
    token: Tensor, pos: int, cache: KVCache, timed: bool = False
) -> Generator[DecodeStep, Tensor | None, Tensor]:
    """Hand one decode step to the batching driver; the logits [1, V] it sends back."""
    logits = yield DecodeStep(token, pos, cache, timed)
    if logits is None:
        raise RuntimeError("a batched generation was resumed without its decode step's logits")
    return logits


def _decode_speculative(
    model: Transformer,
    request: GenerationRequest,
    run: Run,
    cache: KVCache,
    logits: Tensor,
    seen: Tensor,
    generator: torch.Generator | None,
    end: int,
) -> Generator[int | DecodeStep, Tensor | None, str]:
    """`generate`'s decode loop with prompt lookup drafts (`run.speculate` = k of them at most).

    Each step: pick the next token as the plain loop does (or take the one a rejected draft left),
    yield it, draft up to k tokens that may follow it, and run [token, drafts] through the model in
    one pass at positions pos..pos+k. Row i's logits check draft i+1 (`accept_draft`); accepted
    drafts are yielded, the first rejected one is replaced by the model's own choice (yielded at the
    next step, which feeds it), and when all are accepted the last row gives the next token. The
    cache's length is set back to the tokens kept, so the rejected drafts' entries are overwritten
    later. Stop tokens, `end` and the cancel/deadline check per step work as in the plain loop.

    How many drafts a step checks is the lookup's call (`PromptLookup.worth_checking`): a check costs
    a share of a decode step and a share per draft (timed here as the loop runs, `check_cost`), and a
    draft is worth it only while the chance that it and those before it are kept, estimated per
    match length from what this request's checks kept, is above its share. On a small model a weak
    match (one token) is usually not worth a check."""
    s = request.sampling
    cost = check_cost(model)
    lookup = PromptLookup(run.ids, price=cost.price)
    # timed on a CPU (a GPU's passes are asynchronous: its prior stands), from the second pass on: the
    # first after a prefill reads the weights back from memory (1.0 against 0.44 ms on demi-tiny)
    on_cpu, timed = model.device.type == "cpu", False
    pos, pending = len(run.ids), None  # invariant at the loop's top: len(ids) + len(tokens) == pos
    while pos < end:
        if reason := run.interrupted(request.cancel):
            return reason
        if pending is None:
            chosen_id = next_token(logits, seen, s, generator, run.constraint)
            token = int(chosen_id.item())
        else:
            token, pending = pending, None
            chosen_id = None
        if run.constraint is not None:
            run.constraint.advance(token)
        run.tokens.append(token)
        lookup.extend((token,))
        yield token
        if token in run.stop_ids:
            return "stop"
        if pos + 1 == end:
            break
        healing = run.constraint is not None and not run.constraint.done
        lookup.price = cost.price
        drafts = [] if healing else lookup.propose(min(run.speculate, end - pos - 1))
        if drafts or chosen_id is None:
            rows = torch.tensor([[token, *drafts]], device=model.device)
        else:  # the plain loop's step: the chosen id's tensor as it is
            rows = chosen_id.view(1, 1)
        run.steps += 1
        if not drafts:  # nothing to verify: a plain step, batched with others' in batch mode
            if run.batch:  # timed by the driver when it runs alone (`LocalModel.decode_batch`)
                logits = yield from _batched_step(rows, pos, cache, timed)
            else:
                started = time.perf_counter()
                logits = decode_one_token(model, rows, pos, cache)
                if timed:
                    cost.lone(time.perf_counter() - started)
            pos += 1
            timed = on_cpu
            continue
        started = time.perf_counter()
        out = verify_logits(model, rows, pos, cache)  # [1 + drafts, V]
        if timed:
            cost.check(1 + len(drafts), time.perf_counter() - started)
        timed = on_cpu
        run.drafted += len(drafts)
        pos += 1  # `token` is in the cache now
        cache.length = pos
        best = out[: len(drafts)].argmax(-1).tolist() if s.greedy else None
        for i, draft in enumerate(drafts):
            if best is not None:
                ok, chosen = best[i] == draft, best[i]
            else:
                ok, chosen = accept_draft(out[i], draft, s, generator)
            if not ok:
                pending = chosen
                lookup.settle(len(drafts), i)
                break
            run.accepted += 1
            run.tokens.append(draft)
            lookup.extend((draft,))
            pos += 1
            cache.length = pos
            yield draft
            if draft in run.stop_ids:
                return "stop"
            if pos == end:
                return "length"
        else:
            logits = out[len(drafts)].unsqueeze(0)
            lookup.settle(len(drafts), len(drafts))
    return "length"
