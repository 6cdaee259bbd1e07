"""A prompt's causal attention in one native call (native/prefill_attention.c) instead of torch's SDPA.

SDPA on a CPU runs a prefill's attention as blocked GEMMs per query head; for the small heads of
code models (64 dims, several query heads per key head) the native tiles score all the query heads
of a key head together and skip the masked half of the diagonal blocks: 2.6 -> 1.5 ms a layer for
demi-tiny at 467 tokens on an AMD EPYC (Zen 4) with the AVX2 path forced. Whether it runs is
measured per machine (`kernel_plan.attention_for`); `decode_ops.attach` arms it. Inference only:
a call with gradients wanted, or a layout the kernel does not take, returns None and the caller
keeps SDPA.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor


def attend(lib: ctypes.CDLL, q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor | None:
    """Attention rows [T, heads * D] for queries q [1, heads, T, D] at the last T of the L positions
    of keys and values k, v [1, kv heads, L, D], causal (and within `window` positions when given);
    None where the native call does not fit (dtype, gradients, a layout without contiguous heads, a
    head size the kernel does not take)."""
    grad = torch.is_grad_enabled()
    for t in (q, k, v):
        if t.dtype != torch.float32 or t.device.type != "cpu" or (grad and t.requires_grad) or t.stride(-1) != 1:
            return None
    _, hq, rows, d = q.shape
    hkv, keys = k.shape[1], k.shape[2]
    if q.shape[0] != 1 or k.shape[0] != 1 or keys < rows or v.shape[1:3] != k.shape[1:3] or q.stride(1) != d:
        return None
    out = torch.empty(rows, hq * d)
    failed = lib.demi_prefill_attention(
        q.data_ptr(), q.stride(2), k.data_ptr(), k.stride(2), k.stride(1), v.data_ptr(), v.stride(2), v.stride(1),
        keys - rows, rows, hq, hkv, d, window or 0, out.data_ptr(),
    )  # fmt: skip
    return None if failed else out
