"""Tiny random-weight checkpoints of every supported family, built and saved by transformers.

They are the reference for parity: transformers writes the Hugging Face layout, Demi loads
it. Norm weights and routing biases are randomised too, so a wrong norm or a routing bias
used in the wrong place shows up in the logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 512
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)

# name -> (model_type, config overrides)
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", {}),
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-tied": ("llama", dict(tie_word_embeddings=True)),
    "mistral": ("mistral", dict(sliding_window=8)),
    "qwen2": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(head_dim=24)),
    "mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    "minimax_m2": ("minimax_m2", dict(num_local_experts=6, num_experts_per_tok=3, head_dim=16, rotary_dim=8)),
    # LayerNorm with bias, GELU MLP, bias in every projection, tied embeddings, a sliding window
    "starcoder2": ("starcoder2", dict(sliding_window=8)),
}
# MiniMax-Text-01's hybrid (transformers' `minimax`): lightning and softmax layers, post-norm residuals
# weighted by alpha and beta (each its own value here, so a swapped one shows), Mixtral-style experts;
# 16-token blocks, so the 40-token tests cross lightning block boundaries. Not in FAMILIES: the tests
# that take every family assume softmax attention in every layer (native decode attention, KV rows).
_LIN, _FULL = "linear_attention", "full_attention"
_MINIMAX = dict(num_local_experts=4, num_experts_per_tok=2, block_size=16, full_attn_alpha_factor=1.7)
_MINIMAX |= dict(full_attn_beta_factor=0.8, linear_attn_alpha_factor=1.3, linear_attn_beta_factor=1.1)
_MINIMAX |= dict(mlp_alpha_factor=0.9, mlp_beta_factor=1.2)
LIGHTNING_FAMILIES: dict[str, tuple[str, dict]] = {
    "minimax": ("minimax", dict(_MINIMAX, num_hidden_layers=3, layer_types=[_FULL, _LIN, _LIN])),
    # MiniMax-Text-01's order in miniature: lightning layers first, then one softmax layer
    "minimax-text01": ("minimax", dict(_MINIMAX, num_hidden_layers=4, layer_types=[_LIN, _LIN, _LIN, _FULL])),
}
ROPE_VARIANTS: dict[str, dict] = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    },
}


def build_hf_model(model_type: str, seed: int = 0, **overrides):
    """A transformers model with every weight (norms and routing biases too) drawn at random."""
    import transformers

    # No end-of-sequence id, so greedy runs compare a fixed number of tokens.
    kwargs = dict(BASE, bos_token_id=1, eos_token_id=None, **overrides)
    cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.normal_(0.0, 0.5)
    return model


def save_family(name: str, out_dir: Path, rope: str | None = None, **extra) -> Path:
    """Save family `name` (optionally with a RoPE scaling variant) to `out_dir`; returns it."""
    model_type, overrides = FAMILIES[name] if name in FAMILIES else LIGHTNING_FAMILIES[name]
    overrides = dict(overrides, **extra)
    if rope:
        overrides["rope_scaling"] = dict(ROPE_VARIANTS[rope])
        if rope == "dynamic":
            overrides["max_position_embeddings"] = 24  # test sequences (40-44 tokens) run past it
    model = build_hf_model(model_type, **overrides)
    model.save_pretrained(out_dir)
    return out_dir
