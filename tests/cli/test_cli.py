"""The `demi` command line as a user runs it (a subprocess), against a tiny random llama with the
byte-level tokenizer: `generate` and `eval perplexity` agree with transformers, the `models` and
`doctor` commands report in JSON, and every user error exits 2 with one line on stderr, nothing
on stdout and no traceback (unless --debug).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers import clean_env, demi, one_json, pinned_kernel, tiny_checkpoint
from tokenizers_fixture import training_texts

transformers = pytest.importorskip("transformers")
PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """A clean environment: no user config, no hub cache, offline."""
    return clean_env(tmp_path_factory.mktemp("home"), PYTHONWARNINGS="default")


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("llama")


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def hf_tok(model_dir):
    return transformers.AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("texts")
    src = training_texts()
    files = {
        "a": src[0][:420].encode(),
        "b": src[3][300:650].encode(),
        "bad_utf8": b"def f():\n    return 'caf\xc3 \xff\xfe ok'  # na\xefve\n",
        "binary": b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00" + bytes(range(256)),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return {name: d / name for name in files}


# --- generate ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(env, model_dir) -> dict:
    return one_json(
        demi(env, "generate", "--model", model_dir, "--quant", "none", "--prompt", PROMPT, "--max-tokens", 16, "--json")
    )


def test_the_default_on_a_cpu_is_int8(env, model_dir, generated):
    """quant auto, the default: int8 on a CPU; parity with transformers is checked in full precision."""
    out = one_json(demi(env, "generate", "--model", model_dir, "--prompt", PROMPT, "--max-tokens", 4, "--json"))
    assert out["quant"] == "int8" and generated["quant"] == "none"


def test_generate_json_matches_transformers_greedy(generated, model_dir, hf, hf_tok):
    out = generated
    assert {"text", "token_ids", "model", "prompt_tokens", "completion_tokens", "seconds"} <= set(out)
    ids = hf_tok(PROMPT).input_ids
    assert hf_tok.bos_token_id is None or ids[0] != hf_tok.bos_token_id  # byte-level: no BOS
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([ids]),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=hf_tok.eos_token_id,
            pad_token_id=hf_tok.eos_token_id,
        )
    ref_ids = ref[0, len(ids) :].tolist()
    assert out["token_ids"] == ref_ids
    assert out["prompt_tokens"] == len(ids)
    assert out["completion_tokens"] == len(ref_ids) == 16
    assert out["text"] == hf_tok.decode(ref_ids)
    assert out["model"] == str(model_dir)
    assert isinstance(out["seconds"], (int, float)) and out["seconds"] >= 0


def test_generate_speculates_with_identical_greedy_output(env, tiny_checkpoints, generated):
    """`--speculate K` drafts from the prompt (the default is the config's `speculate`, on); greedy output
    is the same as with it off (`DEMI_SPECULATE=0` here), and `--json` reports the figures. The tiny
    qwen2 checkpoint's greedy output falls into a loop, whose three-token matches are worth checking
    (the engine does not draft from weaker ones on a model this small)."""
    model_dir = tiny_checkpoints("qwen2")
    prompt = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n"
    args = ("generate", "--model", model_dir, "--prompt", prompt, "--max-tokens", 32, "--json")
    # both runs on one decode path and fp32 prefill (see pinned_kernel): each process measures its own
    # plan, and under load two chose different prefill kernels, whose last bits differ
    env = {**env, "DEMI_KERNEL": pinned_kernel(), "DEMI_PREFILL": "fp32"}
    spec = one_json(demi(env, *args, "--speculate", 4))
    plain = one_json(demi({**env, "DEMI_SPECULATE": "0"}, *args))
    assert spec["kernels"] == plain["kernels"] and spec["kernels"]["prefill"] == "fp32"
    assert spec["token_ids"] == plain["token_ids"] and spec["text"] == plain["text"]
    assert plain["speculation"] is None
    stats = spec["speculation"]
    assert set(stats) == {"k", "drafted", "accepted", "acceptance", "steps"} and stats["k"] == 4
    assert stats["drafted"] > 0 and 0 <= stats["accepted"] <= stats["drafted"]
    assert 1 <= stats["steps"] <= spec["completion_tokens"]
    assert generated["speculation"]["k"] >= 1  # on by default (the config's `speculate`)


def test_generate_streams_text_without_json(env, model_dir, generated):
    proc = demi(env, "generate", "--model", model_dir, "--quant", "none", "--prompt", PROMPT, "--max-tokens", 16)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == generated["text"] + "\n"
    assert proc.stderr == ""


# --- eval perplexity ---------------------------------------------------------------------------


def _reference_nll(hf, hf_tok, texts: list[str]) -> tuple[float, int]:
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([hf_tok(t).input_ids])
        n = ids.shape[1]
        assert 2 < n < 256  # one window of the 256-token context
        with torch.no_grad():
            total += hf(ids, labels=ids).loss.item() * (n - 1)
        count += n - 1
    return total / count, count


def test_eval_perplexity_matches_transformers(env, model_dir, texts, hf, hf_tok):
    out = one_json(
        demi(env, "eval", "perplexity", "--model", model_dir, "--quant", "none", texts["a"], texts["b"], "--json")
    )
    nll, count = _reference_nll(hf, hf_tok, [texts["a"].read_text(), texts["b"].read_text()])
    assert out["tokens"] == count
    assert abs(out["nll"] - nll) < 1e-4, (out["nll"], nll)


def test_eval_perplexity_survives_invalid_utf8(env, model_dir, texts, hf, hf_tok):
    proc = demi(env, "eval", "perplexity", "--model", model_dir, "--quant", "none", texts["bad_utf8"], "--json")
    out = one_json(proc)
    # Read with replacement characters, as `demi` documents.
    text = texts["bad_utf8"].read_bytes().decode("utf-8", errors="replace")
    nll, count = _reference_nll(hf, hf_tok, [text])
    assert out["tokens"] == count and abs(out["nll"] - nll) < 1e-4


# --- models and doctor -------------------------------------------------------------------------


def test_models_json(env):
    out = one_json(demi(env, "models", "--json"))
    assert {"builtin", "presets", "hub_cache"} <= set(out)
    assert "sheikh-2.5-coder" in {p["name"] for p in out["presets"]}
    assert out["hub_cache"] == []  # HF_HOME is an empty temporary directory


def test_models_info_preset_json(env):
    out = one_json(demi(env, "models", "info", "sheikh-2.5-coder", "--json"))
    assert out["parameters"]["total"] == 3085938688
    assert out["model_type"] == "qwen2"


def test_models_info_directory_json(env, model_dir, hf):
    out = one_json(demi(env, "models", "info", model_dir, "--json"))
    assert out["model_type"] == "llama"
    assert out["parameters"]["total"] == sum(p.numel() for p in hf.parameters())


def test_doctor_json(env, model_dir):
    out = one_json(demi(env, "doctor", "--model", model_dir, "--json"))
    assert out["ok"] is True
    assert out["model"]["ok"] is True and out["model"]["path"] == str(model_dir)


# --- the error contract ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broken(tmp_path_factory, model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    corrupt = root / "corrupt-config"
    shutil.copytree(model_dir, corrupt)
    (corrupt / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    truncated = root / "truncated"
    shutil.copytree(model_dir, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    small = tiny_checkpoint(root / "small-context", "llama", max_position_embeddings=32)
    return {"corrupt": corrupt, "truncated": truncated, "small": small, "missing": root / "no-such-dir"}


# case -> (arguments, a word the message must contain)
ERRORS = {
    "missing-model-dir": (["generate", "--model", "{missing}", "--prompt", "x"], "no-such-dir"),
    "unknown-model-name": (["generate", "--model", "no-such-model", "--prompt", "x"], "no-such-model"),
    "corrupt-config": (["generate", "--model", "{corrupt}", "--prompt", "x", "--json"], "config.json"),
    "truncated-safetensors": (["eval", "perplexity", "--model", "{truncated}", "{a}"], "truncated"),
    "prompt-over-context": (["generate", "--model", "{small}", "--prompt", PROMPT * 20, "--json"], "context"),
    "perplexity-missing-file": (
        ["eval", "perplexity", "--model", "{model}", "{missing}.txt", "--json"],
        "no such file",
    ),
    "perplexity-binary-file": (["eval", "perplexity", "--model", "{model}", "{binary}"], "binary"),
    "bad-flag": (["generate", "--model", "{model}", "--no-such-flag"], "--no-such-flag"),
    "negative-speculate": (["generate", "--model", "{model}", "--prompt", "x", "--speculate", "-1"], "--speculate"),
}


def _fill(args: list[str], broken, model_dir, texts) -> list[str]:
    paths = {**{k: str(v) for k, v in broken.items()}, "model": str(model_dir), **{k: str(v) for k, v in texts.items()}}
    return [a.format(**paths) for a in args]


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_exit_2_with_one_line(case, env, broken, model_dir, texts):
    args, word = ERRORS[case]
    proc = demi(env, *_fill(args, broken, model_dir, texts))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert word.lower() in lines[0].lower(), lines[0]


def test_debug_prints_the_traceback(env, broken):
    proc = demi(env, "generate", "--model", broken["corrupt"], "--prompt", "x", "--debug")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("demi: error:")
