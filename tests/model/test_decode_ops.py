"""Native decode ops (model/decode_ops.py, native/decode_ops.c): a decode step's attention, RMSNorm
and a prefill's RoPE in C give what torch's ops give, for every family (GQA, a sliding window,
biases, tied heads, experts), with partial rotary and scaled RoPE, writing the same keys and values
into the cache; SwiGLU's SiLU-and-multiply on every kernel path is torch's to float rounding; a
thread's idle OpenMP workers can be ended; QK-norm families and `DEMI_KERNEL=torch` keep torch's ops,
training never takes the native norm, and a position outside the cache is refused before anything is
written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hf_models import FAMILIES

from demi.model import decode_ops, native_kernels
from demi.model.decoder import KVCache, RMSNorm, native_rms_norm
from demi.model.generate import decode_one_token, prefill
from demi.model.loading import load_model


def _native_off(model) -> dict:
    """Turn the native ops off on `model`; returns what to give back."""
    saved = {m: m.step_lib for m in model.modules() if hasattr(m, "step_lib")}
    for m in saved:
        m.step_lib = None
    return saved


def _decode_both_ways(model, prompt: list[int], steps: int) -> tuple[torch.Tensor, torch.Tensor, KVCache, KVCache]:
    """Logits [steps, V] of greedy steps with the native ops and with torch's, and both caches."""
    out, caches = [], []
    for native in (True, False):
        saved = {} if native else _native_off(model)
        cache = KVCache(model.config, len(prompt) + steps + 4)
        logits, token = [], prompt[-1]
        with torch.inference_mode():
            prefill(model, torch.tensor([prompt[:-1]]), 0, cache)
            for i in range(steps):
                row = decode_one_token(model, torch.tensor([[token]]), len(prompt) - 1 + i, cache)
                logits.append(row)
                token = int(row.argmax())
        for m, lib in saved.items():
            m.step_lib = lib
        out.append(torch.cat(logits))
        caches.append(cache)
    return out[0], out[1], caches[0], caches[1]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_native_decode_steps_give_torchs_logits_and_cache(family, tiny_checkpoints):
    model = load_model(tiny_checkpoints(family), quant="none")
    armed = [layer.self_attn.step_lib is not None for layer in model.model.layers]
    assert all(armed) == (model.config.qk_norm == "none"), family  # Qwen3's QK norm keeps torch's attention
    assert all(m.step_lib is not None for m in model.modules() if isinstance(m, RMSNorm))
    prompt = torch.randint(3, 400, (14,), generator=torch.Generator().manual_seed(1)).tolist()
    native, reference, cache, ref_cache = _decode_both_ways(model, prompt, steps=12)  # past Mistral's window of 8
    torch.testing.assert_close(native, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(native.argmax(-1), reference.argmax(-1))
    for layer in range(model.config.num_hidden_layers):
        torch.testing.assert_close(cache.k[layer], ref_cache.k[layer], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[layer], ref_cache.v[layer], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rope", ["partial", "yarn", "llama3"])
def test_native_decode_rotates_as_torch_does(rope, tiny_checkpoints):
    """Partial rotary (the first half of each head rotated) and scaled frequencies."""
    config = {"partial_rotary_factor": 0.5} if rope == "partial" else {"rope": rope}
    model = load_model(tiny_checkpoints("llama", **config), quant="none")
    assert model.model.layers[0].self_attn.step_lib is not None
    if rope == "partial":
        assert model.config.rotary_dim == model.config.head_dim // 2
    prompt = torch.randint(3, 400, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    native, reference, _, _ = _decode_both_ways(model, prompt, steps=6)
    torch.testing.assert_close(native, reference, atol=1e-4, rtol=1e-4)


def test_native_rms_norm_is_torchs_and_training_keeps_torchs(tiny_checkpoints):
    model = load_model(tiny_checkpoints("llama"), quant="none")
    norm = model.model.norm
    assert norm.step_lib is not None
    x = torch.randn(5, 3, norm.weight.shape[0])
    with torch.inference_mode():
        got = norm(x)
    want = torch.nn.functional.rms_norm(x, norm.weight.shape, norm.weight, norm.eps)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(native_rms_norm(norm.step_lib, x, norm.weight, norm.eps), want, atol=1e-6, rtol=1e-5)
    # with gradients wanted the norm is torch's, so training gets its backward pass
    trained = RMSNorm(norm.weight.shape[0], norm.eps)
    trained.step_lib = norm.step_lib
    y = trained(torch.randn(2, norm.weight.shape[0], requires_grad=True))
    assert y.requires_grad and y.grad_fn is not None
    y.sum().backward()
    assert trained.weight.grad is not None


@pytest.mark.parametrize("path", native_kernels.candidate_paths())
def test_native_silu_mul_is_torchs_on_every_path(path):
    lib = native_kernels.library(path)
    assert lib is not None, path
    gen = torch.Generator().manual_seed(3)
    for inter in (64, 37):  # whole vectors, and a short last vector on every vector width
        gate_up = torch.randn(3, 2 * inter, generator=gen) * 6
        gate_up[0, :8] = torch.tensor([0.0, -0.0, 88.0, -88.0, 200.0, -200.0, 1e-30, -1e-30])
        out = torch.full((3, inter), float("nan"))
        lib.demi_silu_mul(gate_up.data_ptr(), 3, inter, out.data_ptr())
        gate, up = gate_up.split(inter, dim=-1)
        want = torch.nn.functional.silu(gate.double()) * up.double()
        torch.testing.assert_close(out.double(), want, atol=1e-30, rtol=3e-7)


def test_a_position_outside_the_cache_is_refused_before_anything_is_written(tiny_checkpoints):
    model = load_model(tiny_checkpoints("llama"), quant="none")
    attn = model.model.layers[0].self_attn
    cache = KVCache(model.config, 8)
    before = [t.clone() for t in cache.k + cache.v]
    cos, sin = model.rotary_table(torch.device("cpu")).lookup(8, 1, torch.device("cpu"))
    qkv = torch.randn(1, (attn.n_heads + 2 * attn.n_kv) * attn.head_dim)
    with pytest.raises(ValueError, match="outside the cache"):
        decode_ops.attend_rows(attn, qkv, cos, sin, [8], [cache])
    assert all(torch.equal(a, b) for a, b in zip(before, cache.k + cache.v))


def test_torch_kernels_forced_keep_torchs_ops(tiny_checkpoints, monkeypatch):
    monkeypatch.setenv("DEMI_KERNEL", "torch")
    model = load_model(tiny_checkpoints("llama"), quant="none")
    assert all(getattr(m, "step_lib", None) is None for m in model.modules())
    bf16 = load_model(tiny_checkpoints("llama"), quant="none", dtype="bfloat16")
    monkeypatch.delenv("DEMI_KERNEL")
    assert decode_ops.step_library(bf16) is None  # native ops are fp32 only


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
def test_releasing_idle_threads_ends_this_threads_openmp_workers(tiny_checkpoints):
    """The loading thread's idle OpenMP team is ended (LocalModel.load does it), so the model runner's
    thread is the one team libgomp manages and its workers spin between regions instead of sleeping."""
    load_model(tiny_checkpoints("llama"), quant="int8")  # loads a native library
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a team of two whatever the suite runs with
    try:
        torch.ones(1 << 22).sum()  # a parallel region on this thread: its worker stays, idle
        before = len(os.listdir("/proc/self/task"))
        assert native_kernels.release_idle_threads()
        after = len(os.listdir("/proc/self/task"))
        assert after <= before - 1
        torch.ones(1 << 22).sum()  # the next region starts a team again
        assert len(os.listdir("/proc/self/task")) >= after + 1
    finally:
        torch.set_num_threads(threads)
