"""`demi eval ...` measures the checkpoint itself: full precision unless `--quant` is given (the
config's and $DEMI_QUANT's serving default, int8 on a CPU, does not apply), and says which
precision it ran at, in the text and in --json."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import clean_env, demi, one_json
from tokenizers_fixture import training_texts


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("llama")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "sample.py"
    path.write_text(training_texts()[0][:400], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def full(env, model_dir, text_file) -> dict:
    return one_json(demi(env, "eval", "perplexity", "--model", model_dir, text_file, "--quant", "none", "--json"))


def test_perplexity_defaults_to_full_precision(env, model_dir, text_file, full):
    """Even with $DEMI_QUANT=int8 set for serving, no --quant means the checkpoint as it is."""
    out = one_json(demi(dict(env, DEMI_QUANT="int8"), "eval", "perplexity", "--model", model_dir, text_file, "--json"))
    assert (out["quant"], out["dtype"]) == ("none", "float32")
    assert out["nll"] == pytest.approx(full["nll"], abs=1e-9) and out["tokens"] == full["tokens"]


def test_perplexity_quantizes_when_asked(env, model_dir, text_file, full):
    out = one_json(demi(env, "eval", "perplexity", "--model", model_dir, text_file, "--quant", "int8", "--json"))
    assert out["quant"] == "int8" and out["tokens"] == full["tokens"]
    assert out["nll"] != full["nll"]  # int8 weights score the text differently


def test_perplexity_text_names_the_precision(env, model_dir, text_file, full):
    proc = demi(env, "eval", "perplexity", "--model", model_dir, text_file)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("precision: float32, not quantized"), proc.stdout
    assert f"perplexity {full['perplexity']:.3f}" in proc.stdout


def test_passk_reports_its_precision(env, model_dir):
    out = one_json(
        demi(env, "eval", "passk", "--model", model_dir, "--limit", 1, "--max-tokens", 4, "--json", "--quant", "int4")
    )
    assert out["quant"] == "int4" and out["problems"] == 1
    out = one_json(demi(env, "eval", "passk", "--model", model_dir, "--limit", 1, "--max-tokens", 4, "--json"))
    assert (out["quant"], out["dtype"]) == ("none", "float32")


def test_eval_help_says_the_default_is_full_precision(env):
    for kind in ("perplexity", "fim", "passk"):
        proc = demi(env, "eval", kind, "--help")
        assert proc.returncode == 0, proc.stderr
        assert "default: none, the checkpoint at full" in " ".join(proc.stdout.split()), kind
