"""Snapshots of demi-chat's main screens (pytest-textual-snapshot; `--snapshot-update` accepts a change).

Everything on screen is deterministic: a scripted engine with fixed timings, fixed session titles,
paths relative to the working folder, and a fixed clock for the refactor's own timing.
"""

from __future__ import annotations

import difflib
import html
import os
import re
import types
from pathlib import Path

import pytest
from test_tui_app import CODE, REWRITE, ScriptedEngine

from demi.assistant.store import Store
from demi.tui.app import DemiChat

SIZE = (110, 32)
ANSWER = (
    "`area` returns the area of a circle of radius `r`:\n\n```python\ndef area(r):\n    return 3.14 * r * r\n```\n\n"
    "It raises `ValueError` for a negative radius.\n"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("DEMI_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "data"))
    monkeypatch.setenv("DEMI_CONFIG", str(tmp_path / "none.toml"))
    clock = iter(x * 0.25 for x in range(10_000))
    monkeypatch.setattr("demi.assistant.refactor.time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    work = tmp_path / "work"
    work.mkdir()
    (work / "geometry.py").write_text(CODE, encoding="utf-8")
    with Store(tmp_path / "data" / "sessions.db") as store:
        store.record(
            "explain",
            "explain geometry.py area",
            "demi-tiny",
            "explain geometry.py area",
            "## `geometry.py` › `area`\n\nIt computes the area of a circle.",
            10,
            5,
            0.2,
        )
        sid = store.create_session("chat", "how do I invert a dict?", "demi-tiny").id
        store.add_message(sid, "user", "how do I invert a dict?")
        store.add_message(
            sid, "assistant", "Use a comprehension: `{v: k for k, v in d.items()}`.", "demi-tiny", 9, 12, 0.3
        )
    return tmp_path


def app_for(tmp_path: Path, reply: str = ANSWER) -> DemiChat:
    return DemiChat(
        engine=ScriptedEngine(reply, name="demi-tiny"), data_dir=tmp_path / "data", root=tmp_path / "work", sidebar=True
    )


async def settle(pilot) -> None:
    app = pilot.app
    for _ in range(3):
        await app.workers.wait_for_complete()
        app.history.wait_idle()
        await pilot.pause()


def typed(text: str):
    async def run(pilot) -> None:
        await settle(pilot)
        pilot.app.prompt.load_text(text)
        await pilot.press("enter")
        await settle(pilot)
        pilot.app.prompt.blur()  # no blinking cursor in the picture
        await pilot.pause()

    return run


def screen_rows(svg: str) -> list[str]:
    """A snapshot as lines of text, each followed by its runs' colours: what a failure prints, so a CI
    log says what differed without the HTML report (which stays on the machine that ran it)."""
    styles = dict(re.findall(r"\.(terminal-[\w-]+) \{ ([^}]*) \}", svg))
    rows: dict[float, list[tuple[float, str, str]]] = {}
    for cls, x, y, text in re.findall(r'<text class="([^"]*)" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(y), []).append((float(x), styles.get(cls, cls).strip(), html.unescape(text)))
    lines = []
    for _, runs in sorted(rows.items()):
        merged: list[list[str]] = []  # [style, text], neighbours of one style joined
        for _, style, text in sorted(runs):
            if merged and merged[-1][0] == style:
                merged[-1][1] += text
            else:
                merged.append([style, text])
        lines.append(" ".join("".join(t for _, t in merged).split()))
        lines.append("    " + " | ".join(f"{' '.join(t.split())[:16]!r}: {style}" for style, t in merged if t.strip()))
    return lines


@pytest.fixture
def screen_matches(snap_compare, request):
    """`snap_compare` at this module's size; on a mismatch it prints the screen's difference as text."""

    def compare(app: DemiChat, run_before) -> bool:
        seen: dict[str, str] = {}

        async def run(pilot) -> None:
            await run_before(pilot)
            seen["svg"] = pilot.app.export_screenshot()

        ok = snap_compare(app, terminal_size=SIZE, run_before=run)
        stored = Path(__file__).parent / "__snapshots__" / Path(__file__).stem / f"{request.node.name}.svg"
        if not ok and "svg" in seen and stored.exists():
            diff = difflib.unified_diff(
                screen_rows(stored.read_text(encoding="utf-8")),
                screen_rows(seen["svg"]),
                "stored snapshot",
                "this run",
                lineterm="",
                n=1,
            )
            print("\n".join(diff))
        return ok

    return compare


def test_start_screen(screen_matches, tmp_path):
    async def run(pilot) -> None:
        await settle(pilot)
        pilot.app.prompt.blur()
        await pilot.pause()

    assert screen_matches(app_for(tmp_path), run)


def test_chat_answer_with_attachment_and_code(screen_matches, tmp_path):
    assert screen_matches(app_for(tmp_path), typed("what does @geometry.py:area return?"))


def test_refactor_diff_with_apply_and_reject(screen_matches, tmp_path):
    app = app_for(tmp_path, f"```python\n{REWRITE}```\n")
    assert screen_matches(app, typed("/refactor geometry.py:area add type hints"))


def test_search_results(screen_matches, tmp_path):
    async def run(pilot) -> None:
        await settle(pilot)
        await pilot.press("ctrl+f", *"comprehension", "enter")
        await settle(pilot)

    assert screen_matches(app_for(tmp_path), run)


def test_inline_errors(screen_matches, tmp_path):
    async def run(pilot) -> None:
        await settle(pilot)
        for text in ("look at @missing.py", "/frobnicate"):
            pilot.app.prompt.load_text(text)
            await pilot.press("enter")
            await settle(pilot)
        pilot.app.prompt.blur()
        await pilot.pause()

    assert screen_matches(app_for(tmp_path), run)
