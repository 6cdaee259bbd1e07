"""Inference glue in native calls (native/decode_ops.c) instead of chains of torch dispatches.

A one-token step's attention is little arithmetic spread over many dispatches (views, the
rotation, two cache writes, SDPA's checks): about 80 us a layer on a 2-core Xeon, more than the
layer's matmuls on a small model. `attend_rows` does it per row in C: rotate the query and key
heads, write the key and value into the cache, attend. Every decode goes through it (a lone step,
a batch's rows, a speculative check's rows), so they agree bit for bit. A prompt's attention takes
prefill_attention.py's tiles where `kernel_plan.attention_for` measured them faster than SDPA. The
step applies to fused attention without QK norm, with a one-sequence fp32 cache.

RMSNorm (`decoder.native_rms_norm`) runs natively for every fp32 inference row, prefill too (one
pass instead of torch's composite: 0.05 ms against 0.23 for 909 rows of 384), and so does a
prefill's RoPE on the fused q/k projection (`rotate_heads`, 0.14 ms against 0.52). SwiGLU's
SiLU-and-multiply runs in C (`demi_silu_mul`, its exponential on vectors) for decode-sized rows,
where it spares dispatches and lets `decode_stack` run a whole step in one call; a prefill keeps
torch's SiLU.
Training (gradients wanted) keeps torch's ops. `attach` arms all of it at load on a CPU in fp32
where a native library loads (`DEMI_KERNEL=torch` keeps torch's ops).
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from demi.model import native_kernels
from demi.model.decoder import Attention, KVCache, RMSNorm, Transformer


def step_path(model: Transformer) -> str | None:
    """The native path whose decode attention `model` should use: the plan's decode kernels', else the
    fastest path this CPU runs; None where none loads or the model is not fp32 on a CPU."""
    if model.device.type != "cpu" or model.dtype != torch.float32:
        return None
    plan = getattr(model, "kernel_plan", None)
    names = native_kernels.candidate_paths()
    if plan is not None and plan.decode in names:
        names = [plan.decode]
    return next((name for name in names if native_kernels.library(name) is not None), None)


def step_library(model: Transformer) -> ctypes.CDLL | None:
    """The library of `step_path`, or None."""
    path = step_path(model)
    return native_kernels.library(path) if path else None


def attach(model: Transformer) -> None:
    """Arm the native RMSNorm and decode attention wherever they fit, and the native prompt attention
    where this machine measured it faster than SDPA (kernel_plan.attention_for)."""
    path = step_path(model)
    lib = native_kernels.library(path) if path else None
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.step_lib = lib
    prompt_lib = None
    if path is not None and any(isinstance(layer.self_attn, Attention) for layer in model.model.layers):
        from demi.model import kernel_plan  # (kernel_plan imports quantize, which imports the decoder)

        prompt_lib = lib if kernel_plan.attention_for(model.config, path).kernel == path else None
    for layer in model.model.layers:
        attn = layer.self_attn
        if not isinstance(attn, Attention):  # a lightning layer keeps its own
            continue
        attn.prefill_lib = prompt_lib
        fused = getattr(attn, "qkv_proj", None) is not None  # fusion.FusedAttention (which imports this)
        if attn.qk_norm == "none" and fused:
            attn.step_lib = lib
    from demi.model import decode_stack  # (it imports fusion, which imports this module)

    decode_stack.arm(model, lib)


def usable(attn: Attention, x: Tensor, cache: KVCache | None) -> bool:
    """Whether rows of `x` can take the native step against `cache`."""
    if attn.step_lib is None or cache is None or x.dtype != torch.float32:
        return False
    keys = cache.k[attn.layer]
    return keys.dtype == torch.float32 and keys.shape[0] == 1 and keys.is_contiguous()


def _native_rows(attn: Attention, qkv: Tensor, cos: Tensor, sin: Tensor) -> tuple[ctypes.CDLL, Tensor, Tensor, Tensor]:
    """The library and the arguments as the C side reads them: projection rows and one cos/sin row
    each, fp32 and contiguous."""
    lib = attn.step_lib
    assert lib is not None
    rows = qkv.shape[0]
    cos, sin = cos.reshape(rows, -1).float().contiguous(), sin.reshape(rows, -1).float().contiguous()
    return lib, qkv.contiguous(), cos, sin


def rotate_heads(attn: Attention, qkv: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the query and key heads of projection rows `qkv` [T, (heads + 2 kv) * D] in place, row t
    by cos[t], sin[t] (a prefill's rows); returns `qkv`, contiguous."""
    lib, qkv, cos, sin = _native_rows(attn, qkv, cos, sin)
    rows = qkv.shape[0]
    lib.demi_rotate_heads(
        qkv.data_ptr(), rows, qkv.shape[1], attn.n_heads + attn.n_kv, attn.head_dim, cos.data_ptr(), sin.data_ptr(),
        cos.shape[1],
    )  # fmt: skip
    return qkv


def attend_rows(
    attn: Attention, qkv: Tensor, cos: Tensor, sin: Tensor, positions: list[int], caches: list[KVCache]
) -> Tensor:
    """Attention outputs [R, heads * D] for projection rows `qkv` [R, (heads + 2 kv) * D] (rotated
    in place), row i at `positions[i]` with rotation cos[i], sin[i] against `caches[i]`, whose key
    and value at that position are written first."""
    lib, qkv, cos, sin = _native_rows(attn, qkv, cos, sin)
    hq, hkv, d = attn.n_heads, attn.n_kv, attn.head_dim
    out = torch.empty(qkv.shape[0], hq * d)
    window = attn.window
    for i, (pos, cache) in enumerate(zip(positions, caches)):
        keys, values = cache.k[attn.layer], cache.v[attn.layer]
        if not 0 <= pos < keys.shape[2]:
            raise ValueError(f"position {pos} is outside the cache ({keys.shape[2]} positions)")
        lib.demi_attend_step(
            qkv[i].data_ptr(),
            cos[i].data_ptr(),
            sin[i].data_ptr(),
            cos.shape[1],
            keys.data_ptr(),
            values.data_ptr(),
            keys.shape[2],
            pos,
            max(0, pos - window + 1) if window else 0,
            hq,
            hkv,
            d,
            out[i].data_ptr(),
        )
    return out
