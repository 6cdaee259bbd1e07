"""Parameter counts, memory figures and presets, checked against transformers' own models.

Hugging Face models are built on the meta device, so even MiniMax-M2 (229B) costs no memory.
"""

from __future__ import annotations

import math

import pytest

from demi.model.config import ModelConfig
from demi.model.errors import DemiUserError, ModelNotFoundError
from demi.model.info import (
    INT4_GROUP_SIZE,
    PRECISIONS,
    count_parameters,
    format_info,
    kv_cache_bytes,
    model_info,
    parameter_shapes,
    weight_bytes,
)
from demi.model.presets import PRESETS, get_preset, llama_intermediate_size, preset_names

_BASE = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)

# One small config per family and switch; every one is representable by transformers.
SMALL = {
    "llama": ModelConfig(model_type="llama", **_BASE),
    "llama-mha-bias-tied": ModelConfig(
        model_type="llama",
        **dict(_BASE, num_key_value_heads=4, qkv_bias=True, o_bias=True, mlp_bias=True, tie_word_embeddings=True),
    ),
    "llama-partial-rotary": ModelConfig(
        model_type="llama", partial_rotary_factor=0.5, rope_scaling={"rope_type": "linear", "factor": 2.0}, **_BASE
    ),
    "mistral-head-dim": ModelConfig(model_type="mistral", head_dim=24, sliding_window=32, **_BASE),
    "qwen2-bias-tied": ModelConfig(model_type="qwen2", qkv_bias=True, tie_word_embeddings=True, **_BASE),
    "qwen2-bias-untied": ModelConfig(model_type="qwen2", qkv_bias=True, **_BASE),
    "qwen3-head-norm": ModelConfig(model_type="qwen3", head_dim=24, qk_norm="head", tie_word_embeddings=True, **_BASE),
    "qwen3-head-norm-bias": ModelConfig(
        model_type="qwen3", head_dim=32, qk_norm="head", qkv_bias=True, o_bias=True, **_BASE
    ),
    "mixtral-softmax": ModelConfig(model_type="mixtral", num_experts=4, num_experts_per_tok=2, **_BASE),
    "minimax-sigmoid-bias": ModelConfig(
        model_type="minimax_m2",
        head_dim=32,
        num_experts=8,
        num_experts_per_tok=3,
        router="sigmoid",
        routing_bias=True,
        qk_norm="whole",
        partial_rotary_factor=0.5,
        rope_theta=5e6,
        **_BASE,
    ),
}


def _hf_model(cfg: ModelConfig):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf())
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf_cfg)


