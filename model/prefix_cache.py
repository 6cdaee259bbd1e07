"""Reuse the KV of earlier requests: a few cache slots, each remembering the tokens it holds.

While a user types, each FIM prompt is the previous one plus a character or two, so almost
all of its keys and values are already computed. A request takes the free slot whose tokens
share the longest prefix with its prompt and prefills only the rest (llama.cpp's server does
the same with `cache_prompt`). Slots are checked out, so several generations can be in
flight at once (the server interleaves them) without sharing a cache.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from demi.model.config import ModelConfig
from demi.model.decoder import KVCache


@dataclass
class Slot:
    cache: KVCache
    tokens: list[int] = field(default_factory=list)  # tokens whose keys/values the cache holds
    last_used: int = 0
    busy: bool = False


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """An LRU of `slots` KV caches of `context` tokens each, allocated on first use."""

    def __init__(self, cfg: ModelConfig, context: int, dtype: torch.dtype, device: torch.device, slots: int = 4):
        self.cfg, self.context, self.dtype, self.device = cfg, context, dtype, device
        self.max_slots = max(1, slots)
        self.slots: list[Slot] = []
        self._clock = 0
        self._lock = threading.Lock()

    def acquire(self, ids: list[int]) -> tuple[Slot, int]:
        """A free slot and how many leading tokens of `ids` it already holds."""
        with self._lock:
            free = [s for s in self.slots if not s.busy]
            best = max(free, key=lambda s: (common_prefix(s.tokens, ids), s.last_used), default=None)
            reuse = common_prefix(best.tokens, ids) if best else 0
            if (best is None or reuse == 0) and len(self.slots) < self.max_slots:
                best, reuse = Slot(KVCache(self.cfg, self.context, dtype=self.dtype, device=self.device)), 0
                self.slots.append(best)
            elif best is None:  # every slot busy: a temporary cache, not kept afterwards
                return Slot(KVCache(self.cfg, self.context, dtype=self.dtype, device=self.device)), 0
            if reuse == 0:  # no overlap anywhere: take the least recently used free slot
                best = min((s for s in self.slots if not s.busy), key=lambda s: s.last_used)
            best.busy = True
            best.tokens = best.tokens[:reuse]
            return best, reuse

    def release(self, slot: Slot, tokens: list[int]) -> None:
        """Return `slot`, now holding the keys/values of `tokens`."""
        with self._lock:
            self._clock += 1
            slot.tokens, slot.last_used, slot.busy = tokens[: slot.cache.length], self._clock, False

    def clear(self) -> None:
        with self._lock:
            self.slots = [s for s in self.slots if s.busy]
