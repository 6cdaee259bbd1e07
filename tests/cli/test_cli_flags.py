"""Flags as users meet them (issue 19): each one a command offers does what its help says.

`demi chat --temperature` reaches the chat answers; `demi doctor` reports the device, dtype,
quantization and context that `--device/--dtype/--quant/--context` (then the environment, then the
config file) give, as the model would load with them; `--model` resolves in the order its help
states; `demi models info` counts int4 with the engine's own group; `demi pull` says what it fetches
and fails offline with one line. Subprocesses run with the native kernels off (DEMI_NATIVE=0): they
are not the subject, and compiling them in each fresh cache would cost seconds.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
from helpers import clean_env, demi, one_json

from demi.assistant.chat import chat_sampling
from demi.assistant.engines import InProcessEngine
from demi.cli.main import build_parser
from demi.model.engine import LocalModel
from demi.model.quantize import DEFAULT_GROUP


def _help(*command: str) -> str:
    """A subcommand's --help text with its line wrapping undone."""
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if a.dest == "command" or a.dest.endswith("_command")).choices[name]
    return " ".join(parser.format_help().split())


# -- demi chat --temperature -----------------------------------------------------------------------


class RecordingEngine(InProcessEngine):
    """The real in-process engine, noting the sampling each chat answer asks for."""

    def __init__(self, local: LocalModel):
        super().__init__(local)
        self.samplings: list = []

    def chat(self, prompt, on_text=None, **kwargs):
        self.samplings.append(kwargs.get("sampling"))
        return super().chat(prompt, on_text, **kwargs)


@pytest.fixture()
def chat_env(tmp_path, monkeypatch) -> Path:
    """No user settings but a config file that sets chat.temperature (and short answers)."""
    for key in [k for k in os.environ if k.startswith("DEMI_")]:
        monkeypatch.delenv(key)
    config = tmp_path / "config.toml"
    config.write_text("[chat]\ntemperature = 0.2\nmax_tokens = 3\n", encoding="utf-8")
    monkeypatch.setenv("DEMI_CONFIG", str(config))
    monkeypatch.setenv("DEMI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DEMI_OFFLINE", "1")
    return config


@pytest.mark.asyncio
async def test_demi_chat_temperature_reaches_the_answers(chat_env, tmp_path, tiny_checkpoints):
    from demi.tui.app import app_from_args
    from demi.tui.widgets import AssistantMessage, Notice

    model_dir = tiny_checkpoints("qwen2", max_position_embeddings=1024)
    engine = RecordingEngine(LocalModel.load(str(model_dir), context=1024, quant="none"))
    args = build_parser().parse_args(["chat", "--model", str(model_dir), "--temperature", "0.7"])
    app = app_from_args(args, engine=engine, root=tmp_path)
    assert (app.config["chat.temperature"], app.config.sources["chat.temperature"]) == (0.7, "flag --temperature")
    async with app.run_test(size=(100, 30)) as pilot:
        deadline = time.monotonic() + 60
        await app.workers.wait_for_complete()  # the injected engine described, the session store open
        await pilot.pause()
        app.prompt.load_text("hello")
        app.prompt.move_cursor(app.prompt.document.end)
        await pilot.press("enter")
        while not engine.samplings or app.busy:
            assert time.monotonic() < deadline, [str(n.text) for n in app.query(Notice)]
            await pilot.pause()
        await app.workers.wait_for_complete()
        assert list(app.query(AssistantMessage))
        await pilot.press("ctrl+q")
    [sampling] = engine.samplings
    assert (sampling.temperature, sampling.top_p) == (0.7, 0.95)  # as `demi explain -t 0.7` samples

    # without the flag, the config file's chat.temperature holds; `-t` is the short form
    args = build_parser().parse_args(["chat", "--model", str(model_dir)])
    app = app_from_args(args, engine=engine, root=tmp_path)
    assert app.config["chat.temperature"] == 0.2 and app.config.sources["chat.temperature"] == f"config {chat_env}"
    assert chat_sampling(app.config["chat.temperature"]).temperature == 0.2
    app.history.close(timeout=5.0)
    assert build_parser().parse_args(["chat", "-t", "0"]).temperature == 0.0
    assert "--temperature" in _help("chat")


# -- demi doctor: the load flags and --model's order ----------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"), DEMI_NATIVE="0")


