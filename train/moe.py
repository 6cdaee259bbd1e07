"""Mixture-of-experts training: top-k routing with a capacity factor and the two router losses.

`enable_moe_training(model, capacity_factor)` switches every `MoE` block of a decoder to
`TrainingMoE` (same parameters and names, so checkpoints are unchanged). While the model is in
training mode each expert takes at most `capacity = ceil(capacity_factor * tokens * k / experts)`
tokens (first choices before second choices, then in token order); the rest of that expert's
assignments are dropped (the residual connection carries those tokens). In eval mode nothing
is dropped: inference is the engine's own MoE forward.

Each forward leaves its losses on the module (`last_losses`):

- load balancing (Switch Transformer / Mixtral): `E * sum_e f_e * P_e`, with f_e the share of
  the token-to-expert assignments that went to expert e and P_e the mean router probability of
  e. It is 1.0 when routing is uniform and grows as it collapses onto few experts.
- router z-loss (ST-MoE): `mean(logsumexp(logits)^2)`, which keeps router logits small.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from demi.model.decoder import MoE, Transformer


class TrainingMoE(MoE):
    capacity_factor: float = 1.25
    last_losses: dict[str, Tensor] | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return super().forward(x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, idx, logits = self.route(flat)
        n, k = idx.shape
        num_experts = self.gate.out_features
        capacity = max(1, math.ceil(self.capacity_factor * n * k / num_experts))
        # Priority: every token's first choice, then every second choice, ... (slot-major order).
        order = idx.t().reshape(-1)  # [k*n]
        onehot = torch.nn.functional.one_hot(order, num_experts)
        position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # rank of each assignment at its expert
        keep = (position < capacity).view(k, n).t()  # [n, k]
        weights = weights.to(x.dtype) * keep
        out = torch.zeros_like(flat)
        for e in idx.unique().tolist():
            tok, slot = torch.where((idx == e) & keep)
            if len(tok):
                out.index_add_(0, tok, self.experts[e](flat[tok]) * weights[tok, slot, None])
        self.last_losses = router_losses(logits, idx, self.router)
        self.last_losses["dropped"] = (1 - keep.float().mean()).detach()
        return out.view(shape), logits


def router_losses(logits: Tensor, idx: Tensor, router: str = "softmax") -> dict[str, Tensor]:
    """Load-balancing loss and z-loss from router logits [N, E] and the chosen experts [N, k]."""
    logits = logits.float()
    num_experts = logits.shape[-1]
    if router == "sigmoid":
        scores = torch.sigmoid(logits)
        probs = scores / scores.sum(-1, keepdim=True)
    else:
        probs = torch.softmax(logits, dim=-1)
    counts = torch.zeros(num_experts, device=logits.device).index_add_(
        0, idx.reshape(-1), torch.ones(idx.numel(), device=logits.device)
    )
    f = counts / idx.numel()
    balance = num_experts * (f * probs.mean(0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return {"balance": balance, "z": z}


def enable_moe_training(model: Transformer, capacity_factor: float = 1.25) -> list[TrainingMoE]:
    """Switch the model's MoE blocks to `TrainingMoE` in place; returns them."""
    if capacity_factor <= 0:
        raise ValueError("capacity_factor must be > 0")
    blocks: list[TrainingMoE] = []
    for module in model.modules():
        if isinstance(module, MoE):
            module.__class__ = TrainingMoE
            assert isinstance(module, TrainingMoE)
            module.capacity_factor = capacity_factor
            module.last_losses = None
            blocks.append(module)
    return blocks


def collect_losses(blocks: list[TrainingMoE]) -> dict[str, Tensor]:
    """Mean of each loss over the MoE layers of the last forward."""
    found = [b.last_losses for b in blocks if b.last_losses is not None]
    if not found:
        return {}
    return {key: torch.stack([f[key] for f in found]).mean() for key in found[0]}
