"""`demi explain / complete / refactor / undo / sessions / config` as a user runs them (subprocesses).

The model is a tiny random qwen2 with the byte-level tokenizer, so explanations are noise; the
tests check the contract (exit codes, one JSON object, one-line errors, nothing written without
--apply) and placement. Refactors that must succeed come from a scripted OpenAI-compatible server
(tests/helpers.py): no random model writes a valid rewrite, and a real server with a real
model is not available to tests. The HTTP client itself is tested against `demi serve` in
test_assist_engines.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import CODE, REWRITE, ScriptedServer, clean_env, demi, one_json


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"), DEMI_DB_TIMEOUT="0.5")


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("qwen2", max_position_embeddings=1024)


@pytest.fixture()
def src(tmp_path) -> Path:
    p = tmp_path / "geometry.py"
    p.write_text(CODE, encoding="utf-8")
    return p


def user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr
    return proc.stderr


@pytest.fixture()
def scripted():
    srv = ScriptedServer(f"Sure, here it is:\n\n```python\n{REWRITE}```\n")
    yield srv
    srv.close()


# -- explain ----------------------------------------------------------------------------------------


def test_explain_streams_facts_then_labelled_model_text(env, model_dir, src):
    proc = demi(env, "explain", src, "--symbol", "area", "--model", model_dir, "--max-tokens", 8)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no progress: stderr is not a terminal
    out = proc.stdout
    assert out.startswith(f"## `{src}` › `area`\n")
    assert out.index("### Static analysis") < out.index("### Explanation (written by the model")
    assert "- **Raises:** `ValueError`" in out and "- **Returns:** `return` `3.14 * r * r`" in out
    assert "- **Docstring:** Area of a circle." in out


def test_explain_json_and_history(env, model_dir, src):
    j = one_json(demi(env, "explain", src, "--lines", "11-12", "--model", model_dir, "--max-tokens", 6, "--json"))
    assert {"path", "symbol", "explanation", "model", "completion_tokens", "seconds"} <= set(j)
    assert (j["path"], j["symbol"], j["lines"], j["model"]) == (str(src), None, [11, 12], str(model_dir))
    assert j["completion_tokens"] <= 6 and "lines 11-12" in j["explanation"]
    sessions = one_json(demi(env, "sessions", "list", "--json"))["sessions"]
    assert sessions and sessions[0]["kind"] == "explain" and sessions[0]["messages"] == 2
    shown = one_json(demi(env, "sessions", "show", sessions[0]["id"], "--json"))
    assert shown["messages"][1]["content"] == j["explanation"] and shown["messages"][1]["seconds"] > 0
    hits = one_json(demi(env, "sessions", "search", "geometry", "--json"))["results"]
    assert any(h["session_id"] == sessions[0]["id"] for h in hits)


def test_explain_whole_file_with_invalid_utf8(env, model_dir, tmp_path):
    p = tmp_path / "latin.py"
    p.write_bytes(b"# caf\xe9 \xff\ndef f(x):\n    return x\n")
    j = one_json(demi(env, "explain", p, "--model", model_dir, "--max-tokens", 4, "--json", "--no-history"))
    assert "`def f(x)` (lines 2-3)" in j["explanation"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--symbol", "nope"], ["no symbol 'nope'; symbols: area, main"]),
        (["--lines", "10-99"], ["run past the end of the file (12 lines)"]),
        (["--lines", "x-y"], ["bad line range"]),
        (["--symbol", "area", "--lines", "1-2"], ["not both"]),
    ],
)
def test_explain_bad_targets(env, src, args, needles):
    user_error(demi(env, "explain", src, *args), *needles)


def test_bad_files_are_user_errors(env, tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "huge.py").write_bytes(b"# filler\n" * 300_000)
    user_error(demi(env, "explain", tmp_path / "blob.bin"), "binary")
    user_error(demi(env, "explain", tmp_path / "huge.py"), "over the 2 MB limit")
    user_error(demi(env, "complete", tmp_path / "none.py", "--at", "1:1"), "no such file")


# -- complete ---------------------------------------------------------------------------------------


def test_complete_json(env, model_dir, src, tmp_path):
    other = tmp_path / "shapes.py"
    other.write_text("def circle_area(r):\n    return math.pi * r * r  # area of a circle\n", encoding="utf-8")
    j = one_json(
        demi(
            env,
            "complete",
            src,
            "--at",
            "8:12",
            "--model",
            model_dir,
            "--max-tokens",
            6,
            "--json",
            "--context-file",
            other,
        )
    )
    assert {"completion", "model", "prompt_tokens", "completion_tokens", "seconds"} <= set(j)
    assert (j["line"], j["col"], j["fim"]) == (8, 12, "demi-tiny") and j["prompt_tokens"] > 20
    assert j["completion_tokens"] <= 6 and "\n" not in j["completion"]  # mid-line: one line
    assert "1 snippet(s) from other files" in j["notes"]


@pytest.mark.parametrize(
    "at, needles",
    [
        ("99:1", ["line 99 is outside the file (lines 1-13)"]),
        ("8:40", ["column 40 is outside the line (columns 1-24)"]),
        ("8", ["bad position '8'"]),
        ("0:1", ["start at 1"]),
    ],
)
def test_complete_bad_positions(env, src, at, needles):
    user_error(demi(env, "complete", src, "--at", at), *needles)


def test_complete_needs_at(env, src):
    user_error(demi(env, "complete", src), "--at LINE:COL is required")


# -- refactor and undo --------------------------------------------------------------------------------


def test_refactor_prints_a_diff_and_writes_nothing(env, src, scripted):
    proc = demi(
        env,
        "refactor",
        src,
        "--symbol",
        "area",
        "--instruction",
        "add type hints; use math.pi",
        "--server",
        scripted.url,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"--- a/{src}\n+++ b/{src}\n")
    assert "-def area(r):\n+def area(r: float) -> float:\n" in proc.stdout
    assert "nothing written; run again with --apply" in proc.stderr
    assert src.read_text(encoding="utf-8") == CODE
    req = scripted.requests[-1]
    assert req["stream"] is True and "add type hints; use math.pi" in req["messages"][-1]["content"]


def test_refactor_apply_then_undo(env, src, scripted):
    j = one_json(
        demi(
            env,
            "refactor",
            src,
            "--symbol",
            "area",
            "-i",
            "add type hints",
            "--server",
            scripted.url,
            "--apply",
            "--json",
        )
    )
    assert j["applied"] is True and j["diff"].count("\n+def area(r: float) -> float:") == 1
    [text_edit] = j["workspace_edit"]["changes"][src.resolve().as_uri()]
    assert text_edit["range"]["start"] == {"line": 3, "character": 0}
    old_area = CODE[CODE.index("def area") : CODE.index("\n\n\ndef main")] + "\n"
    assert src.read_text(encoding="utf-8") == CODE.replace(old_area, REWRITE)
    assert j["completion_tokens"] == 17 and j["prompt_tokens"] == 42  # the server's usage
    u = one_json(demi(env, "undo", src, "--json"))
    assert u["restored"] is True and src.read_text(encoding="utf-8") == CODE
    user_error(demi(env, "undo", src), "no backup to restore")


def test_refactor_random_model_is_rejected_and_nothing_changes(env, model_dir, src):
    proc = demi(
        env,
        "refactor",
        src,
        "--symbol",
        "main",
        "-i",
        "rename to run",
        "--model",
        model_dir,
        "--max-tokens",
        12,
        "--apply",
    )
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    assert "nothing was changed" in proc.stderr and proc.stderr.count("\n") == 1
    assert src.read_text(encoding="utf-8") == CODE


def test_refactor_refuses_to_rewrite_undecodable_bytes(env, tmp_path, scripted):
    p = tmp_path / "bytes.py"
    p.write_bytes(b"# \xff\ndef area(r):\n    return r\n")
    user_error(
        demi(env, "refactor", p, "--symbol", "area", "-i", "x", "--server", scripted.url, "--apply"), "not valid UTF-8"
    )
    assert p.read_bytes() == b"# \xff\ndef area(r):\n    return r\n"


def test_refactor_needs_an_instruction(env, src):
    user_error(demi(env, "refactor", src, "--symbol", "area"), "--instruction TEXT is required")


# -- servers, stores, config -----------------------------------------------------------------------


def test_unreachable_server(env, src):
    user_error(
        demi(env, "explain", src, "--symbol", "area", "--server", "http://127.0.0.1:9"),
        "cannot reach the server at http://127.0.0.1:9",
    )


def test_corrupt_store_is_moved_aside_and_explain_still_saves(env, model_dir, src, tmp_path):
    """A corrupt sessions.db is kept for the user under a new name, said in one line, and a new
    database is started: history keeps working."""
    e = dict(env, DEMI_DATA_DIR=str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "sessions.db"
    db.write_bytes(b"garbage " * 1000)
    proc = demi(e, "sessions", "list")
    assert proc.returncode == 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "was corrupt" in proc.stderr and "moved it to" in proc.stderr
    aside = list((tmp_path / "data").glob("sessions.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage " * 1000
    proc = demi(e, "explain", src, "--symbol", "main", "--model", model_dir, "--max-tokens", 4)
    assert proc.returncode == 0 and "### Static analysis" in proc.stdout and "not saved" not in proc.stderr
    assert one_json(demi(e, "sessions", "list", "--json"))["sessions"]  # saved in the new database


def test_locked_store_warns_reads_still_work_and_explain_answers(env, model_dir, src, tmp_path):
    import sqlite3

    from demi.assistant.store import Store

    e = dict(env, DEMI_DATA_DIR=str(tmp_path / "data"))
    with Store(tmp_path / "data" / "sessions.db") as store:
        store.record("chat", "earlier", None, "q", "a")
    blocker = sqlite3.connect(tmp_path / "data" / "sessions.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        assert len(one_json(demi(e, "sessions", "list", "--json"))["sessions"]) == 1  # WAL: readers go on
        proc = demi(e, "explain", src, "--symbol", "main", "--model", model_dir, "--max-tokens", 2)
        assert proc.returncode == 0 and "### Static analysis" in proc.stdout
        assert "not saved to history" in proc.stderr and "locked by another Demi process" in proc.stderr
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_config_file_env_and_flags(env, model_dir, src, tmp_path):
    cfg_dir = Path(env["XDG_CONFIG_HOME"]) / "demi"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "config.toml").write_text(f'model = "{model_dir}"\n[explain]\nmax_tokens = 3\n', encoding="utf-8")
    try:
        j = one_json(demi(dict(env, DEMI_EXPLAIN_LEAD="model"), "config", "--json"))
        rows = {r["key"]: r for r in j["settings"]}
        assert rows["model"]["source"] == f"config {cfg_dir / 'config.toml'}"
        lead = rows["explain.lead"]
        assert lead["value"] == "model" and lead["source"] == "env DEMI_EXPLAIN_LEAD"
        out = one_json(demi(env, "explain", src, "--symbol", "main", "--json", "--no-history"))
        assert out["model"] == str(model_dir) and out["completion_tokens"] <= 3  # both from the file
    finally:
        (cfg_dir / "config.toml").unlink()
