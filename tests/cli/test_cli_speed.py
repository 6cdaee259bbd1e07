"""`demi bench`, `demi models quantize` and `demi models info --target` as subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints):
    return tiny_checkpoints("qwen2")


def demi(*args, home):
    env = dict(
        os.environ,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "cfg"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        HF_HUB_OFFLINE="1",
        DEMI_OFFLINE="1",
    )
    return subprocess.run([sys.executable, "-m", "demi", *args], capture_output=True, text=True, env=env, timeout=300)


def test_bench_json_with_transformers_baseline(model_dir, tmp_path):
    r = demi(
        "bench",
        "--model",
        str(model_dir),
        "--quant",
        "int8",
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "8",
        "--runs",
        "1",
        "--compare",
        "transformers",
        "--json",
        home=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_ms", "p50_ms", "p95_ms", "p99_ms", "peak_rss_mb"):
        assert out[key] > 0, key
    assert out["quant"] == "int8" and out["p50_ms"] <= out["p95_ms"] <= out["p99_ms"]
    assert 0 < out["bandwidth_fraction"] and out["copy_gb_s"] > 0 and out["read_gb_s"] > 0
    ref = out["compare"]["transformers"]
    assert set(ref) == {"float32", "bfloat16"} and all(v["decode_tok_s"] > 0 for v in ref.values())
    best = max(v["decode_tok_s"] for v in ref.values())
    # the ratio is reported to two decimals
    assert out["decode_ratio_vs_best_transformers"] == pytest.approx(out["decode_tok_s"] / best, rel=0.01, abs=0.006)


def test_quantize_then_generate(model_dir, tmp_path):
    dst = tmp_path / "q4"
    r = demi("models", "quantize", str(model_dir), str(dst), "--quant", "int4", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["quant"] == "int4"
    assert json.loads((dst / "config.json").read_text())["quantization_config"]["mode"] == "int4"
    g = demi("generate", "--model", str(dst), "--prompt", "def f(x):", "--max-tokens", "5", "--json", home=tmp_path)
    assert g.returncode == 0, g.stderr
    assert len(json.loads(g.stdout)["token_ids"]) == 5
    again = demi("models", "quantize", str(model_dir), str(dst), "--quant", "int8", home=tmp_path)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr


def test_nf4_on_cpu_is_a_one_line_user_error(model_dir, tmp_path):
    r = demi("generate", "--model", str(model_dir), "--quant", "nf4", "--prompt", "x", home=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "int4" in r.stderr


def test_models_info_target(tmp_path):
    r = demi("models", "info", "sheikh-2.5-coder", "--target", "mobile", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["precision"] == "int4" and plan["quant"] == "int4" and plan["context"] < 32768
