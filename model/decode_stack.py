"""Decode steps through every layer in one native call (`demi_decode_rows` in native/decode_ops.c).

On a small quantized model a decode step is mostly dispatch: about ten torch calls a layer (norms,
three matmuls, the attention step, SiLU, residual adds), each a few microseconds of Python and
ATen around little arithmetic. Where every layer is the plain dense kind (fused q/k/v without QK
norm, RMSNorm, SwiGLU, native int8 or int4 decode kernels from one library), `arm` records each
layer's weights once as C structs and `Transformer.hidden_states` hands a lone step of one sequence
to `step`: the same C functions in the same order as the layer-by-layer path, so the two agree bit
for bit (tests/model/test_decode_stack.py). The same call takes several rows: a batch of sequences
(each its own cache and position: model/batch.py) or the consecutive tokens of a speculative check
(generate.verify_logits), each row still bit for bit a lone step, with every weight read once per
call. Anything else (MoE, QK norm, bf16, unquantized weights) keeps the layer-by-layer path.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from demi.model.decoder import KVCache, RMSNorm, Transformer
from demi.model.fusion import FusedAttention, FusedMLP
from demi.model.quantize import Int4Linear, Int8Linear, layout_epoch


class _Lin(ctypes.Structure):
    _fields_ = [
        ("bits", ctypes.c_int64),
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("zero", ctypes.c_void_p),
        ("group", ctypes.c_int64),
        ("bias", ctypes.c_void_p),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("one_row", ctypes.c_int64),
        ("packed", ctypes.c_int64),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [("norm_in", ctypes.c_void_p), ("norm_post", ctypes.c_void_p)] + [
        (name, _Lin) for name in ("qkv", "o", "gate_up", "down")
    ]


def _lin(module: torch.nn.Module, lib: ctypes.CDLL) -> _Lin | None:
    """The C view of a quantized linear whose decode kernel is `lib`'s, else None."""
    if isinstance(module, Int8Linear) and module.decode_lib is lib:
        bias = module._bias_f32
        weight = module.packed if module.packed is not None else module.rows()
        return _Lin(8, weight.data_ptr(), module.weight_scale.data_ptr(), None, 0,
                    None if bias is None else bias.data_ptr(), module.out_features, module.in_features,
                    module.one_row, module.packed is not None)  # fmt: skip
    if isinstance(module, Int4Linear) and module.decode_lib is lib:
        bias = module._bias_f32
        return _Lin(4, module.packed.data_ptr(), module.scale.data_ptr(), module.zero.data_ptr(), module.group,
                    None if bias is None else bias.data_ptr(), module.out_features, module.in_features,
                    module.one_row, 0)  # fmt: skip
    return None


