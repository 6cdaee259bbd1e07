"""Named model shapes: the Demiurgic family, Sheikh-2.5-Coder, MiniMax-M2, MiniMax-Text-01 and
Qwen2.5-Coder-0.5B.

A preset is a `ModelConfig` with a one-line description and a note on where its numbers come
from. Presets carry no weights: they size new models for training, feed `demi models info`
(parameter counts, memory) and give benchmarks a realistic shape.

Demiurgic choices, for the record:

- SwiGLU intermediate size the Llama way: ``8/3 * hidden`` rounded up to a multiple of 256
  for 1B/7B/13B (5632, 11008, 13824; the last two are exactly Llama 7B's and 13B's). For
  70B Llama 2 scales that by ``ffn_dim_multiplier = 1.3`` and rounds to a multiple of 4096,
  giving 28672; we keep that, because the plain 8/3 rule (22016) would make the "70B" a
  ~56B model. With 28672 it is Llama 2 70B's shape and about 69B parameters.
- Vocabulary 32016: the 32000-piece Llama SentencePiece vocabulary plus 4 fill-in-the-middle
  tokens (prefix, suffix, middle, end of infill) padded with 12 reserved special tokens to a
  multiple of 16 (friendlier to matmul tiling), the same total Code Llama uses. The reserved
  slots leave room for file/repository separators without resizing the embeddings.
- RoPE theta 10000, untied embeddings, RMSNorm eps 1e-5 (Llama 2), bos 1 / eos 2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from demi.model.config import LIGHTNING, RESIDUAL_SCALES, SOFTMAX, ModelConfig
from demi.model.errors import ModelNotFoundError

__all__ = ["Preset", "PRESETS", "get_preset", "preset_names", "llama_intermediate_size"]


@dataclass(frozen=True)
class Preset:
    """A named shape: `config` is shared, so use `get_preset` for a copy you can change."""

    name: str
    description: str  # one line, for listings
    source: str  # where the numbers come from
    config: ModelConfig


def llama_intermediate_size(hidden: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """SwiGLU width as Meta's Llama code computes it: 2/3 of 4*hidden, scaled, rounded up."""
    width = int(2 * (4 * hidden) / 3)
    if ffn_dim_multiplier is not None:
        width = int(ffn_dim_multiplier * width)
    return multiple_of * ((width + multiple_of - 1) // multiple_of)


DEMIURGIC_VOCAB = 32016  # 32000 Llama pieces + 4 FIM tokens + 12 reserved (multiple of 16)


def _demiurgic(layers: int, hidden: int, heads: int, kv_heads: int, context: int, intermediate: int) -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        vocab_size=DEMIURGIC_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=[2],
        torch_dtype="bfloat16",
    )


def _qwen25(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, tied: bool) -> ModelConfig:
    return ModelConfig(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        qkv_bias=True,
        tie_word_embeddings=tied,
        bos_token_id=151643,
        eos_token_id=[151643],
        torch_dtype="bfloat16",
    )


_DEMIURGIC_SOURCE = (
    "Llama layout; layers/hidden/heads as Llama 7B/13B/70B (1B: 24 layers, "
    "hidden 2048); SwiGLU width by the Llama rule; vocab 32000 + FIM tokens, "
    "padded to 32016 (see module docstring)"
)

