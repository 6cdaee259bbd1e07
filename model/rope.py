"""Rotary position embeddings in Hugging Face's rotate-half layout, with the usual scalings.

`inv_frequencies` returns the per-pair inverse frequencies and the factor cos/sin are
multiplied by (only YaRN uses one). Only dynamic NTK depends on the sequence length, so
every other kind is tabulated once and indexed by position.
"""

from __future__ import annotations

import math

import torch

from demi.model.config import ModelConfig
from demi.model.errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def inv_frequencies(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for `cfg.rotary_dim` dims; `seq_len` matters only for dynamic NTK."""
    dim, base = cfg.rotary_dim, cfg.rope_theta
    s = cfg.rope_scaling or {}
    kind = s.get("rope_type", "default")
    if kind == "default":
        return _base_inv_freq(base, dim), 1.0
    if kind not in ROPE_TYPES:
        raise ConfigError(f"unsupported rope_scaling type {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    factor = float(s.get("factor", 1.0))
    if kind == "linear":
        return _base_inv_freq(base, dim) / factor, 1.0
    if kind == "dynamic":
        max_pos = cfg.max_position_embeddings
        seq_len = max(seq_len or max_pos, max_pos)
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim), 1.0
    if kind == "llama3":
        return _llama3(_base_inv_freq(base, dim), s, factor), 1.0
    return _yarn(cfg, s, dim, base, factor)


def _llama3(inv_freq: torch.Tensor, s: dict, factor: float) -> torch.Tensor:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between."""
    low, high = float(s["low_freq_factor"]), float(s["high_freq_factor"])
    old_ctx = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return torch.where(medium, blended, scaled)


def _yarn(cfg: ModelConfig, s: dict, dim: int, base: float, factor: float) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, extrapolate high ones, ramp between; scale attention."""
    orig = s.get("original_max_position_embeddings") or cfg.max_position_embeddings
    if not s.get("factor"):
        factor = cfg.max_position_embeddings / orig

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv_freq, float(attn)


class RotaryTable:
    """cos/sin for positions, cached for static scalings and recomputed for dynamic NTK."""

    def __init__(self, cfg: ModelConfig, length: int, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.dynamic = (cfg.rope_scaling or {}).get("rope_type") == "dynamic"
        self.length = max(length, 1)
        self.cos, self.sin = self._table(inv_frequencies(cfg), torch.arange(self.length), device)

    @staticmethod
    def _table(
        freq: tuple[torch.Tensor, float], pos: torch.Tensor, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, scale = freq
        angles = pos.to(device=device, dtype=torch.float32)[:, None] * inv_freq.to(device)[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos() * scale, emb.sin() * scale

    def lookup(self, start: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [count, rotary_dim] for positions start .. start+count-1 (fp32)."""
        end = start + count
        if self.dynamic and end > self.cfg.max_position_embeddings:
            pos = torch.arange(start, end)
            return self._table(inv_frequencies(self.cfg, seq_len=end), pos, device)
        if end > self.length:  # grow geometrically; rare (only past the allocated context)
            self.length = max(end, 2 * self.length)
            self.cos, self.sin = self._table(inv_frequencies(self.cfg), torch.arange(self.length), self.cos.device)
        return self.cos[start:end], self.sin[start:end]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` dims of x [B, heads, T, D] in rotate-half layout."""
    rot = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x_rot, x_pass = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    return out if x_pass is None else torch.cat((out, x_pass), dim=-1)


def shifts_exactly(cfg: ModelConfig) -> bool:
    """Whether cached keys can be moved to other positions by one more rotation: every scaling but
    dynamic NTK, whose frequencies change with the sequence length, and not under xPos, whose keys
    also carry a scale of their position (model/xpos.py) that a rotation does not move."""
    if not cfg.native_rotary:
        return False
    return (cfg.rope_scaling or {}).get("rope_type", "default") != "dynamic"


def shift_keys(cfg: ModelConfig, k: torch.Tensor, delta: int) -> torch.Tensor:
    """Keys [..., T, D] rotated at position p, as if rotated at p + delta: rotations add up, so
    one more rotation by delta (without YaRN's attention factor, already in the keys) moves them."""
    if not shifts_exactly(cfg):
        raise ConfigError("cached keys of this model cannot be moved by a rotation (dynamic NTK, xPos); recompute them")
    inv_freq, _ = inv_frequencies(cfg)
    angles = (float(delta) * inv_freq.to(k.device))[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return apply_rotary(k, emb.cos(), emb.sin())