class DecodeStack:
    """The model's layers as C structs, a scratch buffer, and the call."""

    def __init__(self, lib: ctypes.CDLL, layers: list[_Layer], attn: FusedAttention, eps: float, inter: int):
        self.lib, self.n = lib, len(layers)
        self.layers = (_Layer * len(layers))(*layers)
        self.eps, self.window = eps, attn.window
        self.hq, self.hkv, self.d = attn.n_heads, attn.n_kv, attn.head_dim
        hidden, qkv = layers[0].o.n, (self.hq + 2 * self.hkv) * self.d
        self.row_floats = 2 * hidden + qkv + self.hq * self.d + 3 * inter
        self.scratch = torch.empty(self.row_floats)
        self.pointers: dict[int, tuple[KVCache, list[int], list[int]]] = {}  # id(cache) -> its layers' k, v
        self.epoch = layout_epoch()  # the weights' pointers are valid while no layer changed its layout

    def _cache_pointers(self, cache: KVCache) -> tuple[list[int], list[int]]:
        known = self.pointers.get(id(cache))
        if known is None or known[0] is not cache:
            known = (cache, [t.data_ptr() for t in cache.k], [t.data_ptr() for t in cache.v])
            if len(self.pointers) > 64:  # caches come and go with the prefix cache's slots
                self.pointers.clear()
            self.pointers[id(cache)] = known
        return known[1], known[2]

    def usable(self, cache: KVCache) -> bool:
        keys = cache.k[0]
        return (
            self.epoch == layout_epoch()
            and keys.dtype == torch.float32
            and keys.shape[0] == 1
            and all(t.is_contiguous() for t in cache.k + cache.v)
        )

    def step(self, x: Tensor, pos: int, cos: Tensor, sin: Tensor, cache: KVCache) -> Tensor:
        """x [1, 1, hidden] (the embedding, fp32) -> the last layer's output; writes the cache at `pos`."""
        return self.rows(x.reshape(1, -1), [pos], [cache], cos, sin).view(1, 1, -1)

    def rows(self, x: Tensor, positions: list[int], caches: list[KVCache], cos: Tensor, sin: Tensor) -> Tensor:
        """x [R, hidden] (embeddings) -> the last layer's output [R, hidden]: row r a decode step of its
        token at positions[r] in caches[r] (cos, sin [R, rot]: row r's rotation), each bit for bit a
        lone step. Rows of one cache must come in order of position (a speculative check)."""
        count = x.shape[0]
        ks: list[int] = []
        vs: list[int] = []
        lengths, lows = [], []
        for pos, cache in zip(positions, caches, strict=True):
            max_len = cache.k[0].shape[2]
            if not 0 <= pos < max_len:
                raise ValueError(f"position {pos} is outside the cache ({max_len} positions)")
            k, v = self._cache_pointers(cache)
            ks += k
            vs += v
            lengths.append(max_len)
            lows.append(max(0, pos - self.window + 1) if self.window else 0)
        if self.scratch.numel() < count * self.row_floats:
            self.scratch = torch.empty(count * self.row_floats)
        out = x.float().contiguous().clone()
        cos, sin = cos.reshape(count, -1).float().contiguous(), sin.reshape(count, -1).float().contiguous()
        ptrs, ints = ctypes.c_void_p * len(ks), ctypes.c_int64 * count
        ka, va = ptrs(*ks), ptrs(*vs)
        la, pa, wa = ints(*lengths), ints(*positions), ints(*lows)
        self.lib.demi_decode_rows(
            out.data_ptr(), count, ctypes.addressof(self.layers), self.n, ctypes.addressof(ka), ctypes.addressof(va),
            ctypes.addressof(la), ctypes.addressof(pa), ctypes.addressof(wa), self.eps, cos.data_ptr(), sin.data_ptr(),
            cos.shape[1], self.hq, self.hkv, self.d, self.scratch.data_ptr(),
        )  # fmt: skip
        return out


def arm(model: Transformer, lib: ctypes.CDLL | None) -> DecodeStack | None:
    """Give `model` a DecodeStack (`model.decode_stack`) if every layer fits, else None; arms the
    native SiLU of every fused MLP either way, so all decode paths agree."""
    for layer in model.model.layers:
        mlp = getattr(layer, "mlp", None)
        if isinstance(mlp, FusedMLP):
            mlp.step_lib = lib
    model.decode_stack = None
    if lib is None or model.dtype != torch.float32 or model.device.type != "cpu":
        return None
    layers: list[_Layer] = []
    windows: set[int | None] = set()
    epsilons: set[float] = set()
    blocks: list[Any] = list(model.model.layers)
    for layer in blocks:
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if getattr(layer, "is_moe", False) or not isinstance(attn, FusedAttention) or not isinstance(mlp, FusedMLP):
            return None
        if attn.step_lib is not lib or attn.qk_norm != "none" or not all(isinstance(n, RMSNorm) for n in norms):
            return None
        lins = [_lin(m, lib) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
        if any(x is None for x in lins) or any(n.weight.dtype != torch.float32 for n in norms):
            return None
        windows.add(attn.window)
        epsilons.update(float(n.eps) for n in norms)
        layers.append(_Layer(norms[0].weight.data_ptr(), norms[1].weight.data_ptr(), *lins))
    if len(windows) != 1 or len(epsilons) != 1:
        return None
    model.decode_stack = DecodeStack(lib, layers, blocks[0].self_attn, epsilons.pop(), model.config.intermediate_size)
    return model.decode_stack