_ALL = [
    Preset(
        "demiurgic-1b",
        "Demiurgic 1B: Llama-style dense code model, 24 layers, 4K context",
        _DEMIURGIC_SOURCE + "; intermediate 5632 = 8/3*2048 rounded up to 256",
        _demiurgic(24, 2048, 16, 16, 4096, llama_intermediate_size(2048)),
    ),
    Preset(
        "demiurgic-7b",
        "Demiurgic 7B: Llama-style dense code model, 32 layers, 4K context",
        _DEMIURGIC_SOURCE + "; intermediate 11008 = 8/3*4096 rounded up to 256 (Llama 7B)",
        _demiurgic(32, 4096, 32, 32, 4096, llama_intermediate_size(4096)),
    ),
    Preset(
        "demiurgic-13b",
        "Demiurgic 13B: Llama-style dense code model, 40 layers, 8K context",
        _DEMIURGIC_SOURCE + "; intermediate 13824 = 8/3*5120 rounded up to 256 (Llama 13B)",
        _demiurgic(40, 5120, 40, 40, 8192, llama_intermediate_size(5120)),
    ),
    Preset(
        "demiurgic-70b",
        "Demiurgic 70B: Llama-style dense code model, 80 layers, GQA 64/8, 8K context",
        _DEMIURGIC_SOURCE + "; intermediate 28672 = Llama 2 70B's (8/3*8192 * 1.3, rounded "
        "up to 4096); the plain 256 rounding (22016) would give a ~56B model",
        _demiurgic(80, 8192, 64, 8, 8192, llama_intermediate_size(8192, multiple_of=4096, ffn_dim_multiplier=1.3)),
    ),
    Preset(
        "sheikh-2.5-coder",
        "Sheikh-2.5-Coder: the Qwen2.5-3B shape, 36 layers, GQA 16/2, 32K context, ~3.09B",
        "Qwen/Qwen2.5-3B config.json: 36 layers, hidden 2048, intermediate 11008, 16/2 heads, "
        "vocab 151936, rope theta 1e6, tied embeddings, qkv bias",
        _qwen25(36, 2048, 11008, 16, 2, tied=True),
    ),
    Preset(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B shape: 24 layers, hidden 896, GQA 14/2, 32K context, ~0.49B",
        "Qwen/Qwen2.5-Coder-0.5B config.json: 24 layers, hidden 896, intermediate 4864, "
        "14/2 heads, vocab 151936, rope theta 1e6, tied embeddings, qkv bias",
        _qwen25(24, 896, 4864, 14, 2, tied=True),
    ),
    Preset(
        "minimax-m2",
        "MiniMax-M2: 62-layer MoE, 256 experts top-8, sigmoid router, ~229B total / ~10B active",
        "MiniMaxAI/MiniMax-M2 config.json: hidden 3072, 48/8 heads of dim 128, expert "
        "intermediate 1536, rotary_dim 64 of 128, QK RMSNorm over the whole projections, "
        "rope theta 5e6, vocab 200064, context 196608, untied (the published weights are "
        "FP8 block-quantized; the preset describes the bf16 shape, MTP heads not included)",
        ModelConfig(
            model_type="minimax_m2",
            vocab_size=200064,
            hidden_size=3072,
            intermediate_size=1536,
            num_hidden_layers=62,
            num_attention_heads=48,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=196608,
            rms_norm_eps=1e-6,
            rope_theta=5e6,
            partial_rotary_factor=0.5,
            qk_norm="whole",
            tie_word_embeddings=False,
            num_experts=256,
            num_experts_per_tok=8,
            router="sigmoid",
            routing_bias=True,
            bos_token_id=200034,
            eos_token_id=[200020],  # transformers MiniMaxM2Config defaults
            torch_dtype="bfloat16",
        ),
    ),
]

_ALL.append(
    Preset(
        "minimax-text-01",
        "MiniMax-Text-01: 80-layer hybrid, 7 lightning to 1 softmax layer, MoE 32 experts top-2, ~456B / ~45.9B active",
        "MiniMaxAI/MiniMax-Text-01 config.json and model card: hidden 6144, 64 heads of dim 128 (8 KV heads "
        "in the softmax layers), attn_type_list seven 0s then a 1, ten times; 32 experts of intermediate 9216, "
        "top-2 softmax router; rope theta 1e7; vocab 200064; context 10240000; post-norm residuals with alpha "
        "(2*80)**0.25 = 3.5566 and beta 1; lightning block 256; untied. The card applies RoPE to half of each "
        "head (rotary_dim 64); transformers' MiniMax, which Demi matches, rotates the whole head",
        ModelConfig(
            model_type="minimax",
            vocab_size=200064,
            hidden_size=6144,
            intermediate_size=9216,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=10240000,
            rms_norm_eps=1e-5,
            rope_theta=1e7,
            tie_word_embeddings=False,
            num_experts=32,
            num_experts_per_tok=2,
            layer_types=([LIGHTNING] * 7 + [SOFTMAX]) * 10,
            lightning_block=256,
            postnorm=True,
            residual_scales={k: (1.0 if "beta" in k else 3.5565588200778455) for k in RESIDUAL_SCALES},
            torch_dtype="bfloat16",
        ),
    )
)

PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset's config; unknown names list the known ones."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise ModelNotFoundError(f"unknown model preset {name!r}; presets: " + ", ".join(PRESETS))
    return copy.deepcopy(preset.config)