def _hf_shapes(model) -> dict[str, tuple[int, ...]]:
    """Parameters (tied ones once) plus the checkpoint buffer e_score_correction_bias."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    shapes.update({n: tuple(b.shape) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")})
    return shapes


def _hf_count(model) -> int:
    return sum(math.prod(s) for s in _hf_shapes(model).values())


# --- counts against transformers -------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_total_matches_transformers(name):
    cfg = SMALL[name]
    model = _hf_model(cfg)
    assert count_parameters(cfg).total == _hf_count(model)


@pytest.mark.parametrize("name", list(SMALL))
def test_shapes_match_transformers(name):
    """Same tensors by name; transformers fuses each layer's experts, Demi keeps Mixtral's names."""
    cfg = SMALL[name]
    ours = parameter_shapes(cfg)
    assert sum(math.prod(s) for s in ours.values()) == count_parameters(cfg).total
    theirs = _hf_shapes(_hf_model(cfg))
    if not cfg.is_moe:
        assert ours == theirs
        return
    ours_rest = {k: v for k, v in ours.items() if ".experts." not in k}
    theirs_rest = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in theirs.items() if ".experts." not in k}
    assert ours_rest == theirs_rest
    E, I, H = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size
    for i in range(cfg.num_hidden_layers):
        assert theirs[f"model.layers.{i}.mlp.experts.gate_up_proj"] == (E, 2 * I, H)
        assert theirs[f"model.layers.{i}.mlp.experts.down_proj"] == (E, H, I)
        for e in range(E):
            moe = f"model.layers.{i}.block_sparse_moe.experts.{e}."
            assert ours[moe + "w1.weight"] == ours[moe + "w3.weight"] == (I, H)
            assert ours[moe + "w2.weight"] == (H, I)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_totals_match_transformers(name):
    cfg = get_preset(name)
    assert count_parameters(cfg).total == _hf_count(_hf_model(cfg))


def test_embedding_and_active_counts():
    for name, cfg in SMALL.items():
        pc = count_parameters(cfg)
        emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
        assert pc.embedding == emb, name
        assert pc.non_embedding == pc.total - emb, name
        assert pc.active_non_embedding == pc.active - emb, name
        if cfg.is_moe:
            unused = cfg.num_experts - cfg.num_experts_per_tok
            idle = cfg.num_hidden_layers * unused * 3 * cfg.intermediate_size * cfg.hidden_size
            assert pc.active == pc.total - idle, name
        else:
            assert pc.active == pc.total, name


# --- the big presets ------------------------------------------------------------------------


def test_sheikh_matches_qwen25_3b_published_counts():
    # Qwen2.5-3B's model card: 3.09B parameters, 2.77B non-embedding.
    pc = count_parameters(get_preset("sheikh-2.5-coder"))
    assert pc.total == 3_085_938_688
    assert pc.non_embedding == 2_774_773_760
    assert pc.embedding == 151936 * 2048  # the tied matrix, once
    assert round(pc.total / 1e9, 2) == 3.09 and round(pc.non_embedding / 1e9, 2) == 2.77


def test_qwen25_coder_05b_matches_published_counts():
    # Qwen2.5-Coder-0.5B's model card: 0.49B parameters, 0.36B non-embedding.
    pc = count_parameters(get_preset("qwen2.5-coder-0.5b"))
    assert pc.total == 494_032_768
    assert round(pc.total / 1e9, 2) == 0.49 and round(pc.non_embedding / 1e9, 2) == 0.36


def test_minimax_m2_total_and_active():
    # Published: 230B total, 10B active.
    pc = count_parameters(get_preset("minimax-m2"))
    assert 225e9 < pc.total < 232e9
    assert 9.5e9 < pc.active_non_embedding < 10.5e9
    assert 10.5e9 < pc.active < 11.5e9  # with embed_tokens and lm_head (1.23B)


def test_demiurgic_sizes():
    expected = {
        "demiurgic-1b": (1.2e9, 1.5e9),
        "demiurgic-7b": (6.5e9, 7e9),
        "demiurgic-13b": (12.8e9, 13.3e9),
        "demiurgic-70b": (68e9, 70e9),
    }
    for name, (lo, hi) in expected.items():
        assert lo < count_parameters(get_preset(name)).total < hi, name


# --- memory ---------------------------------------------------------------------------------


def _quantized(name: str) -> bool:
    return name.endswith(("proj.weight", "w1.weight", "w2.weight", "w3.weight", "lm_head.weight"))


@pytest.mark.parametrize("name", list(SMALL))
def test_weight_bytes_per_tensor(name):
    cfg = SMALL[name]
    shapes = parameter_shapes(cfg)
    total = count_parameters(cfg).total
    assert weight_bytes(cfg, "fp32") == 4 * total
    assert weight_bytes(cfg, "bf16") == 2 * total
    int8 = int4 = 0
    for n, shape in shapes.items():
        if _quantized(n):
            out, inp = shape
            int8 += out * inp + 4 * out
            int4 += out * math.ceil(inp / 2) + out * math.ceil(inp / INT4_GROUP_SIZE) * 4
        else:
            int8 += 2 * math.prod(shape)
            int4 += 2 * math.prod(shape)
    assert weight_bytes(cfg, "int8") == int8
    assert weight_bytes(cfg, "int4") == int4


def test_weight_bytes_by_hand():
    # One layer, hidden 256, intermediate 384, vocab 10, MHA 2 heads of 128, untied.
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=10,
        hidden_size=256,
        intermediate_size=384,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    linear = [(256, 256)] * 4 + [(384, 256)] * 2 + [(256, 384), (10, 256)]  # + lm_head
    rest = 10 * 256 + 3 * 256  # embed_tokens, two layer norms, final norm
    int8 = sum(o * i + 4 * o for o, i in linear) + 2 * rest
    int4 = sum(o * i // 2 + 4 * o * (i // INT4_GROUP_SIZE) for o, i in linear) + 2 * rest
    assert weight_bytes(cfg, "int8") == int8
    assert weight_bytes(cfg, "int4") == int4
    # A tied lm_head is the embedding: no quantized copy.
    tied = cfg.replace(tie_word_embeddings=True)
    assert weight_bytes(tied, "int8") == int8 - (10 * 256 + 4 * 10)
    assert weight_bytes(tied, "int4") == int4 - (10 * 128 + 4 * 10 * (256 // INT4_GROUP_SIZE))


def test_int4_ragged_group():
    # in=200 is not a multiple of the group (64): four groups per row, the last one padded.
    cfg = ModelConfig(
        model_type="llama",
        vocab_size=10,
        hidden_size=200,
        intermediate_size=300,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    linear = [(200, 200)] * 4 + [(300, 200)] * 2 + [(200, 300)]
    rest = 10 * 200 + 3 * 200
    expected = sum(o * i // 2 + 4 * o * math.ceil(i / INT4_GROUP_SIZE) for o, i in linear) + 2 * rest
    assert weight_bytes(cfg, "int4") == expected
    assert math.ceil(200 / INT4_GROUP_SIZE) == 4 and math.ceil(300 / INT4_GROUP_SIZE) == 5


def test_kv_cache_formula():
    cfg = get_preset("sheikh-2.5-coder")
    assert kv_cache_bytes(cfg, 32768) == 2 * 36 * 2 * 128 * 32768 * 2
    assert kv_cache_bytes(cfg, 1000, "fp32") == 2 * 36 * 2 * 128 * 1000 * 4
    assert kv_cache_bytes(cfg, 1000, "int8", batch=3) == 2 * 36 * 2 * 128 * 1000 * 3
    mm = get_preset("minimax-m2")
    assert kv_cache_bytes(mm, 196608) == 2 * 62 * 8 * 128 * 196608 * 2
    with pytest.raises(DemiUserError):
        kv_cache_bytes(cfg, 10, "fp64")


def test_kv_cache_matches_transformers_cache():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = SMALL["qwen3-head-norm"]
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg.to_hf())).to(
        torch.bfloat16
    )
    with torch.no_grad():
        cache = model(torch.arange(7)[None], use_cache=True).past_key_values
    used = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert used == kv_cache_bytes(cfg, 7, "bf16")


def test_model_info_and_format():
    cfg = get_preset("minimax-m2")
    info = model_info(cfg)
    assert info.context == 196608 and info.kv_dtype == "bf16"
    assert set(info.weights) == set(PRECISIONS)
    assert info.weights["fp32"] > info.weights["bf16"] > info.weights["int8"] > info.weights["int4"]
    assert info.total_bytes("int4") == info.weights["int4"] + info.kv_cache
    d = info.as_dict()
    assert d["parameters"]["active"] == count_parameters(cfg).active
    assert d["total_bytes"]["bf16"] == info.weights["bf16"] + info.kv_cache

    text = format_info("minimax-m2", cfg)
    assert text.startswith("minimax-m2")
    assert f"{count_parameters(cfg).total:,}" in text
    assert "active per token" in text and "196608" in text
    for p in PRECISIONS:
        assert f"\n  {p} " in text
    short = format_info("sheikh-2.5-coder", get_preset("sheikh-2.5-coder"), 1024, kv_dtype="fp32", precisions=["int4"])
    assert "KV @ 1024 (fp32)" in short and "\n  bf16 " not in short
    assert "active per token" not in short
    with pytest.raises(DemiUserError):
        format_info("x", cfg, precisions=["int3"])
    with pytest.raises(DemiUserError):
        weight_bytes(cfg, "fp8")


# --- presets --------------------------------------------------------------------------------


def test_preset_shapes():
    for name, (layers, hidden, heads, kv, ctx, inter) in {
        "demiurgic-1b": (24, 2048, 16, 16, 4096, 5632),
        "demiurgic-7b": (32, 4096, 32, 32, 4096, 11008),
        "demiurgic-13b": (40, 5120, 40, 40, 8192, 13824),
        "demiurgic-70b": (80, 8192, 64, 8, 8192, 28672),
        "sheikh-2.5-coder": (36, 2048, 16, 2, 32768, 11008),
        "qwen2.5-coder-0.5b": (24, 896, 14, 2, 32768, 4864),
        "minimax-m2": (62, 3072, 48, 8, 196608, 1536),
    }.items():
        c = get_preset(name)
        assert (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.max_position_embeddings,
            c.intermediate_size,
        ) == (layers, hidden, heads, kv, ctx, inter), name
    for name in ("demiurgic-1b", "demiurgic-7b", "demiurgic-13b", "demiurgic-70b"):
        c = get_preset(name)
        assert (c.model_type, c.vocab_size, c.rope_theta, c.tie_word_embeddings) == ("llama", 32016, 10000.0, False)
    s = get_preset("sheikh-2.5-coder")
    assert (s.model_type, s.vocab_size, s.rope_theta, s.tie_word_embeddings, s.qkv_bias) == (
        "qwen2",
        151936,
        1e6,
        True,
        True,
    )
    m = get_preset("minimax-m2")
    assert (
        m.num_experts,
        m.num_experts_per_tok,
        m.router,
        m.routing_bias,
        m.qk_norm,
        m.head_dim,
        m.rotary_dim,
        m.rope_theta,
        m.vocab_size,
        m.tie_word_embeddings,
    ) == (256, 8, "sigmoid", True, "whole", 128, 64, 5e6, 200064, False)
    assert llama_intermediate_size(4096) == 11008
    assert llama_intermediate_size(8192) == 22016


def test_presets_round_trip_through_hf_config():
    for name in preset_names():
        cfg = get_preset(name)
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg, name
        assert PRESETS[name].description and "\n" not in PRESETS[name].description
        assert PRESETS[name].source


def test_get_preset_copies_and_unknown_names():
    a = get_preset("demiurgic-7b")
    a.num_hidden_layers = 1
    a.eos_token_id.append(99)
    b = get_preset("DEMIURGIC-7B")
    assert b.num_hidden_layers == 32 and b.eos_token_id == [2]
    with pytest.raises(ModelNotFoundError) as err:
        get_preset("demiurgic-3b")
    assert "demiurgic-3b" in str(err.value) and "minimax-m2" in str(err.value)
    assert "\n" not in str(err.value)


def _demi_module_count(cfg: ModelConfig) -> tuple[int, dict[str, tuple[int, ...]]]:
    """Parameters (plus the routing-bias buffer) of Demi's own decoder, built on the meta device."""
    import torch

    from demi.model.decoder import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    return sum(math.prod(s) for s in state.values()), state


@pytest.mark.parametrize("name", list(SMALL))
def test_total_matches_demi_decoder(name):
    cfg = SMALL[name]
    total, state = _demi_module_count(cfg)
    assert count_parameters(cfg).total == total
    assert {k: tuple(v) for k, v in parameter_shapes(cfg).items()} == state


@pytest.mark.parametrize("name", ["sheikh-2.5-coder", "minimax-m2", "demiurgic-70b"])
def test_preset_totals_match_demi_decoder(name):
    cfg = get_preset(name)
    assert count_parameters(cfg).total == _demi_module_count(cfg)[0]
