"""A prompt's attention in one native call (model/prefill_attention.py, native/prefill_attention.c):
the tiles give SDPA's result (against a float64 reference) on every path this CPU runs, for grouped
and plain heads, a prompt after cached keys, a sliding window and a short last tile; layouts the
kernel does not take (gradients, bf16, an odd head size, a batch) fall back to SDPA; every family
prefills the same logits with it as without; and the choice is measured once per machine and cached."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hf_models import FAMILIES

from demi.model import kernel_plan, native_kernels, prefill_attention
from demi.model.decoder import Attention, KVCache
from demi.model.loading import load_model


def _lib(path: str):
    if path not in native_kernels.runnable_paths():
        pytest.skip(f"this CPU cannot run {path}")
    lib = native_kernels.library(path)
    if lib is None:
        pytest.skip(f"{path} did not load: {native_kernels.problem(path)}")
    return lib


def _case(hq: int, hkv: int, d: int, rows: int, start: int, seed: int = 0):
    """Queries laid out as the fused projection holds them, keys and values as the cache holds them."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(rows, (hq + 2 * hkv) * d, generator=g) * 2
    q = qkv[:, : hq * d].view(1, rows, hq, d).transpose(1, 2)
    cache_k = torch.randn(1, hkv, start + rows + 5, d, generator=g) * 2
    cache_v = torch.randn(1, hkv, start + rows + 5, d, generator=g)
    return q, cache_k[:, :, : start + rows], cache_v[:, :, : start + rows]


def _reference(q, k, v, window: int | None) -> torch.Tensor:
    rows, keys = q.shape[2], k.shape[2]
    q_pos = torch.arange(keys - rows, keys)[:, None]
    k_pos = torch.arange(keys)[None, :]
    mask = k_pos <= q_pos
    if window:
        mask &= k_pos > q_pos - window
    group = q.shape[1] // k.shape[1]
    y = F.scaled_dot_product_attention(
        q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1), attn_mask=mask
    )
    return y.transpose(1, 2).reshape(rows, -1).float()


CASES = {  # hq, hkv, d, rows, start, window
    "gqa": (6, 2, 64, 70, 0, None),
    "after cached keys": (6, 2, 64, 45, 33, None),
    "plain heads, d 128": (4, 4, 128, 37, 0, None),
    "window": (6, 2, 64, 50, 20, 16),
    "seven per group": (7, 1, 64, 13, 2, None),
    "two rows": (2, 1, 32, 2, 9, None),
}


@pytest.mark.parametrize("path", native_kernels.PATH_NAMES)
@pytest.mark.parametrize("case", list(CASES))
def test_native_prompt_attention_gives_the_reference(path, case):
    lib = _lib(path)
    hq, hkv, d, rows, start, window = CASES[case]
    if d % (32 if path.startswith("avx512") else 16):  # two vectors of columns: 16 or 32 floats
        d = 64
    q, k, v = _case(hq, hkv, d, rows, start)
    with torch.inference_mode():
        got = prefill_attention.attend(lib, q, k, v, window)
    assert got is not None
    torch.testing.assert_close(got, _reference(q, k, v, window), atol=2e-5, rtol=1e-4)


def test_layouts_the_kernel_does_not_take_fall_back():
    path = next((p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None), None)
    if path is None:
        pytest.skip("no native path loads here")
    lib = native_kernels.library(path)
    q, k, v = _case(4, 2, 64, 8, 0)
    assert prefill_attention.attend(lib, q, k, v, None) is not None
    with torch.enable_grad():
        wanted = q.clone().requires_grad_()
        assert prefill_attention.attend(lib, wanted, k, v, None) is None  # training keeps SDPA
    assert prefill_attention.attend(lib, q.bfloat16(), k.bfloat16(), v.bfloat16(), None) is None
    odd = _case(4, 2, 40, 8, 0)
    assert prefill_attention.attend(lib, *odd, None) is None  # 40 dims: not whole vectors
    assert prefill_attention.attend(lib, q.contiguous(), k, v, None) is None  # heads not side by side
    two = torch.cat([q, q]), torch.cat([k, k]), torch.cat([v, v])
    assert prefill_attention.attend(lib, *two, None) is None  # a batch


def _prefill_logits(model, tokens: list[int], split: int) -> torch.Tensor:
    """Logits of a prompt prefilled in two chunks (the second after cached keys)."""
    cache = KVCache(model.config, len(tokens) + 4)
    with torch.inference_mode():
        first = model(torch.tensor([tokens[:split]]), 0, cache)
        second = model(torch.tensor([tokens[split:]]), split, cache)
    return torch.cat([first, second], dim=1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_prefills_the_same_logits_with_native_attention(family, tiny_checkpoints, monkeypatch):
    path = next((p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None), None)
    if path is None:
        pytest.skip("no native path loads here")
    lib = native_kernels.library(path)
    head_dim = 32 if family not in ("qwen3", "minimax_m2", "starcoder2") else None  # their own sizes
    model = load_model(tiny_checkpoints(family, **({"head_dim": head_dim} if head_dim else {})), quant="none")
    layers = [layer.self_attn for layer in model.model.layers if isinstance(layer.self_attn, Attention)]
    tokens = torch.randint(3, 400, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    for attn in layers:
        attn.prefill_lib = None
    reference = _prefill_logits(model, tokens, 17)
    calls = []
    real = prefill_attention.attend

    def counted(*args):
        out = real(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(prefill_attention, "attend", counted)
    for attn in layers:
        attn.prefill_lib = lib
    native = _prefill_logits(model, tokens, 17)
    torch.testing.assert_close(native, reference, atol=1e-4, rtol=1e-4)
    assert calls  # every prompt chunk asked the kernel
    if head_dim and model.config.qk_norm == "none":  # q's heads side by side: the kernel took them
        assert all(calls), family


def test_the_choice_is_measured_once_and_cached(tmp_path, monkeypatch, tiny_checkpoints):
    path = next((p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None), None)
    if path is None:
        pytest.skip("no native path loads here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernel_plan, "cache_file", lambda key=None: tmp_path / "plans" / "plan.json")
    monkeypatch.setattr(kernel_plan, "others_share", lambda before: 0.0)  # (a busy machine is not cached)
    from demi.model.config import load_config

    cfg = load_config(tiny_checkpoints("qwen2", head_dim=32))
    first = kernel_plan.attention_for(cfg, path)
    assert first.source == "measured" and set(first.times_ms) == {"sdpa", path}
    assert first.kernel in ("sdpa", path) and first.kernel == min(first.times_ms, key=first.times_ms.__getitem__)
    again = kernel_plan.attention_for(cfg, path)
    assert again.source == "cache" and again.kernel == first.kernel


def test_load_arms_the_native_attention_only_where_it_was_measured_faster(monkeypatch, tiny_checkpoints):
    path = next((p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None), None)
    if path is None:
        pytest.skip("no native path loads here")
    checkpoint = tiny_checkpoints("qwen2", head_dim=32)
    for winner in ("sdpa", path):
        monkeypatch.setattr(
            kernel_plan, "attention_for", lambda cfg, p, winner=winner: kernel_plan.AttentionChoice(winner)
        )
        model = load_model(checkpoint, quant="none")
        armed = {layer.self_attn.prefill_lib is not None for layer in model.model.layers}
        assert armed == {winner == path}
