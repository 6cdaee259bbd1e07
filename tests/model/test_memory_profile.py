"""The memory estimate against what a fresh process measures (`demi.model.memory`), fp32, int8, int4.

The 0.5B shape takes minutes per mode, so its check is `benchmarks/memory_profile.py` (numbers in
benchmarks/RESULTS.md); here the same comparison runs on a 40M-parameter shape with the same 15%
bound: resident memory held after loading and the peak while prefilling (the peak while loading
depends on what the C allocator keeps of freed temporaries, run to run: reported, not bounded).
The weights' estimate mirrors the layouts `load_model` builds, so it must match the bytes of the
loaded model's tensors almost exactly, in every mode.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import clean_env, demi, one_json

from demi.cli.commands_memory import report_lines
from demi.model.config import load_config
from demi.model.memory import _int4_bytes, estimate, profile, weight_bytes_loaded

BOUND = 0.15
SHAPE = dict(
    vocab_size=32000,
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
CONTEXT = 256


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("qwen2", **SHAPE)  # 40.5M parameters, 162 MB in fp32


@pytest.fixture(scope="module")
def profiles(model_dir) -> dict[str, dict]:
    return {quant: profile(model_dir, quant, CONTEXT) for quant in ("none", "int8", "int4")}


@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
def test_estimate_is_within_15_percent_of_the_measurement(profiles, quant):
    r = profiles[quant]
    assert r["quant"] == quant and r["context"] == CONTEXT
    c = r["comparison"]
    assert abs(c["weights"]["error"]) < 0.01, c["weights"]  # layouts mirrored: tensor bytes
    for key in ("after_load", "prefill_peak"):
        assert abs(c[key]["error"]) <= BOUND, (quant, key, c[key])
    m = r["measured"]
    assert m["tensors"]["kv"] == r["estimate"]["kv"]  # one slot of CONTEXT positions, fp32
    phases = m["phases"]
    assert phases["load"]["peak"] >= phases["load"]["held"] > phases["runtime"]["held"]
    assert phases["prefill"]["peak"] >= phases["load"]["held"]


def test_quantized_weights_are_smaller_and_int4_packs_two_a_byte(profiles):
    w = {q: profiles[q]["measured"]["tensors"]["weights"] for q in profiles}
    assert w["int4"] < w["int8"] < w["none"]
    for q in ("int8", "int4"):  # the embedding stays in the activations' dtype (fp32, or bf16 for torch's int4)
        width = {"float32": 4, "bfloat16": 2}[profiles[q]["dtype"]]
        assert w[q] > width * SHAPE["vocab_size"] * SHAPE["hidden_size"], q


def test_weights_estimate_follows_the_plan(model_dir):
    """int4's layout is the plan's: native packing (half scales and offsets, rows as they are) or
    torch's (bf16 scales and zeros, rows padded to 16)."""
    cfg = load_config(model_dir)
    native = weight_bytes_loaded(cfg, "int4", native=True)
    torch_layout = weight_bytes_loaded(cfg, "int4", native=False)
    assert native <= torch_layout
    assert _int4_bytes(17, 64, 32, native=True) == 17 * 32 + 17 * 2 * 4  # nibbles, then a half scale and offset a group
    assert _int4_bytes(17, 64, 32, native=False) == 32 * 32 + 32 * 2 * 4  # padded to 32 rows
    est = estimate(cfg, "int8", CONTEXT, plan={"decode": "torch", "prefill": "fp32"}, copy_budget=2**20)
    assert 0 < est.caches <= 2**20  # float copies kept for prefill, within the budget


def test_cli_prints_estimate_beside_measurement(tiny_checkpoints, tmp_path):
    env = clean_env(tmp_path)
    small = tiny_checkpoints("qwen2", max_position_embeddings=1024)
    out = one_json(demi(env, "models", "memory", small, "--context", 128, "--json"))
    assert (out["quant"], out["dtype"], out["context"]) == ("none", "float32", 128)
    assert set(out["comparison"]) >= {"after_load", "load_peak", "prefill_peak", "after_prefill"}
    assert {"runtime", "weights", "kv", "activations", "caches", "load_transient"} <= set(out["estimate"])
    text = "\n".join(report_lines(out))  # what the command prints without --json
    assert "peak while prefilling" in text and "held after load" in text and "weights" in text
    bad = demi(env, "models", "memory", small, "--context", 1)
    assert bad.returncode == 2 and "--context must be >= 2" in bad.stderr


def test_a_prefill_below_the_plans_crossover_keeps_no_float_copies(model_dir):
    """Prompts shorter than the plan's float_prefill_rows run on the decode kernel (quantize.py), so
    the estimate keeps no fp32 weight copies for them, as the engine does not."""
    cfg = load_config(model_dir)
    plan = {"decode": "avx2", "prefill": "fp32", "float_prefill_rows": 0}
    copies = estimate(cfg, "int8", CONTEXT, plan=plan, prefill_rows=200)
    short = estimate(cfg, "int8", CONTEXT, plan={**plan, "float_prefill_rows": 300}, prefill_rows=200)
    assert copies.caches > 0 and short.caches == 0
    assert short.weights == copies.weights and short.kv == copies.kv
