"""StarCoder2's two pieces that the other families do not have: LayerNorm with a bias, and a plain
GELU MLP (`c_fc`, GELU, `c_proj`, both with biases), named as its checkpoints name them.

Everything else in StarCoder2 is the shared decoder: grouped-query attention with biases on q, k,
v and o, full RoPE, an optional sliding window, tied embeddings by default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from demi.model.config import GELU_APPROXIMATIONS, ModelConfig


class GeluMLP(nn.Module):
    """c_proj(GELU(c_fc(x))): StarCoder2's feed-forward; `hidden_act` picks the tanh or the exact GELU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.c_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.approximate = GELU_APPROXIMATIONS[cfg.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


def layer_norm(cfg: ModelConfig, dim: int) -> nn.LayerNorm:
    """LayerNorm with weight and bias (`*.weight`, `*.bias` in the checkpoint)."""
    return nn.LayerNorm(dim, eps=cfg.rms_norm_eps)
