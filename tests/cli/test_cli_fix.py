"""`demi fix` as a user runs it (subprocesses): bad input, a model whose reply is no fix, a fix
from a traceback through a server, `--apply` and `demi undo`, and `--test` with real failing
pytest runs on a temporary copy of the project.

Three models: the tiny random qwen2 (its reply is noise: the validation path and its message), a
scripted OpenAI-compatible server (tests/helpers.py; the fix a capable model would send), and a
tiny llama whose weights make it write one fixed line whatever the prompt (`looping_checkpoint`,
deterministic on every CPU), so the in-process path succeeds end to end: the model's line is
validated, tested on a copy, applied and undone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CODE, ScriptedServer, clean_env, demi, looping_checkpoint, one_json

FIXED_AREA = '''def area(r):
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return 3.14 * r * r
'''
BROKEN = CODE.replace("return 3.14 * r * r", "return 3.14 * r * radius")
SETTINGS = '"""Settings of the shop."""\n\nRATE=float("2,5")\n\n\ndef scaled(x):\n    return x * RATE\n'
SETTINGS_TEST = (  # it leaves a mark where it runs: never in the project itself
    'from pathlib import Path\n\nPath("ran-here").touch()\n\nimport settings\n\n\n'
    "def test_rate():\n    assert settings.scaled(2) == 5.0\n"
)
FIX_LINE = 'RATE=float("2.5")'  # what the fixing checkpoint writes (its tokens are all different)
PYTEST = f"{sys.executable} -m pytest -q -p no:cacheprovider test_settings.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    # pytest's plugins (this repository's test tools) are not the project's, and torch's own kernels
    # spare each run a compile of the native ones in this fresh home: quick starts
    return clean_env(
        tmp_path_factory.mktemp("home"), DEMI_DB_TIMEOUT="0.5", DEMI_NATIVE="0", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"
    )


@pytest.fixture(scope="module")
def fixing_model(tmp_path_factory) -> Path:
    return looping_checkpoint(tmp_path_factory.mktemp("fixing") / "model", FIX_LINE)


@pytest.fixture()
def project(tmp_path) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    (root / "geometry.py").write_text(BROKEN, encoding="utf-8")
    (root / "settings.py").write_text(SETTINGS, encoding="utf-8")
    (root / "test_settings.py").write_text(SETTINGS_TEST, encoding="utf-8")
    return root


def traceback_of(path: Path) -> str:
    return (
        "Traceback (most recent call last):\n"
        f'  File "{path}", line 12, in main\n    print(area(2))\n          ^^^^^^^\n'
        f'  File "{path}", line 8, in area\n    return 3.14 * r * radius\n                      ^^^^^^\n'
        "NameError: name 'radius' is not defined\n"
    )


def user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def untouched(project: Path) -> None:
    assert (project / "geometry.py").read_text(encoding="utf-8") == BROKEN
    assert (project / "settings.py").read_text(encoding="utf-8") == SETTINGS


@pytest.mark.parametrize(
    "args, needles",
    [
        (["nope.py", "--error", "x"], ["no such file"]),
        (["geometry.py", "--error", 'File "other.py", line 3, in f'], ["does not mention geometry.py", "other.py"]),
        (["geometry.py", "--error", "geometry.py:40: error: boom"], ["names line 40 of geometry.py"]),
        (["geometry.py", "--error", "ZeroDivisionError: division by zero"], ["names no line of geometry.py"]),
        (["geometry.py", "--lines", "9-x", "--error", "boom"], ["bad line range"]),
        (["geometry.py", "--lines", "10-99", "--error", "boom"], ["run past the end of the file"]),
        (["geometry.py"], ["say what fails: --error TEXT, --traceback FILE or --test CMD"]),
        (["geometry.py", "--traceback", "missing.txt"], ["missing.txt: no such file"]),
        (["geometry.py", "--error", "boom", "--test", "true"], ["not allowed with argument"]),
        (["geometry.py", "--symbol", "area", "--candidates", "0"], ["--candidates must be at least 1"]),
        (["settings.py", "--test", f"{sys.executable} -c pass"], ["passes (exit 0); there is nothing to fix"]),
        (["settings.py", "--test", "no-such-tool-xyz"], ["cannot run 'no-such-tool-xyz'"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(env, project, args, needles):
    user_error(demi(env, "fix", *args, "--apply", cwd=project), *needles)
    untouched(project)


def test_a_random_model_finds_no_valid_fix(env, project, tiny_checkpoints):
    model = tiny_checkpoints("qwen2", max_position_embeddings=1024)
    proc = demi(
        env,
        "fix",
        "geometry.py",
        "--error",
        traceback_of(project / "geometry.py"),
        "--model",
        model,
        "--quant",
        "none",
        "--max-tokens",
        12,
        "--apply",
        cwd=project,
    )
    assert proc.returncode == 1 and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("demi: runtime error: no valid fix found (1 try): ") and proc.stderr.count("\n") == 1
    assert "geometry.py is unchanged" in proc.stderr
    untouched(project)


def test_a_fix_from_a_traceback_then_apply_and_undo(env, project):
    srv = ScriptedServer(f"The name `radius` is not defined; it should be `r`:\n\n```python\n{FIXED_AREA}```\n")
    try:
        (project / "tb.txt").write_text(traceback_of(project / "geometry.py"), encoding="utf-8")
        proc = demi(env, "fix", "geometry.py", "--traceback", "tb.txt", "--server", srv.url, cwd=project)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("--- a/geometry.py\n+++ b/geometry.py\n")
        assert "-    return 3.14 * r * radius\n+    return 3.14 * r * r\n" in proc.stdout
        assert "NameError: name 'radius' is not defined at geometry.py:8; the fix rewrites area" in proc.stderr
        assert "nothing written; run again with --apply" in proc.stderr
        untouched(project)
        asked = srv.requests[-1]["messages"][-1]["content"]
        assert "Fix the bug in the function `area`" in asked and "line 8 of the file" in asked
        piped = subprocess.run(
            [sys.executable, "-m", "demi", "fix", "geometry.py", "--traceback", "-", "--server", srv.url]
            + ["--apply", "--json"],
            input=traceback_of(project / "geometry.py"),
            capture_output=True,
            text=True,
            env=env,
            cwd=project,
            timeout=120,
        )
        j = one_json(piped)
    finally:
        srv.close()
    assert j["applied"] is True and j["target"] == "area" and j["frame"]["line"] == 8 and j["test"] is None
    assert j["error"] == "NameError: name 'radius' is not defined" and j["backup"]
    assert (project / "geometry.py").read_text(encoding="utf-8") == CODE
    sessions = one_json(demi(env, "sessions", "list", "--json"))["sessions"]
    assert sessions[0]["kind"] == "fix" and "geometry.py area (line 8)" in sessions[0]["title"]
    u = one_json(demi(env, "undo", "geometry.py", "--json", cwd=project))
    assert u["restored"] is True
    untouched(project)


def test_test_on_a_copy_then_apply_with_the_in_process_model(env, project, fixing_model):
    j = one_json(
        demi(
            env,
            "fix",
            "settings.py",
            "--test",
            PYTEST,
            "--model",
            fixing_model,
            "--quant",
            "none",
            "--max-tokens",
            15,
            "--apply",
            "--json",
            "--no-history",
            cwd=project,
        )
    )
    before, after = j["test_before"], j["test"]
    assert before["passed"] is False and before["exit_code"] == 2  # the module fails to import: collection error
    assert "ValueError: could not convert string to float: '2,5'" in before["output"]
    assert f"{project}/settings.py" in before["output"] or "settings.py:3" in before["output"]
    assert "demi-fix-" not in before["output"]  # the copy's paths read as the project's
    assert after["passed"] is True and after["exit_code"] == 0 and "1 passed" in after["output"]
    assert j["error"] == "ValueError: could not convert string to float: '2,5'" and j["frame"]["line"] == 3
    assert j["target"] == "lines 3-3" and j["applied"] is True
    assert (project / "settings.py").read_text(encoding="utf-8") == SETTINGS.replace('"2,5"', '"2.5"')
    assert not (project / "ran-here").exists() and not (project / "__pycache__").exists()  # ran on copies
    restored = demi(env, "undo", "settings.py", cwd=project)
    assert restored.returncode == 0, restored.stderr
    untouched(project)


def test_a_fix_that_does_not_pass_the_test_is_not_written(env, project):
    srv = ScriptedServer('```python\nRATE=float("25")\n```\n')
    try:
        proc = demi(env, "fix", "settings.py", "--test", PYTEST, "--server", srv.url, "--apply", cwd=project)
    finally:
        srv.close()
    assert proc.returncode == 1, proc.stderr
    assert '+RATE=float("25")' in proc.stdout  # shown, so the user sees what was tried
    assert f"with this fix, `{PYTEST}` still fails" in proc.stderr
    assert "nothing written: the fix does not make the test pass" in proc.stderr
    untouched(project)
    assert not (project / "ran-here").exists()
