"""`demi models export MODEL DIR --onnx` and `demi bench --engine onnxruntime` as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import clean_env


def demi(env, *args):
    """`python -m demi ARGS`, with room for an export on a busy machine."""
    cmd = [sys.executable, "-m", "demi", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", env=env, timeout=600)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return clean_env(tmp_path_factory.mktemp("home"))


def test_models_export_onnx(tiny_checkpoints, tmp_path, env):
    src = tiny_checkpoints("qwen2")
    r = demi(env, "models", "export", src, tmp_path / "onnx", "--onnx")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    graphs = r"model\.onnx \(fp32, [\d.]+ MiB\), model\.int8\.onnx \(int8, [\d.]+ MiB\)"
    line = rf"wrote {graphs} to \S+: qwen2, opset 18, in [\d.]+ s\n"
    assert re.fullmatch(line, r.stdout), r.stdout
    for name in ("model.onnx", "model.int8.onnx"):
        path = str(tmp_path / "onnx" / name)
        assert {o.domain: o.version for o in onnx.load(path).opset_import}[""] == 18
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        assert names[:3] == ["input_ids", "past_key_0", "past_value_0"]
        past = [np.zeros((1, 2, 0, 16), np.float32) for _ in names[1:]]
        logits, *presents = session.run(None, {"input_ids": np.array([[5, 6, 7]]), **dict(zip(names[1:], past))})
        assert logits.shape == (1, 3, 512) and presents[0].shape == (1, 2, 3, 16)
    for name in ("onnx.json", "config.json", "tokenizer.json"):
        assert (tmp_path / "onnx" / name).is_file()


def test_export_refusals_are_one_line(tiny_checkpoints, tmp_path, env):
    r = demi(env, "models", "export", tiny_checkpoints("minimax"), tmp_path / "x", "--onnx")
    assert r.returncode == 2 and r.stdout == ""
    assert re.fullmatch(r"demi: error: minimax: cannot be exported to ONNX yet: [^\n]+\n", r.stderr), r.stderr
    assert not (tmp_path / "x").exists()
    r = demi(env, "models", "export", tiny_checkpoints("qwen2"), tmp_path / "y")
    assert r.returncode == 2 and "--onnx" in r.stderr and r.stderr.count("\n") == 1
    r = demi(env, "bench", "--engine", "onnxruntime", "--model", tiny_checkpoints("minimax"))
    assert r.returncode == 2 and r.stderr.startswith("demi: error: minimax: cannot be exported") and r.stdout == ""


def test_bench_prints_demi_and_onnxruntime(tiny_checkpoints, env):
    args = ["--prompt-tokens", "16", "--new-tokens", "6", "--runs", "1"]
    r = demi(env, "bench", "--engine", "onnxruntime", "--model", tiny_checkpoints("qwen2"), *args)
    assert r.returncode == 0, r.stderr
    demi_line = re.search(r"^  prefill +([\d.]+) tok/s.*\n  decode +([\d.]+) tok/s", r.stdout, re.M)
    assert demi_line and min(map(float, demi_line.groups())) > 0, r.stdout
    assert re.search(r"^onnxruntime [\d.]+ \(CPU, opset 18, \d+ threads, exported in [\d.]+ s\)", r.stdout, re.M)
    for variant in ("fp32", "int8"):
        line = re.search(
            rf"^  onnxruntime {variant}: prefill +([\d.]+) tok/s .* decode +([\d.]+) tok/s", r.stdout, re.M
        )
        assert line and min(map(float, line.groups())) > 0, r.stdout
    assert re.search(r"^  decode: Demi [\d.]+x onnxruntime fp32, [\d.]+x onnxruntime int8$", r.stdout, re.M)
