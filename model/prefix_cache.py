"""Reuse the KV of earlier requests: a few cache slots, each remembering the tokens it holds.

While a user types, each FIM prompt is the previous one plus a character or two, so almost
all of its keys and values are already computed. A request takes the free slot whose tokens
share the longest prefix with its prompt and prefills only the rest (llama.cpp's server does
the same with `cache_prompt`). Slots are checked out, so several generations can be in
flight at once (the server interleaves them) without sharing a cache.

Prefix-first FIM prompts (`<prefix>…<suffix>…<middle>`) change in the middle as the user types:
the suffix after the cursor is the same text, one or two tokens further on. With `shift_min`
set, a run of at least that many cached tokens found again later in the new prompt is moved to
its new place and its keys re-rotated to their new positions (`rope.shift_keys`), as llama.cpp's
`--cache-reuse` does, instead of being recomputed. That is an approximation: those keys and
values were computed against the old text before them. `Slot.drift` counts the tokens that have
changed ahead of such rows since they were last computed exactly; past `shift_drift` the rows
are recomputed, which bounds the error. Keys that a rotation cannot move (dynamic NTK, or xPos
whose keys also carry a scale of their position, model/xpos.py: `rope.shifts_exactly`) are never
shifted, whatever `shift_keys` the caller passes.

A hybrid model's lightning layers (lightning.py) hold one state per slot, not a row per token: a
slot is reused only when the prompt goes on from where that state is (or from within its last
pass), and never shifted; otherwise the prompt is prefilled from its start.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from demi.model.config import ModelConfig
from demi.model.decoder import KVCache
from demi.model.rope import shifts_exactly

# tokens changed ahead of shifted rows before they are recomputed (see the module docstring)
SHIFT_DRIFT = 64
# how many earlier positions of one n-gram are tried when looking for a run to shift
_CANDIDATES = 8


@dataclass
class Slot:
    cache: KVCache
    tokens: list[int] = field(default_factory=list)  # tokens whose keys/values the cache holds
    last_used: int = 0
    busy: bool = False
    # rows from `approx_from` on were shifted, not computed against the text now before them;
    # `drift` tokens have changed ahead of them since they were computed exactly
    approx_from: int | None = None
    drift: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def longest_shared_run(old: list[int], new: list[int], start: int, end: int, min_len: int) -> tuple[int, int, int]:
    """(i, j, length) of the longest run new[i:i+length] == old[j:j+length] with i, j >= start and
    i + length <= end, at least `min_len` long; length 0 when there is none."""
    if min_len < 1 or end - start < min_len or len(old) - start < min_len:
        return 0, 0, 0
    key = min_len
    where: dict[tuple[int, ...], list[int]] = {}
    for j in range(start, len(old) - key + 1):
        where.setdefault(tuple(old[j : j + key]), []).append(j)
    best = (0, 0, 0)
    i = start
    while i + key <= end:
        for j in where.get(tuple(new[i : i + key]), ())[-_CANDIDATES:]:
            n = key
            while i + n < end and j + n < len(old) and new[i + n] == old[j + n]:
                n += 1
            if n > best[2]:
                best = (i, j, n)
        if best[2] and i >= best[0] + best[2]:
            break  # runs further on are found by the end of this one only if longer; FIM has one
        i += 1
    return best


class PrefixCache:
    """An LRU of `slots` KV caches of `context` tokens each, allocated on first use."""

    def __init__(
        self,
        cfg: ModelConfig,
        context: int,
        dtype: torch.dtype,
        device: torch.device,
        slots: int = 4,
        shift_keys: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        shift_drift: int = SHIFT_DRIFT,
    ):
        self.cfg, self.context, self.dtype, self.device = cfg, context, dtype, device
        self.max_slots = max(1, slots)
        self.slots: list[Slot] = []
        self._clock = 0
        self._lock = threading.Lock()
        self.shift_keys = shift_keys if shifts_exactly(cfg) else None
        self.shift_drift = shift_drift

    def acquire(
        self, ids: list[int], keep: Callable[[int], int] | None = None, shift_min: int = 0
    ) -> tuple[Slot, int, range | None]:
        """A free slot, how many leading tokens of `ids` it already holds, and the later prompt
        positions a shifted run of at least `shift_min` cached rows already fills (None: none).

        `keep(reuse)` says how many of those the caller will keep (see `generate.worth_reusing`);
        a run is shifted only when it keeps them all and `shift_min` > 0."""
        with self._lock:
            free = [s for s in self.slots if not s.busy]
            best = max(free, key=lambda s: (common_prefix(s.tokens, ids), s.last_used), default=None)
            reuse = common_prefix(best.tokens, ids) if best else 0
            if best is not None and best.cache.recurrent:  # lightning states resume only near their end
                reuse = best.cache.reusable(min(reuse, len(ids) - 1))  # the last token is always run again
            if (best is None or reuse == 0) and len(self.slots) < self.max_slots:
                best, reuse = Slot(KVCache(self.cfg, self.context, dtype=self.dtype, device=self.device)), 0
                self.slots.append(best)
            elif best is None:  # every slot busy: a temporary cache, not kept afterwards
                return Slot(KVCache(self.cfg, self.context, dtype=self.dtype, device=self.device)), 0, None
            if reuse == 0:  # no overlap anywhere: take the least recently used free slot
                best = min((s for s in self.slots if not s.busy), key=lambda s: s.last_used)
            best.busy = True
            old = best.tokens
            best.tokens = old[:reuse]
            best.cache.length = reuse
        kept = keep(reuse) if keep is not None else reuse
        shifted = self._shift(best, old, ids, reuse, shift_min) if kept == reuse else None
        if best.approx_from is not None and shifted is None and best.approx_from >= kept:
            best.approx_from, best.drift = None, 0  # the approximate rows are recomputed
        return best, reuse, shifted

    def _shift(self, slot: Slot, old: list[int], ids: list[int], reuse: int, shift_min: int) -> range | None:
        """Move the longest cached run found again after `reuse` to its place in `ids` (never the
        prompt's last token, whose logits the run needs); its positions, or None."""
        if self.shift_keys is None or shift_min <= 0 or slot.cache.recurrent:  # lightning states cannot move
            return None
        held = min(len(old), slot.cache.max_len)
        i, j, n = longest_shared_run(old[:held], ids, reuse, len(ids) - 1, shift_min)
        if n == 0:
            return None
        changed = max(i, j) - reuse  # tokens inserted or removed ahead of the run
        stale = slot.approx_from is not None and j + n > slot.approx_from
        drift = changed + (slot.drift if stale else 0)
        if slot.approx_from is not None and slot.approx_from < reuse:  # approximate rows kept ahead
            drift = max(drift, slot.drift)
        if drift > self.shift_drift:
            return None
        cache = slot.cache
        # every layer's keys in one rotation (its angles computed once), copied before any row is written
        keys = self.shift_keys(torch.stack([k[:, :, j : j + n] for k in cache.k]).float(), i - j)
        for layer, (k, v) in enumerate(zip(cache.k, cache.v)):
            k[:, :, i : i + n] = keys[layer].to(k.dtype)
            v[:, :, i : i + n] = v[:, :, j : j + n].clone()
        slot.approx_from = i if slot.approx_from is None or slot.approx_from >= reuse else slot.approx_from
        slot.drift = drift
        return range(i, i + n)

    def release(self, slot: Slot, tokens: list[int]) -> None:
        """Return `slot`, now holding the keys/values of `tokens`."""
        with self._lock:
            self._clock += 1
            slot.tokens, slot.last_used, slot.busy = tokens[: slot.cache.length], self._clock, False
            if slot.approx_from is not None and slot.approx_from >= slot.cache.length:
                slot.approx_from, slot.drift = None, 0

    def clear(self) -> None:
        with self._lock:
            self.slots = [s for s in self.slots if s.busy]
