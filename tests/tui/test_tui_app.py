"""demi-chat flows through `App.run_test()` and Pilot: send, stream, stop, resume, search, attach,
explain, refactor (apply, reject, undo), model switch, and bad input that must never crash or lose text.

Three engines, all real-shaped: the tiny random qwen2 in process (plumbing: its text is noise), a
scripted engine that implements the Engine protocol and can hold its stream at a given piece (so
"while streaming" is a state the test controls, not a race), and HttpEngine against a scripted
OpenAI-compatible server (a valid rewrite for refactor, as from `demi serve` with a capable model).
Tests wait on workers and on conditions, never on fixed sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import CODE, REWRITE, ScriptedServer
from hf_models import save_family
from tokenizers_fixture import make_bytelevel_tokenizer

from demi.assistant.engines import EngineInfo, HttpEngine, InProcessEngine
from demi.assistant.store import Store
from demi.model.engine import Completion, LocalModel
from demi.tui.app import DemiChat, build_parser
from demi.tui.widgets import AssistantMessage, DiffProposal, HelpNotice, Notice, SessionList, UserMessage

SIZE = (110, 36)


# -- engines -----------------------------------------------------------------------------------------


class ScriptedEngine:
    """The Engine protocol with a fixed reply, streamed in pieces; `hold_after=n` stops the stream after
    n pieces until `go` is set (or the cancel token fires), so a test can act while it streams."""

    def __init__(
        self, reply: str, piece: int = 6, hold_after: int | None = None, name: str = "scripted", context: int = 4096
    ):
        self.reply, self.piece, self.hold_after, self.name, self.context = reply, piece, hold_after, name, context
        self.go = threading.Event()
        self.prompts: list = []
        self.sent = 0

    def info(self) -> EngineInfo:
        return EngineInfo(self.name, "in-process", self.context, 1_000_000)

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4 if text else 0

    def stream(self, prompt, max_new_tokens=256, cancel=None, **_):
        pieces = [self.reply[i : i + self.piece] for i in range(0, len(self.reply), self.piece)][:max_new_tokens]
        reason, out = "stop", []
        for i, p in enumerate(pieces):
            if self.hold_after is not None and i == self.hold_after:
                while not self.go.wait(0.01):
                    if cancel is not None and cancel.cancelled:
                        break
            if cancel is not None and cancel.cancelled:
                reason = "cancelled"
                break
            out.append(p)
            self.sent += 1
            yield p
        return Completion("".join(out), list(range(len(out))), 40, reason, 0.5, 0.1)

    def complete(self, prompt, on_text=None, **kwargs):
        it = self.stream(prompt, **kwargs)
        while True:
            try:
                piece = next(it)
            except StopIteration as done:
                return done.value
            if on_text:
                on_text(piece)

    def chat(self, prompt, on_text=None, **kwargs):
        self.prompts.append(prompt)
        return self.complete(prompt.messages, on_text, **kwargs)

    def infill(self, ctx, on_text=None, **kwargs):
        return self.complete(ctx.prefix, on_text, **kwargs)

    def close(self) -> None:
        pass


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user dirs: HOME, XDG dirs, config and data all under tmp."""
    for key in list(os.environ):
        if key.startswith("DEMI_"):
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("DEMI_DATA_DIR", str(tmp_path / "demi-data"))
    monkeypatch.setenv("DEMI_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("DEMI_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DEMI_DB_TIMEOUT", "0.3")
    return tmp_path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen2-tui")
    save_family("qwen2", out, max_position_embeddings=1024)
    make_bytelevel_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tiny(model_dir) -> InProcessEngine:
    return InProcessEngine(LocalModel.load(str(model_dir), context=1024))


@pytest.fixture()
def src(tmp_path) -> Path:
    p = tmp_path / "work" / "geometry.py"
    p.parent.mkdir()
    p.write_text(CODE, encoding="utf-8")
    return p


@pytest.fixture()
def scripted_server():
    srv = ScriptedServer(f"Here it is:\n\n```python\n{REWRITE}```\n", model_id="scripted-http", piece=9)
    yield srv
    srv.close()


def make_app(tmp_path: Path, engine=None, **kwargs) -> DemiChat:
    kwargs.setdefault("root", tmp_path / "work")
    (tmp_path / "work").mkdir(exist_ok=True)
    return DemiChat(engine=engine, data_dir=tmp_path / "demi-data", **kwargs)


async def until(pilot, condition, timeout: float = 20.0) -> None:
    """Process messages until `condition()` holds (a condition, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await pilot.pause()


async def settle(app, pilot) -> None:
    """Every worker done, every queued history write tried, every resulting message handled."""
    for _ in range(3):
        await app.workers.wait_for_complete()
        app.history.wait_idle()
        await pilot.pause()


async def send(app, pilot, text: str) -> None:
    app.prompt.load_text(text)
    app.prompt.move_cursor(app.prompt.document.end)
    await pilot.press("enter")
    await settle(app, pilot)


def answers(app) -> list[AssistantMessage]:
    return list(app.query(AssistantMessage))


def notices(app, kind: str | None = None) -> list[str]:
    return [n.text for n in app.query(Notice) if kind is None or n.kind == kind]


def stored(tmp_path: Path):
    with Store(tmp_path / "demi-data" / "sessions.db") as store:
        return [(s, store.messages(s.id)) for s in store.sessions(50)]


# -- chat: send, stream, stop ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_send_streams_an_answer_from_the_in_process_engine(tmp_path, tiny):
    app = make_app(tmp_path, tiny)
    async with app.run_test(size=SIZE) as pilot:
        assert app.focused is app.prompt  # the contract: the message box has focus from the start
        await settle(app, pilot)
        await pilot.press(*"hello demi", "enter")
        await settle(app, pilot)
        [ans] = answers(app)
        assert app.prompt.text == "" and [u.text for u in app.query(UserMessage)] == ["hello demi"]
        name = Path(tiny.name).name  # a model directory is shown by its folder name
        assert ans.who == name and "tokens" in str(ans.query_one(".meta").render())
        line = app.status.line
        assert line.startswith(f"{name} · float32 · cpu · ") and "tok/s" in line and "ctx " in line
        assert app.last_job.first_paint_at is not None and app.last_job.first_paint_at >= app.last_job.submitted_at
    [(session, messages)] = stored(tmp_path)
    assert session.title == "hello demi" and [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content == ans.text and messages[1].completion_tokens > 0


def queued_strip(app) -> str:
    strip = app.query_one("#queued")
    return str(strip.render()) if strip.has_class("-shown") else ""


@pytest.mark.asyncio
async def test_enter_while_streaming_queues_the_message_and_sends_it_after(tmp_path):
    engine = ScriptedEngine("First part. Second part of a longer answer.", hold_after=2)
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"question", "enter")
        await until(pilot, lambda: app.job is not None and app.job.widget.text == "First part. ")
        await pilot.press(*"next one")  # typed while the answer streams: the box stays live
        assert app.prompt.text == "next one"
        await pilot.press("enter")  # queued: the box is free again, the strip above it says so
        await pilot.press(*"/help", "enter")  # needs no model: runs at once, not queued
        await pilot.press(*"third", "ctrl+j", *"two lines", "enter")
        assert app.prompt.text == "" and list(app.outbox.items) == ["next one", "third\ntwo lines"]
        strip = queued_strip(app)
        assert "sent when the answer ends" in strip and "1. next one" in strip and "2. third two lines" in strip
        assert [u.text for u in app.query(UserMessage)] == ["question"] and app.query(HelpNotice)
        engine.go.set()
        await until(pilot, lambda: len(engine.prompts) == 3 and app.job is None)
        await settle(app, pilot)
        assert [u.text for u in app.query(UserMessage)] == ["question", "next one", "third\ntwo lines"]
        assert [a.text for a in answers(app)] == [engine.reply] * 3 and not queued_strip(app)
        history = [(m["role"], m["content"]) for m in engine.prompts[2].messages[1:]]
        assert history[-3:] == [("user", "next one"), ("assistant", engine.reply), ("user", "third\ntwo lines")]
        await pilot.press("up")  # a queued message is remembered like a sent one
        assert app.prompt.text == "third\ntwo lines"


@pytest.mark.asyncio
async def test_escape_brings_queued_messages_back_and_a_bad_path_is_not_queued(tmp_path, src):
    engine = ScriptedEngine("abcdefghijklmnopqrstuvwxyz" * 4, piece=5, hold_after=3)
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"tell me", "enter")
        await until(pilot, lambda: engine.sent == 3)
        app.prompt.load_text("look at @missing.py")
        await pilot.press("end", "enter")  # checked when queued: refused at once, the text stays
        assert app.prompt.text == "look at @missing.py" and not app.outbox
        assert "nothing was queued" in notices(app, "error")[-1]
        app.prompt.load_text("later")
        await pilot.press("end", "enter")
        await pilot.press(*"/explain geometry.py:area", "enter")  # a command that needs the model waits too
        assert list(app.outbox.items) == ["later", "/explain geometry.py:area"]
        await pilot.press(*"draft")
        await pilot.press("escape")  # stop: the queued texts come back above the draft, nothing is sent
        await settle(app, pilot)
        assert app.prompt.text == "later\n\n/explain geometry.py:area\n\ndraft" and not queued_strip(app)
        assert "stopped: 2 queued messages are back in the box" in notices(app, "warning")[-1]
        assert [u.text for u in app.query(UserMessage)] == ["tell me"] and len(engine.prompts) == 1


@pytest.mark.asyncio
async def test_typing_after_a_click_is_not_lost_and_busy_refusals_say_what_to_do(tmp_path, src):
    engine = ScriptedEngine("Some **answer** text.\n\n- one\n- two\n", hold_after=2)
    app = make_app(tmp_path, engine, sidebar=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"question", "enter")
        await until(pilot, lambda: app.job is not None and engine.sent == 2)
        await pilot.click("#log", offset=(20, 2))  # the log takes the focus
        assert app.focused is app.query_one("#log")
        await pilot.press(*"typed on")  # ... but the characters go to the message box
        assert app.prompt.text == "typed on" and app.focused is app.prompt
        await pilot.press("ctrl+n")
        assert notices(app, "warning")[-1].startswith("Demi is still answering: Esc stops it, then ctrl+n starts")
        app.prompt.load_text("/explain geometry.py:nosuch")
        await pilot.press("end", "enter")  # checked when queued: a missing symbol is said now
        assert "nosuch" in notices(app, "error")[-1] and "nothing was queued" in notices(app, "error")[-1]
        assert app.prompt.text == "/explain geometry.py:nosuch" and not app.outbox
        app.prompt.load_text("/refactor geometry.py:area")
        await pilot.press("end", "enter")
        assert notices(app, "error")[-1].startswith("usage: /refactor") and not app.outbox
        engine.go.set()
        await settle(app, pilot)
        app.query_one(SessionList).focus()
        await pilot.press("r")  # a key the session list uses is not redirected
        await pilot.pause()
        assert type(app.screen).__name__ == "RenameScreen" and app.prompt.text == "/refactor geometry.py:area"


@pytest.mark.asyncio
async def test_a_failure_drawing_the_end_of_an_answer_does_not_leave_the_app_answering(tmp_path, monkeypatch):
    engine = ScriptedEngine("An answer.")
    app = make_app(tmp_path, engine)
    calls = []

    async def broken_finish(self, meta, replace=None):
        calls.append(meta)
        if len(calls) == 1:
            raise ValueError("boom")

    monkeypatch.setattr(AssistantMessage, "finish", broken_finish)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "first")
        assert app.job is None and app.status.fields["state"] == "ready"
        assert notices(app, "error")[-1] == "could not draw the end of the answer: boom"
        await send(app, pilot, "second")  # not refused as "still answering"
        assert [u.text for u in app.query(UserMessage)] == ["first", "second"] and len(calls) == 2
    [(_, messages)] = stored(tmp_path)
    assert [m.content for m in messages] == ["first", "An answer.", "second", "An answer."]


@pytest.mark.asyncio
async def test_queued_messages_wait_for_a_loading_model_and_return_when_it_fails(tmp_path):
    gate = threading.Event()

    def factory(model, quant):
        gate.wait(10)
        raise RuntimeError("no such model: nowhere")

    app = make_app(tmp_path, engine_factory=factory)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press(*"first", "enter")  # waits for the model
        await pilot.press(*"second", "enter")  # queued behind it
        assert list(app.outbox.items) == ["second"] and app.prompt.text == ""
        await pilot.press(*"typing")
        gate.set()
        await settle(app, pilot)
        assert app.prompt.text == "first\n\nsecond\n\ntyping"  # in the order typed, the draft last
        assert "your message is back in the box, with the ones queued after it" in notices(app, "error")[-1]
        assert not app.outbox and app.job is None


@pytest.mark.asyncio
async def test_escape_stops_the_answer_and_keeps_what_arrived(tmp_path):
    engine = ScriptedEngine("abcdefghijklmnopqrstuvwxyz" * 4, piece=5, hold_after=3)
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"tell me", "enter")
        await until(pilot, lambda: engine.sent == 3 and app.job is not None and len(app.job.widget.text) == 15)
        await pilot.press("escape")
        await settle(app, pilot)
        [ans] = answers(app)
        assert ans.text == "abcdefghijklmno" and str(ans.query_one(".meta").render()).startswith("stopped")
        assert app.job is None and app.turns[-1].content == "abcdefghijklmno"
    [(_, messages)] = stored(tmp_path)
    assert messages[1].content == "abcdefghijklmno" and messages[1].meta["finish_reason"] == "cancelled"


@pytest.mark.asyncio
async def test_multiline_input_and_recall(tmp_path):
    engine = ScriptedEngine("ok")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"line one", "ctrl+j", *"line two", "enter")
        await settle(app, pilot)
        assert app.query_one(UserMessage).text == "line one\nline two"
        assert engine.prompts[0].messages[-1]["content"] == "line one\nline two"
        await pilot.press("up")  # the last message comes back
        assert app.prompt.text == "line one\nline two"


# -- sessions -------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_restart_resumes_a_session_with_its_history(tmp_path):
    engine = ScriptedEngine("The answer is 42.")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "what is the answer?")
        sid = app.conv.session_id
    assert sid
    engine2 = ScriptedEngine("Because.")
    app2 = make_app(tmp_path, engine2, session=sid[:6])
    async with app2.run_test(size=SIZE) as pilot:
        await settle(app2, pilot)
        assert app2.conv.session_id == sid
        assert [u.text for u in app2.query(UserMessage)] == ["what is the answer?"]
        assert answers(app2)[0].text == "The answer is 42."
        assert app2.query_one(SessionList).option_count == 1  # a restart shows the sessions
        await send(app2, pilot, "why?")
        roles = [(m["role"], m["content"]) for m in engine2.prompts[0].messages[1:]]
        assert roles == [("user", "what is the answer?"), ("assistant", "The answer is 42."), ("user", "why?")]
    [(session, messages)] = stored(tmp_path)
    assert [m.content for m in messages] == ["what is the answer?", "The answer is 42.", "why?", "Because."]


@pytest.mark.asyncio
async def test_answers_from_history_are_frozen_when_idle_and_follow_the_width(tmp_path):
    from demi.tui.widgets import Piece

    text = "## Steps\n\n- one `a`\n- two\n\n```python\nx = 1\n```\n\nDone.\n"
    with Store(tmp_path / "demi-data" / "sessions.db") as store:
        sid = store.create_session("chat", "old", "demi-tiny").id
        for i in range(3):
            store.add_message(sid, "user", f"q{i}")
            store.add_message(sid, "assistant", text, "demi-tiny", 5, 9, 0.1)
    app = make_app(tmp_path, ScriptedEngine("new"), session=sid, sidebar=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        pieces = lambda: list(app.query(Piece))  # noqa: E731
        await until(pilot, lambda: len(pieces()) == 3 and all(p.frozen is not None for p in pieces()))
        frozen_lines = [strip.text for strip in app.screen._compositor.render_strips()]
        assert [a.text for a in answers(app)] == [text] * 3
        await pilot.press("ctrl+s")  # the sidebar takes width: the answers are Markdown again, then frozen
        await until(
            pilot, lambda: all(p.frozen is not None and p.frozen.width == p.content_size.width for p in pieces())
        )
        await pilot.press("ctrl+s")
        await until(
            pilot, lambda: all(p.frozen is not None and p.frozen.width == p.content_size.width for p in pieces())
        )
        await pilot.pause()
        assert [strip.text for strip in app.screen._compositor.render_strips()] == frozen_lines


@pytest.mark.asyncio
async def test_sidebar_shows_cli_sessions_opens_renames_and_deletes(tmp_path):
    data = tmp_path / "demi-data"
    with Store(data / "sessions.db") as store:  # what `demi explain` records
        cli_sid = store.record(
            "explain",
            "explain geometry.py area",
            "demi-tiny",
            "explain geometry.py area",
            "## `geometry.py` › `area`\n\nIt computes an area.",
            10,
            5,
            0.2,
            {"path": "geometry.py", "symbol": "area"},
        )
    app = make_app(tmp_path, ScriptedEngine("ok"), sidebar=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        box = app.query_one(SessionList)
        assert box.option_count == 1 and "explain geometry.py area" in str(box.get_option_at_index(0).prompt)
        box.focus()
        box.highlighted = 0
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.conv.session_id == cli_sid and "It computes an area." in answers(app)[0].text
        assert app.focused is app.prompt  # opened: ready to continue the conversation
        await pilot.press("ctrl+s", "ctrl+s")  # hide and show again: the list has focus
        assert app.focused is box and box.highlighted == 0
        await pilot.press("r")  # rename in a modal
        await pilot.pause()
        await pilot.press("ctrl+u", *"circle area", "enter")
        await settle(app, pilot)
        assert "circle area" in str(box.get_option_at_index(0).prompt)
        await pilot.press("d", "y")  # delete, confirmed
        await settle(app, pilot)
        assert box.option_count == 0 and app.conv.session_id is None
    assert stored(tmp_path) == []


@pytest.mark.asyncio
async def test_a_cli_refactor_session_resumes_with_its_diff(tmp_path):
    diff = "--- a/geometry.py\n+++ b/geometry.py\n@@ -4 +4 @@\n-def area(r):\n+def area(r: float) -> float:\n"
    with Store(tmp_path / "demi-data" / "sessions.db") as store:  # what `demi refactor --apply` records
        sid = store.record(
            "refactor",
            "refactor geometry.py area: add hints",
            "m",
            "add hints",
            diff,
            10,
            5,
            0.2,
            {"path": "geometry.py", "target": "area", "applied": True},
        )
    engine = ScriptedEngine("Done.")
    app = make_app(tmp_path, engine, session=sid)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        [card] = app.query(DiffProposal)
        assert card.diff == diff and card.resolved == "applied (from the command line)"
        assert not card.query_one(".buttons").display  # history: nothing to apply again
        await send(app, pilot, "why the hints?")
        assert [m["role"] for m in engine.prompts[0].messages[1:]] == ["user", "assistant", "user"]


@pytest.mark.asyncio
async def test_rename_command_and_search_opens_the_hit(tmp_path):
    engine = ScriptedEngine("Use a dict comprehension.")
    app = make_app(tmp_path, engine, sidebar=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "how do I invert a mapping?")
        await send(app, pilot, "/rename inverting dicts")
        await send(app, pilot, "/new")
        engine.reply = "Something else."
        await send(app, pilot, "unrelated question")
        assert len(stored(tmp_path)) == 2
        await pilot.press("ctrl+f")
        assert app.focused.id == "search"
        await pilot.press(*"comprehension", "enter")
        await settle(app, pilot)
        box = app.query_one(SessionList)
        assert box.option_count == 1 and "inverting dicts" in str(box.get_option_at_index(0).prompt)
        box.highlighted = 0
        await pilot.press("enter")
        await settle(app, pilot)
        hits = list(app.query(".hit"))
        assert app.conv.title == "inverting dicts" and len(hits) == 1
        assert isinstance(hits[0], AssistantMessage) and "comprehension" in hits[0].text
        await pilot.press("escape")
        assert app.focused is app.prompt


# -- code context -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_attach_a_symbol_and_a_file(tmp_path, src):
    engine = ScriptedEngine("It returns the area.")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "what does @geometry.py:area return?")
        sent = engine.prompts[-1].messages[-1]["content"]
        assert "def area(r):" in sent and "def main" not in sent and "what does @geometry.py:area return?" in sent
        assert "attached: geometry.py:area (5 lines)" in str(app.query_one(UserMessage).render())
        await send(app, pilot, "and @geometry.py?")
        assert "def main():" in engine.prompts[-1].messages[-1]["content"]
        assert "def area(r):" in engine.prompts[-1].messages[1]["content"]  # the earlier turn kept its code
    [(_, messages)] = stored(tmp_path)
    assert messages[0].meta["attachments"][0]["symbol"] == "area" and "def area" in messages[0].meta["context"]


@pytest.mark.asyncio
async def test_bad_attachments_and_commands_are_inline_messages_and_keep_the_draft(tmp_path, src):
    (src.parent / "blob.bin").write_bytes(b"\x00\x01binary")
    (src.parent / "huge.py").write_bytes(b"# filler\n" * 300_000)
    engine = ScriptedEngine("never")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        for text, needle in [
            ("look at @missing.py", "@missing.py: no such file"),
            ("and @blob.bin", "binary"),
            ("and @huge.py", "over the 2 MB limit"),
            ("see @geometry.py:nope", "no symbol 'nope'; symbols: area, main"),
            ("/frobnicate now", "unknown command /frobnicate"),
            ("/explain nothing.py", "no such file"),
            ("/refactor geometry.py:area", "usage: /refactor"),
        ]:
            app.prompt.load_text(text)
            await pilot.press("enter")
            await settle(app, pilot)
            assert needle in notices(app, "error")[-1], notices(app)
            assert app.prompt.text == text  # nothing lost
        assert engine.prompts == [] and not answers(app)
        await send(app, pilot, "email me at someone@example.org or ping @alice")  # not paths: sent as is
        assert len(engine.prompts) == 1


@pytest.mark.asyncio
async def test_tab_completes_commands_paths_and_symbols(tmp_path, src):
    (src.parent / "pkg").mkdir()
    (src.parent / "pkg" / "mod.py").write_text("def f():\n    pass\n", encoding="utf-8")
    app = make_app(tmp_path, ScriptedEngine("ok"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press(*"/ex", "tab")
        assert app.prompt.text == "/explain "
        await pilot.press(*"geo", "tab")
        assert app.prompt.text == "/explain geometry.py"
        app.prompt.load_text("")
        await pilot.press(*"why @geometry.py:a", "tab")
        assert app.prompt.text == "why @geometry.py:area"
        await pilot.press(" ", "@", "p", "tab", "tab")
        assert app.prompt.text == "why @geometry.py:area @pkg/mod.py"
        app.prompt.load_text("")
        await pilot.press("@", "tab")  # several: the hints line lists them, Tab cycles
        assert "geometry.py" in str(app.query_one("#hints").render()) and app.query_one("#hints").has_class("-shown")
        assert app.prompt.text in ("@geometry.py", "@pkg/")


# -- explain, refactor, undo ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_explain_streams_facts_and_labelled_model_text(tmp_path, tiny, src):
    app = make_app(tmp_path, tiny)
    app.config._values["explain.max_tokens"] = 8
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "/explain geometry.py:area")
        [ans] = answers(app)
        assert ans.text.startswith("## `geometry.py` › `area`")
        assert ans.text.index("### Static analysis") < ans.text.index("### Explanation (written by the model")
        assert "- **Raises:** `ValueError`" in ans.text and app.status.fields["speed"].endswith("tok/s")
    [(session, messages)] = stored(tmp_path)
    assert session.title == "explain geometry.py:area"
    assert messages[0].meta["command"] == "explain" and "def area" in messages[0].meta["context"]


@pytest.mark.asyncio
async def test_refactor_apply_then_undo_through_a_server(tmp_path, src, scripted_server):
    app = make_app(tmp_path, HttpEngine(scripted_server.url))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.status.fields["model"] == "scripted-http" and app.status.fields["quant"] == "server"
        await send(app, pilot, "/refactor geometry.py:area add type hints; use math.pi")
        [card] = app.query(DiffProposal)
        assert "-def area(r):\n+def area(r: float) -> float:" in card.diff
        assert src.read_text(encoding="utf-8") == CODE  # nothing written before Apply
        assert "add type hints; use math.pi" in scripted_server.requests[-1]["messages"][-1]["content"]
        await pilot.click("#apply")
        await settle(app, pilot)
        assert "def area(r: float) -> float:" in src.read_text(encoding="utf-8")
        assert "applied to" in card.resolved and app.applied == [src]
        await send(app, pilot, "/undo")
        assert src.read_text(encoding="utf-8") == CODE, notices(app)
        assert "restored" in notices(app)[-1]
        await send(app, pilot, "/undo geometry.py")
        assert "no backup to restore" in notices(app, "error")[-1]
    [(_, messages)] = stored(tmp_path)
    assert [m.role for m in messages] == ["user", "assistant", "note", "note"]
    assert (
        messages[1].content.startswith("--- a/geometry.py\n+++ b/geometry.py")
        and messages[1].meta["command"] == "refactor"
    )


@pytest.mark.asyncio
async def test_refactor_reject_and_a_rewrite_that_does_not_parse(tmp_path, tiny, src):
    engine = ScriptedEngine(f"```python\n{REWRITE}```\n")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "/refactor geometry.py:area add type hints")
        await pilot.click("#reject")
        await settle(app, pilot)
        [card] = app.query(DiffProposal)
        assert card.resolved.startswith("rejected") and src.read_text(encoding="utf-8") == CODE
        await send(app, pilot, "/apply")
        assert "no proposed change is waiting" in notices(app, "error")[-1]
        engine.reply = "```python\ndef area(r:\n    return (\n```\n"
        await send(app, pilot, "/refactor geometry.py:area break it")
        assert "does not parse" in notices(app, "error")[-1] and len(app.query(DiffProposal)) == 1
        assert src.read_text(encoding="utf-8") == CODE


@pytest.mark.asyncio
async def test_refactor_apply_refuses_a_file_changed_since(tmp_path, src):
    app = make_app(tmp_path, ScriptedEngine(f"```python\n{REWRITE}```\n"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "/refactor geometry.py:area add type hints")
        src.write_text(CODE + "\n# edited meanwhile\n", encoding="utf-8")
        await send(app, pilot, "/apply")
        assert "changed since Demi read it" in notices(app, "error")[-1]
        assert src.read_text(encoding="utf-8").endswith("# edited meanwhile\n")


# -- model switching --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_model_switch_with_quantization(tmp_path, model_dir):
    from demi.assistant.config import load_config

    flags = {"model": str(model_dir), "context": 1024, "quant": "none"}
    app = DemiChat(load_config(flags), flags=flags, data_dir=tmp_path / "demi-data", root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.status.fields["quant"] == "float32" and app.details.context == 1024
        first = app.engine
        await send(app, pilot, "/model int8")
        assert app.engine is not first and app.status.fields["quant"] == "int8"
        assert app.engine.local.quantization == "int8" and "now using" in notices(app)[-1]
        await send(app, pilot, "hi")
        assert "tokens" in str(answers(app)[-1].query_one(".meta").render()), notices(app)
        await send(app, pilot, "/model /no/such/model")
        assert "cannot switch" in notices(app, "error")[-1] and app.status.fields["quant"] == "int8"
        await send(app, pilot, "/model")
        assert any("using" in n and "int8" in n for n in notices(app))


@pytest.mark.asyncio
async def test_a_model_that_cannot_load_is_an_inline_message(tmp_path):
    from demi.assistant.config import load_config

    flags = {"model": str(tmp_path / "nowhere")}
    app = DemiChat(load_config(flags), flags=flags, data_dir=tmp_path / "demi-data", root=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "cannot load the model" in notices(app, "error")[-1]
        await send(app, pilot, "hello?")
        assert "no model" in notices(app, "error")[-1] and app.prompt.text == "hello?"


# -- history that cannot be written ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_corrupt_database_is_moved_aside_and_the_chat_keeps_saving(tmp_path):
    data = tmp_path / "demi-data"
    data.mkdir()
    (data / "sessions.db").write_bytes(b"garbage " * 1000)
    app = make_app(tmp_path, ScriptedEngine("still here"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "are you there?")
        assert answers(app)[0].text == "still here"
        await settle(app, pilot)
        assert any("was corrupt" in n and "moved it to" in n for n in notices(app, "warning"))
    aside = list(data.glob("sessions.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage " * 1000  # kept for the user
    [(_, messages)] = stored(tmp_path)
    assert [(m.role, m.content) for m in messages] == [("user", "are you there?"), ("assistant", "still here")]


@pytest.mark.asyncio
async def test_a_locked_database_loses_nothing(tmp_path):
    import sqlite3

    data = tmp_path / "demi-data"
    with Store(data / "sessions.db"):
        pass
    app = make_app(tmp_path, ScriptedEngine("answer"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        blocker = sqlite3.connect(data / "sessions.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            await send(app, pilot, "first")
            assert app.history.unsaved == 2 and "not saved to history yet" in notices(app, "warning")[-1]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await send(app, pilot, "second")
        assert app.history.unsaved == 0 and "saving again" in " ".join(notices(app))
    [(_, messages)] = stored(tmp_path)
    assert [m.content for m in messages] == ["first", "answer", "second", "answer"]


# -- the rest: help, new, copy, quit, entry points ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_help_new_copy_and_quit(tmp_path):
    reply = "Two ways:\n\n```python\nx = 1\n```\n\nor\n\n```python\nx = 2\ny = 3\n```\n"
    app = make_app(tmp_path, ScriptedEngine(reply))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert app.query(HelpNotice)
        await send(app, pilot, "show me")
        await pilot.press("ctrl+o")
        assert app.clipboard == "x = 2\ny = 3\n"
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert not answers(app) and app.conv.session_id is None and app.turns == []
        assert app.query_one("#welcome")
        await pilot.press("ctrl+q")
    assert app.return_code == 0


class SamplingEngine(ScriptedEngine):
    """Records the sampling each chat answer was asked with."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.samplings: list = []

    def chat(self, prompt, on_text=None, **kwargs):
        self.samplings.append(kwargs.get("sampling"))
        return super().chat(prompt, on_text, **kwargs)


@pytest.mark.asyncio
async def test_chat_temperature_from_config_env_and_flag(tmp_path, monkeypatch, capsys):
    from demi.assistant.config import load_config
    from demi.tui.app import flags_from, main

    (tmp_path / "cfg.toml").write_text("[chat]\ntemperature = 0.2\n", encoding="utf-8")
    monkeypatch.setenv("DEMI_CONFIG", str(tmp_path / "cfg.toml"))
    assert load_config()["chat.temperature"] == 0.2
    monkeypatch.setenv("DEMI_CHAT_TEMPERATURE", "0.5")
    assert load_config().sources["chat.temperature"] == "env DEMI_CHAT_TEMPERATURE"
    flags = flags_from(build_parser().parse_args(["--temperature", "0.7"]))
    config = load_config(flags)
    assert (config["chat.temperature"], config.sources["chat.temperature"]) == (0.7, "flag --temperature")

    engine = SamplingEngine("warm words")
    app = make_app(tmp_path, engine, config=config, flags=flags)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, "hello")
        assert answers(app)[0].text == "warm words"
        [sampling] = engine.samplings
        assert (sampling.temperature, sampling.top_p) == (0.7, 0.95)  # as `demi explain -t` samples
        app.config._values["chat.temperature"] = 0.0  # 0 is greedy: the engine's default sampling
        await send(app, pilot, "again")
        assert engine.samplings[-1] is None

    monkeypatch.delenv("DEMI_CHAT_TEMPERATURE")
    assert main(["--temperature", "-1"]) == 2  # refused before the screen starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chat.temperature must be 0 (greedy) or more" in err


