"""`demi train` and `demi eval fim|passk` as a user runs them: a few training steps on a tiny
corpus and the FIM evaluation of the result as subprocesses; resume, pass@k and the one-line
user errors (exit 2) through `demi.cli.main.main` in this process (the same code path, without
paying for a new interpreter and torch import each time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import make_tokenizer, make_tree


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DEMI_", "HF_", "XDG_"))}
    out.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "cfg"),
        XDG_DATA_HOME=str(home / "data"),
        DEMI_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return out


def demi(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "demi", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


class InProcess:
    """What a subprocess result offers, from `demi.cli.main.main` run here."""

    def __init__(self, capsys, args):
        from demi.cli.main import main

        capsys.readouterr()
        self.returncode = main([str(a) for a in args])
        captured = capsys.readouterr()
        self.stdout, self.stderr = captured.out, captured.err


def one_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert pattern in lines[0], lines[0]


TRAIN = [
    "--shape",
    "micro",
    "--vocab-size",
    "400",
    "--batch-size",
    "4",
    "--seq-len",
    "32",
    "--eval-every",
    "3",
    "--ckpt-every",
    "3",
    "--heldout",
    "0.3",
    "--compile",
    "off",
    "--precision",
    "fp32",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory, env) -> Path:
    root = tmp_path_factory.mktemp("train")
    corpus = make_tree(root / "src", files=12)
    out = root / "run"
    res = one_json(demi(env, "train", "run", "--corpus", corpus, "--out", out, "--steps", "6", *TRAIN, "--json"))
    assert res["finished"] and res["step"] == 6 and res["eval_loss"] is not None
    assert Path(res["model_dir"]) == out / "model"
    return out


def test_train_run_writes_a_model_manifest_and_checkpoints(run):
    model = run / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json"} <= {
        p.name for p in model.iterdir()
    }
    manifest = json.loads((run / "manifest.json").read_text())
    src = manifest["sources"][0]
    assert src["license"]["spdx"] == "MIT" and src["files"] == 12 and src["tokens"] > 0
    assert manifest["shippable"] and manifest["heldout_files"] >= 1
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and all("eval_loss" in r for r in log)  # eval steps, the end


def test_rerun_needs_resume_and_resume_extends(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    user_error(InProcess(capsys, ["train", "run", "--corpus", copy, "--out", copy, "--steps", "6", *TRAIN]), "--resume")
    res = one_json(
        InProcess(capsys, ["train", "run", "--out", copy, "--resume", "--steps", "8", "--no-progress", "--json"])
    )
    assert res["step"] == 8 and res["finished"]
    assert json.loads((copy / "run.json").read_text())["train"]["steps"] == 8


def test_a_data_phase_changes_the_mix_and_resumes_exactly(run, tmp_path):
    """A phase in run.json trains the steps after its `from_step` on its own mix, from the
    checkpoint that ends the phase before; stopping inside it and resuming gives the weights a
    straight run gives."""
    import shutil

    from safetensors.torch import load_file

    from demi.train import checkpoints
    from demi.train.errors import TrainConfigError
    from demi.train.pipeline import train_run

    copies = []
    for name in ("straight", "stopped"):
        copy = tmp_path / name
        shutil.copytree(run, copy)
        spec = json.loads((copy / "run.json").read_text())
        spec["phases"] = [{"from_step": 6, "data": {"fim_rate": 1.0, "line_fim_rate": 1.0, "seed": 5}}]
        (copy / "run.json").write_text(json.dumps(spec))
        copies.append(copy)
    logs: list[str] = []
    train_run(copies[0], steps=10, progress=False, log=logs.append)
    assert any("data phase 1" in line for line in logs)
    first = train_run(copies[1], steps=10, until=8, progress=False, log=lambda _: None)
    assert first["step"] == 8 and not first["finished"]
    state = checkpoints.load_state(checkpoints.latest_checkpoint(copies[1]))
    assert state["data_options"]["line_fim_rate"] == 1.0 and state["position"][0] == 0
    assert train_run(copies[1], progress=False, log=lambda _: None)["finished"]
    a, b = (load_file(str(c / "model" / "model.safetensors")) for c in copies)
    assert all(torch_equal(a[k], b[k]) for k in a)
    plain = load_file(str(run / "model" / "model.safetensors"))
    assert any(not torch_equal(a[k], plain[k]) for k in a)
    spec = json.loads((copies[1] / "run.json").read_text())
    spec["phases"] = [{"from_step": 6, "data": {"seq_len": 64}}]
    (copies[1] / "run.json").write_text(json.dumps(spec))
    with pytest.raises(TrainConfigError, match="seq_len"):
        train_run(copies[1], steps=12, progress=False, log=lambda _: None)


def torch_equal(x, y) -> bool:
    return bool((x == y).all())


def test_eval_fim_on_the_runs_heldout_files(env, run):
    res = one_json(
        demi(
            env, "eval", "fim", "--model", run / "model", "--run", run, "--samples", "3", "--max-tokens", "6", "--json"
        )
    )
    assert res["samples"] == 3 and res["fim"] == "demi-tiny"
    assert 0 <= res["exact_match"] <= 1 and 0 <= res["edit_similarity"] <= 1
    assert len(res["examples"]) == 3


def test_eval_passk_runs_the_builtin_problems(run, capsys):
    res = one_json(
        InProcess(
            capsys,
            [
                "eval",
                "passk",
                "--model",
                run / "model",
                "--limit",
                "2",
                "--max-tokens",
                "8",
                "--timeout",
                "3",
                "--json",
            ],
        )
    )
    assert res["problems"] == 2 and 0 <= res["pass@1"] <= 1 and res["samples"] == 2


def test_user_errors(run, tmp_path, capsys):
    def demi(_env, *args):
        return InProcess(capsys, args)

    env = None
    empty = tmp_path / "empty"
    empty.mkdir()
    user_error(demi(env, "train", "run", "--corpus", empty, "--out", tmp_path / "r1", *TRAIN), "empty corpus")
    bad = make_tree(tmp_path / "bad", files=2)
    (bad / "pkg" / "data.py").write_bytes(b"\x89PNG\x00\x00")
    user_error(demi(env, "train", "run", "--corpus", bad, "--out", tmp_path / "r2", *TRAIN), "binary file")
    user_error(demi(env, "train", "run", "--out", tmp_path / "nothing", "--resume"), "no run to resume")
    user_error(
        demi(env, "eval", "passk", "--model", run / "model", "--problems", tmp_path / "none.jsonl"),
        "no such problem file",
    )
    # A different tokenizer than the teacher's: distillation refuses before training.
    other = make_tokenizer(tmp_path / "othertok", vocab_size=300)
    assert other.vocab_size != 400
    user_error(
        demi(
            env,
            "train",
            "distill",
            "--teacher",
            run / "model",
            "--tokenizer",
            tmp_path / "othertok",
            "--corpus",
            run.parent / "src",
            "--out",
            tmp_path / "r3",
            "--steps",
            "2",
            *TRAIN,
        ),
        "different vocabulary",
    )


def test_corrupt_checkpoint_on_resume(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    latest = copy / "checkpoints" / (copy / "checkpoints" / "latest").read_text().strip()
    with open(latest / "optimizer.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"garbage")
    user_error(InProcess(capsys, ["train", "run", "--out", copy, "--resume", "--steps", "10"]), "corrupt checkpoint")


def test_export_the_latest_checkpoint(run, tmp_path, capsys):
    from safetensors.torch import load_file

    res = one_json(InProcess(capsys, ["train", "export", "--run", run, "--to", tmp_path / "now", "--json"]))
    exported = load_file(str(Path(res["model_dir"]) / "model.safetensors"))
    final = load_file(str(run / "model" / "model.safetensors"))  # the last checkpoint is the final model
    assert exported.keys() == final.keys() and all((exported[k] == final[k]).all() for k in final)
    assert (tmp_path / "now" / "tokenizer.json").is_file()
    user_error(InProcess(capsys, ["train", "export", "--run", tmp_path, "--to", tmp_path / "x"]), "no run.json")
