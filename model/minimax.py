"""MiniMax-Text-01's decoder layer (transformers' `minimax`; not MiniMax-M2, which is `minimax_m2`).

Its attention is a lightning layer (lightning.py) or a softmax one, as `layer_types` says (seven
lightning layers to one softmax layer in MiniMax-Text-01), followed in every layer by a mixture of
experts routed like Mixtral's. The residuals differ from the other families' pre-norm ones: what
carries on is the *normed* input, each sum weighted by the config's alpha and beta factors:

    h = input_layernorm(x);          x = alpha_attn * h + beta_attn * attention(h)
    h = post_attention_layernorm(x); x = alpha_mlp * h + beta_mlp * experts(h)

(MiniMax-Text-01 sets every alpha to (2 * 80 layers) ** 0.25 = 3.5566 and every beta to 1.)
"""

from __future__ import annotations

from torch import Tensor

from demi.model.config import ModelConfig
from demi.model.decoder import Block, KVCache, Mask


class MiniMaxBlock(Block):
    """A post-norm block with weighted residuals; the attention and experts are Block's."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__(cfg, layer)
        kind = "linear" if cfg.is_lightning(layer) else "full"
        self.attn_alpha = cfg.residual_scale(f"{kind}_attn_alpha_factor")
        self.attn_beta = cfg.residual_scale(f"{kind}_attn_beta_factor")
        self.mlp_alpha = cfg.residual_scale("mlp_alpha_factor")
        self.mlp_beta = cfg.residual_scale("mlp_beta_factor")

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        start: int,
        mask: Mask,
        cache: KVCache | None,
        router_logits: list[Tensor] | None = None,
    ) -> Tensor:
        h = self.input_layernorm(x)
        x = h * self.attn_alpha + self.self_attn(h, cos, sin, start, mask, cache) * self.attn_beta
        h = self.post_attention_layernorm(x)
        if not self.is_moe:  # a dense MLP: not in MiniMax's checkpoints, but a stack Demi can build
            return h * self.mlp_alpha + self.mlp(h) * self.mlp_beta
        out, logits = self.block_sparse_moe(h)
        if router_logits is not None:
            router_logits.append(logits)
        return h * self.mlp_alpha + out * self.mlp_beta
