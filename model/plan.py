"""Deployment plans: which precision and context fit a machine, following the seed design's targets.

mobile (6-8 GB RAM): int4 with a reduced context; edge (8-12 GB): int8 with the full context;
desktop (12-16 GB): bf16/fp16; server (16 GB and more): full precision. `auto` picks by device
and free memory: the most precise plan whose weights and KV cache fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from demi.model.config import ModelConfig
from demi.model.errors import DemiUserError
from demi.model.info import kv_cache_bytes, weight_bytes


@dataclass(frozen=True)
class Target:
    name: str
    ram_gb: tuple[float, float]
    precision: str  # fp32 | bf16 | int8 | int4
    context_fraction: float  # of the model's context


TARGETS = {
    "mobile": Target("mobile", (6, 8), "int4", 0.25),
    "edge": Target("edge", (8, 12), "int8", 1.0),
    "desktop": Target("desktop", (12, 16), "bf16", 1.0),
    "server": Target("server", (16, float("inf")), "fp32", 1.0),
}
_QUANT_OF = {"fp32": "none", "bf16": "none", "int8": "int8", "int4": "int4"}


def plan_for(cfg: ModelConfig, target: str, context: int | None = None) -> dict:
    """The precision, context and memory a target implies for this model."""
    if target not in TARGETS:
        raise DemiUserError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    ctx = context or max(512, int(min(cfg.max_position_embeddings, 32768) * t.context_fraction))
    weights = weight_bytes(cfg, t.precision)
    kv = kv_cache_bytes(cfg, ctx, "fp32" if t.precision == "fp32" else "bf16")
    budget = t.ram_gb[0] * 2**30
    return {
        "target": t.name,
        "ram_gb": list(t.ram_gb),
        "precision": t.precision,
        "quant": _QUANT_OF[t.precision],
        "context": ctx,
        "weight_bytes": weights,
        "kv_bytes": kv,
        "total_bytes": weights + kv,
        "fits_low_end": weights + kv <= budget * 0.75,
    }


def auto_quant(cfg: ModelConfig, device: torch.device, free: int | None = None, context: int = 4096) -> str:
    """`--quant auto`: CPU prefers int8 (bandwidth-bound decode: fewer bytes is faster) unless only
    int4 fits; CUDA keeps half precision while it fits in 80% of free memory, then int8, then nf4."""
    from demi.model.loading import available_memory

    free = available_memory(device) if free is None else free
    kv = kv_cache_bytes(cfg, context, "bf16")
    fits = {p: weight_bytes(cfg, p) + kv <= 0.8 * free for p in ("bf16", "int8", "int4")}
    if device.type == "cuda":
        return "none" if fits["bf16"] else "int8" if fits["int8"] else "nf4"
    return "int8" if fits["int8"] or not fits["int4"] else "int4"
