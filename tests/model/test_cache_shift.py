"""Shifted KV reuse (model/prefix_cache.py): a run of cached tokens found again later in a new
prompt is moved to its new positions and its keys re-rotated, instead of being recomputed.

What is exact and what approximates: the rotation is exact (a key rotated at p and shifted by d
equals the key rotated at p + d), so the first layer's keys and values, which depend only on the
token and its position, equal a cold prefill's. Deeper layers keep what was computed against the
old text before the run: that is the approximation, bounded by `Slot.drift`.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import BASE, ROPE_VARIANTS

from demi.model.config import ModelConfig
from demi.model.decoder import KVCache
from demi.model.engine import LocalModel
from demi.model.generate import GenerationRequest, generate
from demi.model.prefix_cache import longest_shared_run
from demi.model.rope import RotaryTable, apply_rotary, shift_keys, shifts_exactly

A = list(range(10, 50))  # the unchanged head (a FIM prompt's prefix)
B = list(range(100, 160))  # the run found again (the suffix after the cursor)
END = [7]  # the prompt's last token (FIM's middle marker), always recomputed for its logits


@pytest.fixture(scope="module")
def lm(tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints("qwen2")))


def _run(lm: LocalModel, ids: list[int], cache_shift: int = 0, n: int = 3):
    it = lm.run(GenerationRequest(ids, n, cache_shift=cache_shift))
    while True:
        try:
            next(it)
        except StopIteration as done:
            return done.value


def _cold_cache(lm: LocalModel, ids: list[int]) -> KVCache:
    cache = KVCache(lm.model.config, len(ids) + 4, dtype=lm.model.dtype)
    list(generate(lm.model, GenerationRequest(ids, 1), cache))
    return cache


def _slot_holding(lm: LocalModel, ids: list[int]):
    return next(s for s in lm.prefix_cache.slots if s.tokens[: len(ids)] == ids)


@pytest.mark.parametrize("rope", [None, *[r for r in ROPE_VARIANTS if r != "dynamic"], "partial"])
def test_a_shifted_key_is_the_key_rotated_at_its_new_position(rope):
    raw = dict(BASE, model_type="llama")
    if rope == "partial":
        raw["partial_rotary_factor"] = 0.5
    elif rope:
        raw["rope_scaling"] = ROPE_VARIANTS[rope]
    cfg = ModelConfig.from_hf(raw)
    assert shifts_exactly(cfg)
    table = RotaryTable(cfg, 200)
    k = torch.randn(1, 2, 10, cfg.head_dim)
    at_5 = apply_rotary(k, *table.lookup(5, 10, torch.device("cpu")))
    for delta in (3, 47, -4):
        expected = apply_rotary(k, *table.lookup(5 + delta, 10, torch.device("cpu")))
        torch.testing.assert_close(shift_keys(cfg, at_5, delta), expected, atol=2e-5, rtol=1e-4)


def test_dynamic_ntk_does_not_shift():
    cfg = ModelConfig.from_hf(dict(BASE, model_type="llama", rope_scaling=ROPE_VARIANTS["dynamic"]))
    assert not shifts_exactly(cfg)


@pytest.mark.parametrize(
    "old, new, start, expected",
    [
        (A + [1, 2] + B + END, A + [1, 2, 3] + B + END, 40, (43, 42, 60)),  # one token typed
        (A + [1, 2, 3] + B + END, A + [1] + B + END, 40, (41, 43, 60)),  # two deleted
        (A + [1] + B + END + [5, 6], A + [9] + B + END, 40, (41, 41, 60)),  # one replaced; old answer after
        (A + [1] + B, A + [2] + list(range(300, 360)) + END, 40, (0, 0, 0)),  # nothing in common
    ],
)
def test_longest_shared_run(old, new, start, expected):
    assert longest_shared_run(old, new, start, len(new) - 1, 16) == expected


def test_runs_shorter_than_the_minimum_are_not_taken():
    old, new = A + [1] + B[:10] + END, A + [2] + B[:10] + END
    assert longest_shared_run(old, new, 40, len(new) - 1, 16) == (0, 0, 0)
    assert longest_shared_run(old, new, 40, len(new) - 1, 8)[2] == 10


def test_typing_ahead_of_a_cached_run_shifts_it_and_layer_0_equals_a_cold_prefill(lm):
    lm.prefix_cache.clear()
    old, new = A + [1, 2] + B + END, A + [1, 2, 3, 4] + B + END
    _run(lm, old)
    done = _run(lm, new, cache_shift=16)
    assert done.extra["cached_tokens"] == 42 and done.extra["shifted_tokens"] == len(B) + 0
    slot, cold = _slot_holding(lm, new), _cold_cache(lm, new)
    rows = slice(44, 44 + len(B))
    torch.testing.assert_close(slot.cache.k[0][:, :, rows], cold.k[0][:, :, rows], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(slot.cache.v[0][:, :, rows], cold.v[0][:, :, rows], atol=1e-5, rtol=1e-4)
    # the deeper layer keeps what the old text before the run made of it: the approximation
    assert not torch.allclose(slot.cache.k[1][:, :, rows], cold.k[1][:, :, rows], atol=1e-5)
    # the typed tokens and the last one are computed, exactly as cold
    for r in (slice(42, 44), slice(len(new) - 1, len(new))):
        torch.testing.assert_close(slot.cache.k[1][:, :, r], cold.k[1][:, :, r], atol=1e-4, rtol=1e-3)


def test_padded_prefill_never_writes_over_the_shifted_rows(lm, monkeypatch):
    monkeypatch.setattr(lm, "max_pad", 64)  # the typed rows would pad into the run's positions
    lm.prefix_cache.clear()
    old, new = A + [1] + B + END, A + [1, 2, 3] + B + END
    _run(lm, old)
    assert _run(lm, new, cache_shift=16).extra["shifted_tokens"] == len(B)
    slot, cold = _slot_holding(lm, new), _cold_cache(lm, new)
    rows = slice(43, 43 + len(B))
    torch.testing.assert_close(slot.cache.k[0][:, :, rows], cold.k[0][:, :, rows], atol=1e-5, rtol=1e-4)


def test_exact_reuse_by_default_gives_the_cold_answer(lm):
    lm.prefix_cache.clear()
    old, new = A + [1] + B + END, A + [1, 2] + B + END
    cold = _run(lm, new, n=8).token_ids
    lm.prefix_cache.clear()
    _run(lm, old)
    warm = _run(lm, new, n=8)
    assert warm.extra["shifted_tokens"] == 0 and warm.extra["cached_tokens"] == 41
    assert warm.token_ids == cold


def test_drift_ahead_of_shifted_rows_is_bounded(lm, monkeypatch):
    """Each request types a token ahead of the run; past `shift_drift` changed tokens since the run
    was computed exactly, it is recomputed, and then shifted again."""
    monkeypatch.setattr(lm.prefix_cache, "shift_drift", 3)
    lm.prefix_cache.clear()
    typed: list[int] = []
    shifted = []
    for t in range(6):
        _run(lm, A + typed + B + END, cache_shift=16, n=1)
        slot = _slot_holding(lm, A + typed + B + END)
        shifted.append((slot.approx_from is not None, slot.drift))
        typed.append(200 + t)
    # cold, then shifts with drift 1, 2, 3, then a recompute (exact again), then a shift
    assert shifted == [(False, 0), (True, 1), (True, 2), (True, 3), (False, 0), (True, 1)]


def test_a_shift_is_reported_and_greedy_text_continues(lm):
    """Through the text API: the answer after a shifted reuse is a normal answer (same length)."""
    lm.prefix_cache.clear()
    _run(lm, A + B + END, n=4)
    done = _run(lm, A + [3, 4] + B + END, cache_shift=16, n=4)
    assert done.extra["shifted_tokens"] == len(B) and len(done.token_ids) == 4