def test_entry_points_parse_and_fail_cleanly(tmp_path):
    args = build_parser().parse_args(["--session", "abc", "--quant", "int8", "--server", "http://x:1"])
    assert (args.session, args.quant, args.server) == ("abc", "int8", "http://x:1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMI_")}
    bad = tmp_path / "bad.toml"
    bad.write_text("model = [", encoding="utf-8")
    env.update(DEMI_CONFIG=str(bad), HOME=str(tmp_path))
    for argv in (["-m", "demi.tui.app"], ["-m", "demi", "chat"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not valid TOML" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "demi", "chat", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0 and "--session" in proc.stdout


# -- the chat task underneath (demi.assistant.chat) ---------------------------------------------------------


def test_mentions_targets_and_prompt_budget(src):
    from demi.assistant.chat import Turn, build_prompt, find_mentions, load_mentions, parse_target

    root = src.parent
    found = find_mentions("see @geometry.py:area, @geometry.py:4-8 and mail a@b.org or @bob (\\@x.py)", root)
    assert [(m.raw, m.target.symbol, m.target.lines) for m in found] == [
        ("@geometry.py:area", "area", None),
        ("@geometry.py:4-8", None, (4, 8)),
    ]
    assert parse_target("ns::f.cpp", root).path == "ns::f.cpp" and parse_target("a.cc:ns::f", root).symbol == "ns::f"
    [att] = load_mentions("@geometry.py:area", root)
    assert att.text.startswith("def area(r):") and att.lines == (4, 8)

    def count(text: str) -> int:
        return len(text) // 4 + 1

    history = [
        Turn("user", f"question {i} " + "x" * 200) if i % 2 == 0 else Turn("assistant", f"answer {i} " + "y" * 200)
        for i in range(10)
    ]
    built = build_prompt(history, "and now?", [att], count, 400)
    roles = [m["role"] for m in built.prompt.messages]
    assert roles[0] == "system" and roles[1] == "user" and roles[-1] == "user"  # starts on a question
    assert 0 < built.kept < 10 and built.dropped == 10 - built.kept and built.tokens <= 400
    assert "def area(r):" in built.prompt.messages[-1]["content"] and "question 9" not in str(built.prompt.messages)
    assert built.prompt.messages[-2]["content"].startswith("answer 9")  # the newest turns are the ones kept
    tight = build_prompt([], "q", [att], count, 125)  # the file is cut to fit, and says so
    assert att.cut and "cut to fit" in tight.prompt.messages[-1]["content"]