@pytest.fixture(scope="module")
def models(tiny_checkpoints, env) -> dict[str, Path]:
    """A model for each place --model can come from, and the config file (where XDG_CONFIG_HOME puts it)
    naming its own."""
    found = {"env": tiny_checkpoints("llama"), "config": tiny_checkpoints("qwen2")}
    config = Path(env["XDG_CONFIG_HOME"]) / "demi" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"model = {json.dumps(str(found['config']))}\n", encoding="utf-8")
    return found


def _setting(report: dict, key: str) -> dict:
    return next(row for row in report["config"]["settings"] if row["key"] == key)


def test_model_resolves_in_the_order_its_help_states(env, models, tiny_checkpoints):
    said = "this flag wins; without it $DEMI_MODEL, then `model` in the config file, then demi-tiny"
    assert said in _help("doctor") and said in _help("complete")
    flag = tiny_checkpoints("qwen2", max_position_embeddings=512)
    env = {**env, "DEMI_QUANT": "none"}  # no kernel plan to measure
    with_env = {**env, "DEMI_MODEL": str(models["env"])}
    cases = [  # (environment, extra arguments) -> (the model doctor checks, where the setting came from)
        (with_env, ["--model", str(flag)], flag, "flag --model"),
        (with_env, [], models["env"], "env DEMI_MODEL"),
        (env, [], models["config"], f"config {Path(env['XDG_CONFIG_HOME']) / 'demi' / 'config.toml'}"),
    ]
    for environ, extra, path, source in cases:
        report = one_json(demi(environ, "doctor", *extra, "--json"))
        assert report["model"]["path"] == str(path), (extra, report["model"])
        assert _setting(report, "model")["source"] == source


def test_doctor_reports_how_the_load_flags_would_load_the_model(env, models):
    env = {**env, "DEMI_QUANT": "int8"}  # the flag beats it
    args = ("doctor", "--model", models["config"], "--quant", "none", "--dtype", "bfloat16", "--context", 96)
    report = one_json(demi(env, *args, "--device", "cpu", "--json"))
    load = report["load"]
    assert report["ok"] and load["ok"], load
    assert (load["device"], load["dtype"], load["quant"], load["context"]) == ("cpu", "bfloat16", "none", 96)
    assert load["sources"] == {k: f"flag --{k}" for k in ("device", "dtype", "quant", "context")}
    assert 0 < load["memory_needed_bytes"] < 2**30
    assert "plan" not in report["cpu"]  # unquantized: no int8/int4 kernels to plan
    if torch.cuda.is_available():
        return
    proc = demi(env, *args, "--device", "cuda", "--json")
    assert proc.returncode == 1, proc.stderr  # the report is not ok: this model cannot load as asked
    report = json.loads(proc.stdout)
    assert not report["ok"] and not report["load"]["ok"] and "no CUDA device" in report["load"]["problem"]
    assert report["model"]["ok"]  # the model itself is fine


# -- demi models info: int4 as the engine quantizes it ------------------------------------------------


def test_models_info_counts_int4_with_the_engines_group(env, tmp_path, tiny_checkpoints):
    from demi.assistant.catalog import quantize
    from demi.model.config import load_config

    proc = demi(env, "models", "info", "demi-tiny")
    assert proc.returncode == 0, proc.stderr
    assert f"int4: groups of {DEFAULT_GROUP} " in proc.stdout
    info = one_json(demi(env, "models", "info", "demi-tiny", "--json"))
    assert info["int4_group"] == DEFAULT_GROUP
    # and `models quantize --quant int4` without --group writes that group
    out, group = quantize(str(tiny_checkpoints("qwen2")), str(tmp_path / "q4"), "int4")
    assert group == DEFAULT_GROUP and load_config(out).quantization_config["group_size"] == DEFAULT_GROUP


# -- demi pull --------------------------------------------------------------------------------------


def test_pull_says_what_it_fetches_and_fails_offline_in_one_line(env):
    text = _help("pull")
    assert all(word in text for word in ("safetensors", "JSON", "tokenizer", "network", "HF_HUB_OFFLINE"))
    proc = demi({**env, "HF_HUB_OFFLINE": "1"}, "pull", "Qwen/Qwen2.5-Coder-0.5B")
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"demi: error: cannot download Qwen/Qwen2\.5-Coder-0\.5B: offline mode is on .*\n", proc.stderr)
