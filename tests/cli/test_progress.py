"""Progress of long work on stderr (demi/progress.py, cli/progress_display.py): the loader reports each
stage from 0 to its total, never going back; the CLI draws it on a terminal (a pseudo-terminal here)
and prints nothing new without one or with --json; DEMI_PROGRESS=1 forces plain lines where there is
no terminal (and DEMI_PROGRESS=0 turns it off: `wanted`, without a process of its own). `explain` and
`complete` show the same display as `generate` (no spinner of their own). Each process loads torch:
seven of them, no more.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from helpers import CODE, clean_env, demi, one_json

from demi.cli.main import UsageError
from demi.cli.progress_display import wanted
from demi.model.checkpoint import read_index
from demi.model.loading import PLAN_STAGE, load_model
from demi.progress import progress_to, report

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("qwen2")  # tied embeddings: the quantized head is one more step


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"), TERM="xterm-256color")


def on_terminal(env: dict[str, str], *args: object) -> tuple[subprocess.CompletedProcess, str]:
    """`python -m demi ARGS` with stderr on a 100x24 pseudo-terminal and stdout a pipe: the finished
    process (stdout captured) and the text the terminal received, escape sequences removed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    cmd = [sys.executable, "-m", "demi", *map(str, args)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        reader.join(timeout=10)
        os.close(master)
    text = ESCAPES.sub("", b"".join(received).decode("utf-8", "replace"))
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout.decode(), ""), text


def stage_runs(events: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    runs: dict[str, list[tuple[int, int]]] = {}
    for stage, done, total in events:
        runs.setdefault(stage, []).append((done, total))
    return runs


@pytest.mark.parametrize(
    ("quant", "stages"),
    [
        ("none", ["reading weights"]),
        ("int8", [PLAN_STAGE, "quantizing weights to int8", "building int8 layers"]),
    ],
)
def test_the_loader_reports_each_stage_from_zero_to_its_total(model_dir, quant, stages):
    events: list[tuple[str, int, int]] = []
    with progress_to(lambda *event: events.append(event)):
        model = load_model(model_dir, quant=quant, context=64)
    assert model.quantization == quant
    runs = stage_runs(events)
    assert list(runs) == stages  # in this order, each stage once
    for stage, steps in runs.items():
        totals = {total for _, total in steps}
        done = [d for d, _ in steps]
        assert len(totals) == 1 and totals.pop() == steps[0][1] > 0, (stage, steps)
        assert done[0] == 0 and done[-1] == steps[0][1], (stage, done)
        assert all(a <= b for a, b in zip(done, done[1:])), (stage, done)
    # a step per tensor of the checkpoint, and one for the tied head's own quantized copy
    weights = runs[stages[0] if quant == "none" else stages[1]][-1][1]
    assert weights == len(read_index(model_dir)) + (quant == "int8")


def test_no_listener_no_report_and_the_listener_is_restored():
    heard: list[tuple[str, int, int]] = []
    report("nobody", 0, 1)  # no listener: nothing happens
    with progress_to(lambda *e: heard.append(e)):
        with progress_to(None):
            report("muted", 1, 1)
        report("heard", 1, 1)
    report("after", 1, 1)
    assert heard == [("heard", 1, 1)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("setting", "json_output", "terminal", "shown"),
    [
        (None, False, True, True),
        (None, True, True, False),  # --json
        (None, False, False, False),  # a pipe or a file
        ("0", False, True, False),
        ("1", True, False, True),  # forced, even with --json and no terminal
        (" On ", False, False, True),
        ("off", False, True, False),
    ],
)
def test_when_progress_is_shown(monkeypatch, setting, json_output, terminal, shown):
    monkeypatch.delenv("DEMI_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    if setting is not None:
        monkeypatch.setenv("DEMI_PROGRESS", setting)
    stream = _Terminal() if terminal else io.StringIO()
    assert wanted(json_output, stream) is shown


def test_a_dumb_terminal_or_a_bad_setting(monkeypatch):
    monkeypatch.delenv("DEMI_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "dumb")
    assert wanted(False, _Terminal()) is False
    monkeypatch.setenv("DEMI_PROGRESS", "sometimes")
    with pytest.raises(UsageError, match="DEMI_PROGRESS must be 1 .* or 0"):
        wanted(False, _Terminal())


# --- the command line ----------------------------------------------------------------------------


def test_models_quantize_shows_its_stages_on_a_terminal(env, model_dir, tmp_path):
    proc, terminal = on_terminal(env, "models", "quantize", model_dir, tmp_path / "q8", "--quant", "int8")
    assert proc.returncode == 0, terminal
    assert proc.stdout == f"wrote int8 checkpoint to {tmp_path / 'q8'}\n"
    assert f"quantizing {model_dir} to int8" in terminal
    finished = re.findall(r"quantizing weights to int8\s.*?(\d+)/(\d+)", terminal)
    assert finished and finished[-1][0] == finished[-1][1], terminal


def test_generate_shows_progress_on_a_terminal_and_nothing_through_a_pipe(env, model_dir):
    args = ("generate", "--model", model_dir, "--quant", "none", "--prompt", "def add(a, b):", "-n", "6")
    piped = demi(env, *args)
    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    proc, terminal = on_terminal(env, *args)
    assert proc.returncode == 0, terminal
    assert proc.stdout == piped.stdout  # the answer itself is untouched
    assert f"loading {model_dir}" in terminal
    assert re.search(r"reading weights\s.*?(\d+)/\1", terminal), terminal


def test_json_on_a_terminal_shows_nothing(env, model_dir):
    args = ("generate", "--model", model_dir, "--quant", "none", "--prompt", "x", "-n", "2", "--json")
    proc, terminal = on_terminal(env, *args)
    assert one_json(proc)["completion_tokens"] <= 2
    assert terminal == ""


def test_demi_progress_1_writes_plain_lines_without_a_terminal(env, model_dir, tmp_path):
    proc = demi({**env, "DEMI_PROGRESS": "1"}, "models", "quantize", model_dir, tmp_path / "q8", "--quant", "int8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"demi: quantizing {model_dir} to int8"
    assert re.fullmatch(r"demi: quantizing weights to int8 (\d+)/\1 \(\d+\.\d s\)", lines[-1]), lines
    assert "\x1b" not in proc.stderr  # no terminal codes in a log


def test_explain_and_complete_show_the_shared_progress(env, model_dir, tmp_path):
    """The session-layer commands load the model under the same display as generate: on a terminal the
    label and the loader's stages, erased before the answer; DEMI_PROGRESS=1 off a terminal: plain lines."""
    src = tmp_path / "geometry.py"
    src.write_text(CODE, encoding="utf-8")
    model = ("--model", model_dir, "--quant", "none", "--max-tokens", 2, "--no-history")
    proc, terminal = on_terminal(env, "explain", src, "--symbol", "area", *model)
    assert proc.returncode == 0 and proc.stdout.startswith(f"## `{src}` › `area`\n"), terminal
    assert f"loading {model_dir}" in terminal
    assert re.search(r"reading weights\s.*?(\d+)/\1", terminal), terminal
    proc = demi({**env, "DEMI_PROGRESS": "1"}, "complete", src, "--at", "12:5", *model)
    assert proc.returncode == 0 and proc.stdout.endswith("\n"), proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"demi: loading {model_dir}", lines
    assert re.fullmatch(r"demi: reading weights (\d+)/\1 \(\d+\.\d s\)", lines[1]), lines
