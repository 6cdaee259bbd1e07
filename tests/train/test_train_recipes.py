"""End to end through the command line: `demi train fetch` (real pip and npm, offline, from local
packages) into a store, the GPU recipe at test scale on the CPU (the same code path as the
62M-parameter run: registry corpus split by package, speed plan, time budget, FIM probe,
prefetching, export), `demi train curve` into a model card; and a run killed with SIGKILL
mid-way that resumes to the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from registry_packages import make_npm_tarball, make_wheel
from safetensors.torch import load_file
from test_train_support import make_tree


def demi(capsys, *args) -> tuple[int, str, str]:
    from demi.cli.main import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def env_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "DEMI_OFFLINE")}
    os.environ.update(XDG_CACHE_HOME=str(home / "cache"), DEMI_OFFLINE="1")
    yield home
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_fetch_then_the_gpu_recipe_at_test_scale_then_the_curve(tmp_path, capsys, env_home):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    for i in range(3):
        make_wheel(tmp_path / "wheels", f"demo-py{i}", modules=4, first=4 * i)
        make_npm_tarball(tmp_path / "npm", f"demo-js{i}", modules=4, first=4 * i)
    make_wheel(tmp_path / "wheels", "demo-gpl", license_expression="GPL-2.0-only", first=20)
    (tmp_path / "py.txt").write_text("# a list\n" + "".join(f"demo-py{i}\n" for i in range(3)) + "demo-gpl\n")
    (tmp_path / "npm.txt").write_text("".join(f"{tmp_path}/npm/demo-js{i}-1.0.0.tgz\n" for i in range(3)))
    store = tmp_path / "store"
    code, out, _ = demi(
        capsys,
        *("train", "fetch", "--dest", store, "--pypi-list", tmp_path / "py.txt", "--npm-list", tmp_path / "npm.txt"),
        *("--pip-arg=--no-index", f"--pip-arg=--find-links={tmp_path / 'wheels'}", "--npm-arg=--offline", "--json"),
    )
    report = json.loads(out)
    assert code == 0 and report["attempted"] == 7 and report["pending"] == 0
    assert report["pypi"]["packages"] == 3 and report["pypi"]["excluded_licenses"] == {"GPL-2.0-only": 1}
    assert report["npm"]["packages"] == 3 and report["npm"]["files"] == 3 * 6

    run = tmp_path / "run"
    gpu = ("train", "gpu", "--out", run, "--scale", "test", "--device", "cpu", "--no-progress", "--json")
    code, _, err = demi(capsys, *gpu[:3], tmp_path / "other", *gpu[4:])
    assert code == 2 and "--registry" in err  # a new run needs the store
    # the documented CPU step, with the recipe's own device (cuda) left as it is: preparing needs no GPU
    prep = ("train", "gpu", "--out", run, "--scale", "test", "--registry", store, "--no-stdlib", "--time-budget", "120")
    code, out, _ = demi(capsys, *prep, "--prepare-only", "--json")
    assert code == 0 and json.loads(out)["prepared"] and (run / "run.json").is_file()
    # a corpus sized to the compute: the same share of every package's files
    code, out, _ = demi(capsys, "train", "corpus", "--registry", store, "--max-corpus-mb", "0.01", "--json")
    sized = json.loads(out)
    assert code == 0 and sized["max_total_bytes"] == 10_000 and 0 < sized["bytes"] <= 12_000
    assert 0 < sized["sample_fraction"] < 1
    small = tmp_path / "small"
    code, out, _ = demi(capsys, *prep[:3], small, *prep[4:], "--max-corpus-mb", "0.01", "--prepare-only", "--json")
    assert code == 0 and json.loads((small / "run.json").read_text())["corpus"]["max_total_bytes"] == 10_000
    assert json.loads((small / "manifest.json").read_text())["sample_fraction"] == sized["sample_fraction"]
    code, out, err = demi(capsys, *gpu, "--registry", store, "--no-stdlib", "--time-budget", "120")
    summary = json.loads(out)
    assert code == 0 and summary["finished"] and Path(summary["model_dir"], "model.safetensors").is_file()
    assert summary["speed_plan"]["source"] in ("measured", "cache") and "speed: " in err
    assert (
        summary["time_budget_s"] == 120
        and json.loads((run / "run.json").read_text())["train"]["steps"] == summary["step"]
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["heldout_by"] == "package" and manifest["heldout_units"]
    assert manifest["licenses"]["excluded_by_license"] == {"GPL-2.0-only": 1}
    kinds = {s["kind"] for s in manifest["sources"] if s["files"]}
    assert kinds == {"pypi", "npm"}
    assert any("fim_exact" in json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())

    code, out, _ = demi(capsys, *gpu)  # again: the run is done, nothing more to train
    assert code == 0 and json.loads(out)["step"] == summary["step"]

    card = tmp_path / "CARD.md"
    card.write_text("# card\n\n## Limitations\n")
    code, out, _ = demi(capsys, "train", "curve", "--run", run, "--card", card, "--json")
    curve = json.loads(out)
    assert code == 0 and curve["card_updated"] and curve["points"][-1]["step"] == summary["step"]
    assert "## Training curve: demi-gpu-test" in card.read_text() and (run / "curve.json").is_file()


RUN = ("--shape", "micro", "--vocab-size", "400", "--batch-size", "4", "--seq-len", "32", "--heldout", "0.3")
RUN += ("--eval-every", "10", "--ckpt-every", "3", "--compile", "off", "--precision", "fp32", "--no-progress")


def test_a_run_killed_mid_way_resumes_to_the_weights_of_an_unbroken_run(tmp_path, capsys):
    corpus = make_tree(tmp_path / "src", files=12)
    steps = 30
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "demi", "train", "run", "--corpus", str(corpus), "--out", str(killed)]
    proc = subprocess.Popen([*cmd, "--steps", str(steps), *RUN], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file() and int(latest.read_text().strip().rsplit("-", 1)[-1]) >= 6:
                proc.send_signal(signal.SIGKILL)  # no handler, no last checkpoint: a power cut
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    code, _, err = demi(capsys, "train", "run", "--out", killed, "--resume", *RUN)
    assert code == 0 and "resumed from step-" in err
    code, _, _ = demi(
        capsys, "train", "run", "--corpus", corpus, "--out", tmp_path / "straight", "--steps", steps, *RUN
    )
    assert code == 0
    a = load_file(str(killed / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    from demi.train.curve import read_curve

    assert read_curve(killed)["points"] == read_curve(tmp_path / "straight")["points"]
