"""Token generation in the manner of gpt-fast's generate.py: `prefill` the prompt into a
preallocated KV cache, `decode_one_token` at a time after it, and `generate`, which runs the two for
one request and returns why it stopped.

`generate` yields token ids as they come so callers can stream; it checks the request's
cancellation token and deadline every step, and stops on stop tokens. Sampling follows Hugging
Face's order (repetition penalty, temperature, top-k, top-p) so greedy and seeded runs can be
compared token for token.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Set
from dataclasses import dataclass, field

import torch
from torch import Tensor

from demi.model.cancel import CancelToken
from demi.model.decoder import KVCache, Transformer
from demi.model.errors import ContextOverflowError, DemiUserError
from demi.model.healing import ForcedPrefix

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


def prefill(model: Transformer, tokens: Tensor, start: int, cache: KVCache, max_pad: int = 0) -> Tensor:
    """Logits [B, V] of the last of `tokens` at positions start.., written into `cache`; with
    `max_pad`, the rows are padded to a bucket size (see PAD_BUCKETS)."""
    count = tokens.shape[1]
    rows = padded_rows(count, cache.max_len - start, max_pad)
    if rows > count:
        tokens = torch.cat([tokens, tokens[:, -1:].expand(-1, rows - count)], dim=1)
    hidden = model.hidden_states(tokens, start, cache)[:, count - 1 : count]
    cache.length = start + count
    return model.lm_head(hidden)[:, -1].float()


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
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def next_token(
    logits: Tensor, seen: Tensor, s: Sampling, generator: torch.Generator | None, constraint: ForcedPrefix | None
) -> Tensor:
    """Next token [B] from last-position logits [B, V]: the repetition penalty over `seen`, the
    healing constraint's mask, then `sample_next`."""
    if s.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)
    allowed = constraint.mask(logits.shape[-1], logits.device) if constraint is not None else None
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return sample_next(logits, s, generator)


def decode_one_token(model: Transformer, token: Tensor, pos: int, cache: KVCache) -> Tensor:
    """Logits [B, V] after `token` [B, 1] at position `pos`, its keys and values written into `cache`."""
    return model(token, start=pos, cache=cache)[:, -1].float()


@torch.inference_mode()
def generate(
    model: Transformer, request: GenerationRequest, cache: KVCache | None = None, run: Run | None = None
) -> Generator[int | None, None, str]:
    """Yield up to `request.max_new_tokens` new token ids after the prompt; return why it ended:
    "stop" (a stop token, yielded last), "length", "cancelled" or "time".

    The prompt's ids and what the request resolved to come from `run` (`Run.of(request)` without
    one); `cache` (a fresh one without) may already hold `run.reuse` of its leading tokens, which
    are then not prefilled again. With `run.chunk`, a long prompt is prefilled that many tokens at
    a time and None is yielded between chunks, so a scheduler can interleave other work and a
    cancellation lands within one chunk instead of after the whole prompt.
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
    for lo in range(worth_reusing(min(run.reuse, len(ids) - 1), len(ids)), len(ids), step):
        hi = min(lo + step, len(ids))
        logits = prefill(model, seen[:, lo:hi], lo, cache, run.max_pad)
        if hi < len(ids):
            yield None
            if reason := run.interrupted(request.cancel):
                return reason
    for pos in range(len(ids), end):
        if reason := run.interrupted(request.cancel):
            return reason
        nxt = next_token(logits, seen, s, generator, run.constraint)
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
        logits = decode_one_token(model, nxt.view(1, 1), pos, cache)
    return "length"
