"""StarCoder2 beyond the parity tests every family gets (tests/model/test_parity.py, test_batch.py,
test_speculation.py, test_quantize.py, test_decode_ops.py run it through tests/hf_models.py):
its config.json read and written back, its size figures against transformers' own module tree,
int8/int4 projections that keep their biases (the GELU MLP's c_fc too), and `demi models info`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import clean_env, demi, one_json
from hf_models import save_family

from demi.model.config import ModelConfig, load_config
from demi.model.decoder import Transformer
from demi.model.errors import ConfigError
from demi.model.info import count_parameters, format_info, parameter_shapes, weight_bytes
from demi.model.loading import load_model, quantized_linears
from demi.model.quantize import Int4Linear, Int8Linear

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints("starcoder2")


def _hf_meta(cfg: ModelConfig):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**cfg.to_hf()))


def test_config_reads_starcoder2s_switches(checkpoint):
    raw = json.loads((checkpoint / "config.json").read_text())
    assert raw["model_type"] == "starcoder2" and "rms_norm_eps" not in raw  # it says norm_epsilon
    cfg = load_config(checkpoint)
    assert (cfg.norm, cfg.mlp, cfg.hidden_act) == ("layer", "gelu", "gelu_pytorch_tanh")
    assert cfg.qkv_bias and cfg.o_bias and cfg.mlp_bias and cfg.tie_word_embeddings
    assert cfg.rms_norm_eps == raw["norm_epsilon"] and cfg.sliding_window == 8
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    # use_bias false: no bias anywhere; tie_word_embeddings absent: StarCoder2's default (tied)
    plain = {k: v for k, v in raw.items() if k != "tie_word_embeddings"} | {"use_bias": False}
    cfg = ModelConfig.from_hf(plain)
    assert not (cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias) and cfg.tie_word_embeddings
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg


def test_config_refuses_what_starcoder2_cannot_be():
    raw = {"model_type": "starcoder2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48}
    raw |= {"num_hidden_layers": 1, "num_attention_heads": 4, "hidden_act": "relu"}
    with pytest.raises(ConfigError, match="not a GELU") as err:
        ModelConfig.from_hf(raw)
    assert "\n" not in str(err.value)
    cfg = ModelConfig.from_hf(raw | {"hidden_act": "gelu"})
    with pytest.raises(ConfigError, match="use_bias covers every projection"):
        cfg.replace(o_bias=False).to_hf()
    with pytest.raises(ConfigError, match="starcoder2's only"):
        cfg.replace(model_type="llama").to_hf()


@pytest.mark.parametrize("bias", [True, False])
def test_sizes_match_transformers_and_demis_decoder(bias):
    cfg = ModelConfig.from_hf(
        dict(transformers.Starcoder2Config(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, use_bias=bias, tie_word_embeddings=not bias).to_dict())
    )  # fmt: skip
    hf = _hf_meta(cfg)
    theirs = {n: tuple(p.shape) for n, p in hf.named_parameters()}  # a tied head once
    ours = parameter_shapes(cfg)
    assert ours == theirs
    assert count_parameters(cfg).total == sum(math.prod(s) for s in theirs.values())
    with torch.device("meta"):
        state = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight")
    assert state == ours
    # int8: every projection (c_fc included) at a byte per weight plus a scale per row, the rest bf16
    int8 = sum(
        o * i + 4 * o if n.endswith(("proj.weight", "c_fc.weight", "lm_head.weight")) else 2 * math.prod((o, i))
        for n, (o, i) in ((n, s if len(s) == 2 else (1, s[0])) for n, s in ours.items())
    )
    assert weight_bytes(cfg, "int8") == int8


@pytest.mark.parametrize("mode, kind", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_projections_keep_their_biases(checkpoint, mode, kind):
    ref = load_model(checkpoint)
    model = load_model(checkpoint, quant=mode)
    names = quantized_linears(ref)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"qkv_proj", "o_proj", "c_fc", "c_proj", "lm_head"}
    layer = model.model.layers[0]
    for linear in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.c_fc, layer.mlp.c_proj):
        assert isinstance(linear, kind) and linear.bias is not None
    ids = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        cos = torch.nn.functional.cosine_similarity(ref(ids).flatten(), model(ids).float().flatten(), dim=0)
        assert cos > (0.98 if mode == "int8" else 0.8), cos
        # the bias is added once, on the decode kernels' rows and on the prefill's
        for rows in (1, 20):
            x = torch.randn(rows, ref.config.hidden_size, generator=torch.Generator().manual_seed(rows)).to(model.dtype)
            for linear, want in ((layer.mlp.c_fc, ref.model.layers[0].mlp.c_fc.bias), (layer.self_attn.qkv_proj, None)):
                with_bias = linear(x).float()
                saved = linear.bias, linear._bias_f32
                linear.bias, linear._bias_f32 = None, None
                without = linear(x).float()
                linear.bias, linear._bias_f32 = saved
                bias = saved[1] if want is None else want
                torch.testing.assert_close(with_bias - without, bias.expand(rows, -1), atol=2e-2, rtol=1e-2)


def test_models_info_for_a_starcoder2_checkpoint(tmp_path):
    out_dir = save_family("starcoder2", tmp_path / "sc2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out_dir)
    env = clean_env(tmp_path / "home")
    data = one_json(demi(env, "models", "info", out_dir, "--json"))
    assert data["model_type"] == "starcoder2"
    assert data["parameters"]["total"] == sum(p.numel() for p in hf.parameters())  # tied head once
    assert data["kv_cache_bytes"] == 2 * 2 * 2 * 16 * 256 * 2  # layers, kv heads, head dim, context, bf16
    text = format_info("sc2", load_config(out_dir))
    assert "dense GELU MLP (gelu_pytorch_tanh)" in text and "LayerNorm with bias" in text
    assert "sliding window 8" in text and "qkv bias, o bias, mlp bias" in text
