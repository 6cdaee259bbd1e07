"""Adaptive xPos: RoPE's rotation plus a per-pair scale that decays with relative distance.

xPos (Sun et al., 2022, "A Length-Extrapolatable Transformer") keeps RoPE's rotation and scales
rotary pair i of a query at position n by zeta_i^(n/B) and of a key at position m by zeta_i^(-m/B),
with zeta_i = (i / (d/2) + gamma) / (1 + gamma) for the d rotary dimensions (gamma 0.4 and scale
base B 512 in the paper). Pair i of the score q_n . k_m then carries zeta_i^((n-m)/B) on top of
RoPE's rotation by n - m: a factor of the distance alone (relative only), below 1 and shrinking as
the distance grows for every pair (zeta_i < 1), fastest for the high-frequency pairs (small i)
whose rotations alone would make far keys look near. That is the decay that keeps attention from
leaning on distances a model never saw, which the paper credits for extrapolating past the
training length.

"Adaptive": the scale base adapts to layer depth (`ModelConfig.xpos_scale_base_at`). With
`xpos_adaptive`, layer l of N uses B_l = B * 2^(2l/(N-1) - 1): B/2 in the first layer, 2B in the
last, growing geometrically (a constant ratio between neighbouring layers) with B itself at the
middle depth, so B keeps its meaning as the stack's typical (geometric mean) scale. Why depth:
the first layers of a code model attend mostly to the last few tokens (the same line, the open
bracket), where a faster decay is a prior that costs nothing, while the deep layers retrieve from
far away (a definition hundreds of lines up), where the paper's single B would damp exactly the
long-range scores they need. A per-layer gamma would reshape which pairs decay instead of how far
the window reaches; the scale base is the one knob that sets the distance. Each layer still uses
one B_l for its queries and keys, so its scores stay relative only.

Numerics: zeta^(n/B) leaves float range over long positions (zeta_0 = 0.29: at n = 16k and
B = 256 the key scale is e^80). Only n - m matters, so positions are counted from a fixed centre
R (half the config's `context_limit`), the paper's trick of normalising around an offset: queries
take zeta^((n-R)/B) and keys zeta^(-(m-R)/B), whose product is unchanged. R is a property of the
config, so a key written into the KV cache at its position stays right for every later query
(decode through the cache equals a full forward) and never needs rescaling. The config refuses
a context whose largest exponent |n-R| |ln zeta_0| / B would pass `XPOS_MAX_EXPONENT` (e^60:
fp32 and bf16 hold the scaled q and k with room for their own magnitudes); float16 cannot (its
range ends at e^11) and is refused at run time. Exponents are computed in float64, so the q and
k scales of positions 16k apart still multiply to zeta^((n-m)/B) within fp32's rounding.

Where it runs: `decoder.Attention` applies `XPos` to its rotated q and k (every softmax layer;
lightning layers carry no positions). native/decode_ops.c rotates q and k with the same table, so
xPos layers take no native decode library (`ModelConfig.native_rotary` is False) and stay on
torch's path; the prefix cache does not shift xPos keys (`rope.shifts_exactly`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from demi.model.config import ModelConfig
from demi.model.errors import ConfigError


def zetas(cfg: ModelConfig) -> Tensor:
    """zeta_i for the rotary pairs, float64: (i / (d/2) + gamma) / (1 + gamma), from gamma/(1+gamma) up."""
    half = cfg.rotary_dim // 2
    gamma = cfg.xpos_gamma
    return (torch.arange(half, dtype=torch.float64, device="cpu") / half + gamma) / (1 + gamma)


class XPos:
    """One layer's xPos scales: `XPos(cfg, layer)(q, k, start)` scales rotated q and k [B, heads, T, D]
    (positions start .. start+T-1) by zeta^((n-R)/B_l) and zeta^(-(n-R)/B_l) on their rotary dims."""

    def __init__(self, cfg: ModelConfig, layer: int):
        self.rot, self.head_dim = cfg.rotary_dim, cfg.head_dim
        self.scale_base = cfg.xpos_scale_base_at(layer)
        self.centre = cfg.context_limit // 2
        # ln(zeta_i) / B_l per rotary pair, as Python floats: the model is built on the meta device,
        # and tensors made at each call land where q is
        self.rates = (zetas(cfg).log() / self.scale_base).tolist()

    def exponents(self, start: int, count: int, device: torch.device) -> Tensor:
        """(n - R) ln(zeta_i) / B_l [count, rotary_dim] in float64 for positions start .. start+count-1,
        each pair's value on both of its dims (rotate-half layout: dims i and i + d/2)."""
        pos = torch.arange(start - self.centre, start - self.centre + count, dtype=torch.float64, device=device)
        rates = torch.tensor(self.rates, dtype=torch.float64, device=device)
        half = pos[:, None] * rates[None, :]
        return torch.cat((half, half), dim=-1)

    def scales(self, start: int, count: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The query and key factors [count, head_dim] (1 on dims past the rotary ones)."""
        if dtype == torch.float16:
            raise ConfigError(
                "xPos scales queries and keys by up to e^60, past float16's range; run the model in float32 or bfloat16"
            )
        e = self.exponents(start, count, device)
        if self.rot < self.head_dim:
            e = torch.cat((e, e.new_zeros(count, self.head_dim - self.rot)), dim=-1)
        return e.exp().to(dtype), (-e).exp().to(dtype)

    def __call__(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:
        q_scale, k_scale = self.scales(start, q.shape[-2], q.device, q.dtype)
        return q * q_scale, k * k_scale


def layer_xpos(cfg: ModelConfig, layer: int) -> XPos | None:
    """The layer's `XPos`, or None for a RoPE-only config."""
    return XPos(cfg, layer) if cfg.position_embedding == "xpos" else None
