"""A loaded model with its tokenizer: text in, streamed text out.

This is the in-process engine the session layer talks to. It owns one KV cache sized to
the context it was loaded for and reuses it across requests, turns token ids into text
pieces that never split a character, and cuts the text at stop strings without ever
streaming part of one.

Continuous batching: `run(request, batch=True)` gives a generator that also yields `DecodeStep`s
(see batch.py), each waiting for its logits; a scheduler that holds several such runs sends them
what `decode_batch` computed for all their steps at once. The model runner does this for its
stepped runs (assistant/runner.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F

from demi.model import kernel_plan, native_kernels
from demi.model.batch import DecodeStep, decode_batch
from demi.model.check_cost import check_cost
from demi.model.decoder import KVCache, Transformer
from demi.model.errors import ContextOverflowError, DemiUserError
from demi.model.generate import (
    PAD_BUCKETS,
    GenerationRequest,
    Run,
    decode_one_token,
    generate,
    max_padding,
    padded_rows,
    prefill,
    worth_reusing,
)
from demi.model.healing import ForcedPrefix
from demi.model.loading import load_model, resolve_device
from demi.model.prefix_cache import PrefixCache
from demi.model.registry import resolve_model_dir
from demi.model.rope import shift_keys, shifts_exactly
from demi.model.threads import use_physical_cores
from demi.model.tokenizer import StreamDecoder, Tokenizer

DEFAULT_CONTEXT = 4096
# A long prompt is prefilled in chunks so that a scheduler can run other streams in between and a
# cancel lands within one chunk. A chunk is about CHUNK_FLOPS of matmul work (~0.1-0.3 s on a
# 2-core laptop CPU), but never under MIN_PREFILL_CHUNK tokens: a 0.5B model takes 512-token
# chunks, demi-tiny (12.6M parameters) takes a 1,500-token prompt in one, which saves the
# re-reading of the KV cache and per-chunk work that chunking costs.
CHUNK_FLOPS = 50e9
MIN_PREFILL_CHUNK, MAX_PREFILL_CHUNK = 512, 4096
WARM_UP_FLOPS = 100e9  # ~0.5 s of a 2-core CPU: warm-up is for small models, whose kernels cost the most


def prefill_chunk_for(params: int) -> int:
    """Prompt tokens per prefill step for a model of `params` parameters."""
    return int(min(MAX_PREFILL_CHUNK, max(MIN_PREFILL_CHUNK, CHUNK_FLOPS / max(1, 2 * params))))


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # stop | length | cancelled | time
    seconds: float
    first_token_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def drain(
    stream: Iterator[str], on_text: Callable[[str], None] | None = None, on_step: Callable[[], None] | None = None
) -> Completion:
    """Run a `stream` generator to its end and return its result (the generator's return value).

    One loop for every caller that wants the whole answer: non-empty pieces go to `on_text`;
    `on_step` hears every step, text or not, so a scheduler can count model steps.
    """
    while True:
        try:
            piece = next(stream)
        except StopIteration as done:
            return done.value
        if on_step:
            on_step()
        if on_text and piece:
            on_text(piece)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing chars of `text` could be the start of a stop string."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return keep


def _param_count(model: Transformer) -> int:
    """Parameters each prompt token goes through in matmuls (active ones for a mixture of experts,
    not the embedding lookup), from the config, so quantization layouts (an int8 head's int4
    shadow, kept bf16 copies) do not count twice; an exotic config counts the weight tensors."""
    try:
        from demi.model.info import model_info

        return int(model_info(model.config).params.active_non_embedding)
    except Exception:  # noqa: BLE001 - a config model_info cannot read
        return sum(t.numel() for t in (*model.parameters(), *model.buffers()) if t.dim() >= 2)


def _builds_kernels_per_shape(model: Transformer) -> bool:
    """Whether prefill matmuls go through oneDNN's bf16 path, which builds a kernel for every new row
    count (padding to a few sizes and warming them up pays off only there; fp32 and the native
    kernels have no such cost, measured: a new size costs what a seen one does)."""
    plan = getattr(model, "kernel_plan", None)
    return model.dtype == torch.bfloat16 or (plan is not None and plan.prefill == "bf16")


def _unhealed(raw: str, heal: str) -> str:
    """The answer without the healed text the output spelled first (all of it, or the part it
    agreed with when the constraint had to give up)."""
    if not heal:
        return raw
    n = 0
    while n < min(len(raw), len(heal)) and raw[n] == heal[n]:
        n += 1
    return raw[n:] if n == len(heal) or n < len(raw) else ""


class LocalModel:
    """Model + tokenizer + a reusable KV cache, on one device."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        name: str,
        path: Path | None = None,
        context: int | None = None,
        cache_slots: int = 4,
    ):
        self.model, self.tokenizer, self.name, self.path = model, tokenizer, name, path
        cfg = model.config
        self.context = min(context or DEFAULT_CONTEXT, cfg.context_limit)
        self.device = model.device
        shift = partial(shift_keys, cfg) if shifts_exactly(cfg) else None
        self.prefix_cache = PrefixCache(cfg, self.context, model.dtype, self.device, cache_slots, shift)
        self.params = _param_count(model)  # per prompt token, for the prefill budgets below and warm-up
        self.prefill_chunk = prefill_chunk_for(self.params)
        self.max_pad = max_padding(self.params) if _builds_kernels_per_shape(model) else 0

    @classmethod
    def load(
        cls,
        name: str | None = None,
        device: str | None = "cpu",
        dtype: str | None = "auto",
        context: int | None = None,
        quant: str | None = "none",
    ) -> LocalModel:
        path = resolve_model_dir(name)
        dev = resolve_device(device)
        use_physical_cores()
        model = load_model(path, dtype=dtype, device=dev, context=context or DEFAULT_CONTEXT, quant=quant)
        # the model runs on the runner's thread from here: this thread's idle OpenMP team would make
        # that thread's workers sleep between parallel regions (native_kernels.release_idle_threads)
        native_kernels.release_idle_threads()
        return cls(model, Tokenizer.from_dir(path), str(name or path.name), path, context)

    @property
    def max_streams(self) -> int:
        """Generations that can be in flight at once, each with a cached KV slot of its own."""
        return self.prefix_cache.max_slots

    @property
    def quantization(self) -> str:
        return getattr(self.model, "quantization", "none")

    @property
    def stop_ids(self) -> set[int]:
        return set(self.tokenizer.eos_token_ids) | set(self.model.config.eos_token_id)

    def encode(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens)

    def stream(self, prompt: str | list[int], **fields: Any) -> Generator[str, None, Completion]:
        """`run` with the request's fields as keywords (see `GenerationRequest`)."""
        return self.run(GenerationRequest(prompt, **fields))

    @overload
    def run(self, request: GenerationRequest, batch: Literal[False] = False) -> Generator[str, None, Completion]: ...

    @overload
    def run(self, request: GenerationRequest, batch: Literal[True]) -> Generator[str | DecodeStep, Any, Completion]: ...

    def run(self, request: GenerationRequest, batch: bool = False) -> Generator[str | DecodeStep, Any, Completion]:
        """Yield text pieces; the finished `Completion` is the generator's return value.

        `request.heal` is text cut off the end of the prompt (token healing, see `healing.py`): the
        first tokens are constrained to spell it and it is not part of the answer. With `batch`, the
        generator also yields a `DecodeStep` for each one-token decode step and must then be sent
        that step's logits (one of `decode_batch`'s rows); it yields only text without."""
        started = time.monotonic()
        ids = self.encode(request.prompt, request.add_special_tokens)
        if request.max_new_tokens < 0:
            raise DemiUserError("max_new_tokens must be >= 0")
        constraint = ForcedPrefix(self.tokenizer, request.heal) if request.heal else None
        if len(ids) >= self.context:
            raise ContextOverflowError(f"the prompt has {len(ids)} tokens but the context window is {self.context}")

        def kept(reuse: int) -> int:  # what generate keeps of the cached head, reported as such
            return worth_reusing(min(reuse, len(ids) - 1), len(ids))

        slot, reuse, shifted = self.prefix_cache.acquire(ids, kept, request.cache_shift)
        run = Run(
            ids,
            stop_ids=self.stop_ids if request.stop_ids is None else request.stop_ids,
            deadline=started + request.time_budget if request.time_budget else None,
            reuse=kept(reuse),
            shifted=shifted,
            chunk=self.prefill_chunk,
            max_pad=self.max_pad,
            constraint=constraint,
            started=started,
            batch=batch,
        )
        try:
            return (yield from self._generate(request, run, slot.cache))
        finally:
            self.prefix_cache.release(slot, ids + run.tokens)

    @torch.inference_mode()
    def decode_batch(self, steps: list[DecodeStep]) -> list[torch.Tensor]:
        """Run the decode steps of several batch-mode runs (`run(..., batch=True)`) as one batch:
        the logits [1, V] to send each of them, in order."""
        if len(steps) == 1:  # a batch of one: the plain step, timed for a speculating run's check price
            step = steps[0]
            started = time.perf_counter()
            logits = decode_one_token(self.model, step.token.view(1, 1), step.pos, step.cache)
            if step.timed:
                check_cost(self.model).lone(time.perf_counter() - started)
            return [logits]
        tokens = torch.cat([step.token.reshape(1) for step in steps])
        logits = decode_batch(self.model, tokens, [s.pos for s in steps], [s.cache for s in steps])
        return list(logits.split(1))

    def _generate(
        self, request: GenerationRequest, run: Run, cache: KVCache
    ) -> Generator[str | DecodeStep, Any, Completion]:
        """`generate`'s tokens as text pieces, cut at the request's stop strings (never streaming part
        of one); returns the Completion. A batch-mode run's decode steps pass through to the driver
        and its logits back."""
        heal, stops = request.heal, [s for s in (request.stop or []) if s]
        # With healing the window starts in the prompt, so a SentencePiece decoder keeps the space.
        decoder = StreamDecoder(self.tokenizer, prefix_ids=run.ids[-4:] if heal else ())
        raw, text, sent, first = "", "", 0, None
        tokens = generate(self.model, request, cache, run)
        reply = None  # a decode step's logits, from the batching driver
        while True:
            try:
                token = tokens.send(reply)
            except StopIteration as end:  # generate's return value: why it ended
                reason = end.value
                raw += decoder.flush()
                text = _unhealed(raw, heal)
                break
            reply = None
            if isinstance(token, DecodeStep):
                reply = yield token
                continue
            if token is None:  # between prefill chunks: let a scheduler run something else
                yield ""
                continue
            if first is None:
                first = time.monotonic() - run.started
            if token in run.stop_ids:  # its text is not part of the answer; generate returns "stop" next
                continue
            raw += decoder.push(token)
            text = _unhealed(raw, heal)
            cut = min((text.find(s, max(0, sent - len(s))) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
                tokens.close()
                break
            safe = len(text) - _held_back(text, stops)
            # Yield on every token, text or not, so a scheduler advancing several streams
            # one step each is never stuck in a run of held-back tokens.
            yield text[sent:safe] if safe > sent else ""
            sent = max(sent, safe)
        if sent < len(text):
            yield text[sent:]
        return Completion(
            text,
            run.tokens,
            len(run.ids),
            reason,
            time.monotonic() - run.started,
            first,
            extra={
                "cached_tokens": run.reuse,
                "shifted_tokens": len(run.shifted or ()),
                "healed": len(heal),
                "speculation": run.speculation(),
            },
        )

    @torch.inference_mode()
    def warm_up(self, prompt_tokens: range | list[int], decode_steps: int = 4) -> list[int]:
        """Run a prefill of padded sizes `prompt_tokens` can take, and a few decode steps, into a
        scratch cache, so the first real requests do not pay for building their kernels (~20 ms a
        size on demi-tiny). Sizes nearest the middle of `prompt_tokens` come first, until
        WARM_UP_FLOPS of work. Returns the sizes run."""
        if self.max_pad < PAD_BUCKETS[-1][1] - 1:  # a model this size does not pad: no few sizes to warm
            return []
        wanted = sorted(n for n in prompt_tokens if n > 0)
        if not wanted:
            return []
        cap = min(self.context - decode_steps - 1, self.prefill_chunk)
        middle = wanted[len(wanted) // 2]
        sizes = sorted({padded_rows(min(n, cap), cap, self.max_pad) for n in wanted}, key=lambda r: abs(r - middle))
        per_token = 2 * self.params
        run, spent = [], 0.0
        for rows in sizes:
            if spent + rows * per_token <= WARM_UP_FLOPS:
                run.append(rows)
                spent += rows * per_token
        if not run:
            return []
        cache = KVCache(self.model.config, max(run) + decode_steps, dtype=self.model.dtype, device=self.device)
        for rows in run:
            prefill(self.model, torch.zeros(1, rows, dtype=torch.long, device=self.device), 0, cache, self.max_pad)
        step = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        for _ in range(decode_steps):
            self.model(step, start=cache.length, cache=cache)  # after the last prefill (a lightning state's end)
        return sorted(run)

    @torch.inference_mode()
    def measure_speed(self, prompt_tokens: int = 1024, decode_steps: int = 4, warm: bool = True) -> dict[str, float]:
        """How fast this model runs here now: a prefill of `prompt_tokens` (fewer for a large model:
        at most WARM_UP_FLOPS of work) and a few decode steps into a scratch cache, once to build the
        kernels (not with `warm=False`: measured before) and then best of two.
        `prefill_ms_per_token` is the whole prefill over its tokens (its fixed cost included, so
        smaller prompts are not underestimated), `decode_ms_per_token` one step, `others_share` the
        CPU other processes took meanwhile. Editors size their prompts from it (lsp/prompt_budget.py)."""
        cap = min(self.context - decode_steps - 1, self.prefill_chunk, int(WARM_UP_FLOPS / max(1, 2 * self.params)))
        rows = max(16, min(prompt_tokens, cap))
        cache = KVCache(self.model.config, rows + decode_steps, dtype=self.model.dtype, device=self.device)
        zeros = torch.zeros(1, rows, dtype=torch.long, device=self.device)
        step = torch.zeros(1, 1, dtype=torch.long, device=self.device)

        def run() -> tuple[float, float]:
            started = time.perf_counter()
            prefill(self.model, zeros, 0, cache, self.max_pad)
            middle = time.perf_counter()
            for i in range(decode_steps):
                self.model(step, start=rows + i, cache=cache)
            return middle - started, (time.perf_counter() - middle) / decode_steps

        if warm:
            run()  # builds the kernels of this size
        mark = kernel_plan.cpu_mark()
        prefills, steps = zip(*(run() for _ in range(2)))
        busy = kernel_plan.others_share(mark)
        return {
            "prompt_tokens": float(rows),
            "prefill_ms_per_token": min(prefills) * 1000 / rows,
            "decode_ms_per_token": min(steps) * 1000,
            # the share of the CPU other processes took meanwhile (-1: unknown); above
            # kernel_plan.BUSY_SHARE the figures read slow
            "others_share": -1.0 if busy is None else busy,
        }

    def complete(self, prompt: str | list[int], on_text: Callable[[str], None] | None = None, **kwargs) -> Completion:
        """Run `stream` to the end, passing each piece to `on_text`."""
        return drain(self.stream(prompt, **kwargs), on_text)

    @torch.inference_mode()
    def nll(self, ids: list[int], chunk: int = 512) -> tuple[float, int]:
        """Summed natural-log NLL of ids[1:] given what precedes each, and the count scored.

        Texts longer than the context are scored in windows that overlap by half, so every
        token after the first window is conditioned on at least half a context of history.
        Logits are made `chunk` positions at a time: a full [context, vocab] matrix can be GBs.
        """
        window, stride = self.context, max(1, self.context // 2)
        total, count, scored_to, begin = 0.0, 0, 1, 0
        while scored_to < len(ids):
            end = min(begin + window, len(ids))
            tokens = torch.tensor([ids[begin:end]], device=self.device)
            hidden = self.model.hidden_states(tokens)[0, :-1]
            targets = tokens[0, 1:]
            first = scored_to - begin - 1  # positions before this were scored by the last window
            for lo in range(first, hidden.shape[0], chunk):
                logits = self.model.lm_head(hidden[lo : lo + chunk]).float()
                total += float(F.cross_entropy(logits, targets[lo : lo + chunk], reduction="sum"))
            count += hidden.shape[0] - first
            scored_to, begin = end, end - window + stride
        return total, count

    def perplexity(self, texts: list[str]) -> dict[str, float]:
        total, count = 0.0, 0
        for t in texts:
            s, n = self.nll(self.tokenizer.encode(t))
            total, count = total + s, count + n
        if count == 0:
            raise DemiUserError("nothing to score: every text is shorter than two tokens")
        mean = total / count
        return {"tokens": count, "nll": mean, "perplexity": math.exp(min(mean, 700))}
