"""The inference layout: projections that read the same input fused into one matmul.

Checkpoints (and training) keep Hugging Face's separate q/k/v and gate/up projections. For
inference `load_model` swaps each layer's attention and dense MLP for a fused module here, once,
before the weights are assigned (as gpt-fast swaps in quantized modules), so no `forward` asks
which layout it has; the checkpoint's rows are concatenated to match (`fuse_state_dict`) and split
again when a model is saved (`unfuse_state_dict`).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demi.model import decode_ops
from demi.model.config import ModelConfig
from demi.model.decoder import MLP, Attention, Block, KVCache, Mask, Transformer, decode_ops_ready
from demi.model.quantize import DECODE_ROWS
from demi.model.rope import apply_rotary

# fused name: the separate projections it concatenates, in row order
FUSIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class FusedAttention(Attention):
    """Attention with q, k and v in one matmul (and without QK norm one rotary pass over the
    adjacent q and k heads): the inference layout `fuse_modules` swaps in."""

    def projections(self, hidden: int, q_dim: int, kv_dim: int, bias: bool) -> None:
        self.qkv_proj = nn.Linear(hidden, q_dim + 2 * kv_dim, bias=bias)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        hq, hkv, d = self.n_heads, self.n_kv, self.head_dim
        qkv = self.qkv_proj(x)
        if self.qk_norm != "none":
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
            return self.heads(q, k, v, cos, sin)
        if b == 1 and self.step_lib is not None and decode_ops_ready(qkv):
            qkv = decode_ops.rotate_heads(self, qkv.view(t, -1), cos, sin).view(b, t, -1)  # in place, one pass
            q = qkv[..., : hq * d].view(b, t, hq, d).transpose(1, 2)
            k = qkv[..., hq * d : (hq + hkv) * d].view(b, t, hkv, d).transpose(1, 2)
            return q, k, qkv[..., (hq + hkv) * d :].view(b, t, hkv, d).transpose(1, 2)
        qk = apply_rotary(qkv[..., : (hq + hkv) * d].view(b, t, hq + hkv, d).transpose(1, 2), cos, sin)
        return qk[:, :hq], qk[:, hq:], qkv[..., (hq + hkv) * d :].view(b, t, hkv, d).transpose(1, 2)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Mask, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        # a decode step (or a speculative check, row by row): one native call per row
        if b == 1 and (t == 1 or isinstance(mask, list)) and decode_ops.usable(self, x, cache):
            assert cache is not None
            rows = decode_ops.attend_rows(
                self, self.qkv_proj(x).view(t, -1), cos, sin, list(range(start, start + t)), [cache] * t
            )
            return self.o_proj(rows.view(1, t, -1))
        return super().forward(x, cos, sin, start, mask, cache)


class FusedMLP(nn.Module):
    """SwiGLU with gate and up in one matmul (swapped in at load, like FusedAttention)."""

    def __init__(self, hidden: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden, 2 * inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)
        self.step_lib: ctypes.CDLL | None = None  # native SiLU for decode-sized rows (decode_stack.arm)

    def forward(self, x: Tensor) -> Tensor:
        gate_up = self.gate_up_proj(x)
        rows = gate_up.numel() // gate_up.shape[-1]
        if self.step_lib is not None and rows <= DECODE_ROWS and decode_ops_ready(gate_up):
            # every decode path (a lone step in decode_stack's C, a batch, a speculative check) takes
            # the same SiLU, so they agree bit for bit
            gate_up = gate_up.contiguous()
            act = torch.empty(*gate_up.shape[:-1], gate_up.shape[-1] // 2)
            self.step_lib.demi_silu_mul(gate_up.data_ptr(), rows, act.shape[-1], act.data_ptr())
            return self.down_proj(act)
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def fuse_modules(model: Transformer) -> None:
    """Swap every layer's attention and dense MLP for its fused form, on the meta device: the
    weights come from a fused state (`fuse_state_dict`) assigned afterwards."""
    cfg = model.config
    with torch.device("meta"):
        for i, block in enumerate(model.model.layers):
            assert isinstance(block, Block)
            if isinstance(block.self_attn, Attention):  # a lightning layer (lightning.py) keeps its own
                block.self_attn = FusedAttention(cfg, i)
            if isinstance(getattr(block, "mlp", None), MLP):  # SwiGLU only (StarCoder2's GELU MLP has no gate)
                block.mlp = FusedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)


def fuse_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate the rows of fused projections (weights, biases and any per-row scales)."""
    out = dict(state)
    for key in list(state):
        for fused, parts in FUSIONS.items():
            tag = f".{parts[0]}."
            if tag not in key:
                continue
            prefix, suffix = key.split(tag, 1)
            names = [f"{prefix}.{p}.{suffix}" for p in parts]
            if all(n in out for n in names):
                out[f"{prefix}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def unfuse_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The Hugging Face names again: split fused rows back into q/k/v and gate/up."""
    sizes = {
        "qkv_proj": [cfg.num_attention_heads * cfg.head_dim] + [cfg.num_key_value_heads * cfg.head_dim] * 2,
        "gate_up_proj": [cfg.intermediate_size] * 2,
    }
    out = {}
    for key, value in state.items():
        fused = next((f for f in FUSIONS if f".{f}." in key), None)
        if fused is None or _in_lightning_layer(key, cfg):  # a lightning layer's qkv_proj is its checkpoint's
            out[key] = value
            continue
        prefix, suffix = key.split(f".{fused}.", 1)
        for part, piece in zip(FUSIONS[fused], value.split(sizes[fused], dim=0)):
            out[f"{prefix}.{part}.{suffix}"] = piece
    return out


def _in_lightning_layer(key: str, cfg: ModelConfig) -> bool:
    """Whether checkpoint name `key` (model.layers.N....) belongs to a lightning layer."""
    parts = key.split(".")
    return len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit() and cfg.is_lightning(int(parts[2]))
