"""demi-lsp end to end through a real LSP client (pytest-lsp), with a scripted engine.

The server is the real one (tests/lsp_support.py starts it with a scripted engine in place of
the model), so what the "model" writes and how long each token takes are known exactly. The
same model-less server also runs the golden post-processing fixtures (test_lsp_golden.py).
Model-backed runs (in-process and through `demi serve`) are in test_lsp_model.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import (
    capabilities,
    inline_params,
    open_doc,
    read_log,
    scripted_command,
    server_env,
    start_client,
    stats,
    stop_client,
    type_text,
)
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLOW = "def slow_path(items):\n    "  # 60 ms a token: long enough to cancel mid-way
TYPE_THROUGH = "def greet(name):\n    "  # a suggestion the tests type into
AUTO_PAIR = "def show(value):\n    "
CODE = '''import os


def add(a, b):
    """Add two numbers."""
    return a + b


class Box:
    def __init__(self, size):
        self.size = size

    def grow(self, by):
        self.size += by
        return self.size
'''
RULES = [
    {"when": SLOW, "raw": "result = [item for item in items if item]\n", "delay_ms": 60},
    {"when": TYPE_THROUGH, "raw": "return f'hello {name}'\n"},
    {"when": AUTO_PAIR, "raw": "print(value)\n"},
    {"when": "def shout(name):\n    return", "raw": " name.upper()\n"},
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-protocol")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir):
    script = workdir / "script.json"
    script.write_text(json.dumps(RULES), encoding="utf-8")
    env = server_env(workdir, DEMI_TEST_SCRIPT=str(script), DEMI_TEST_LOG=str(workdir / "runs.jsonl"))
    c = await start_client(scripted_command(), env, workdir, init_options={"maxTokens": 48, "debounceMaxMs": 120})
    yield c
    await stop_client(c)


def uri_of(workdir: Path, name: str) -> str:
    return (workdir / name).as_uri()


async def wait_ready(client) -> None:
    for _ in range(200):
        if (await stats(client))["status"]["state"] == "ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the engine never became ready")


# -- initialize, basic answers ---------------------------------------------------------------------------


async def test_initialize_result(workdir):
    env = server_env(workdir)
    from pytest_lsp.client import make_test_lsp_client

    c = make_test_lsp_client()
    await c.start_io(*scripted_command(), env=env)
    try:
        result = await c.initialize_session(t.InitializeParams(capabilities=capabilities()))
        caps = result.capabilities
        assert result.server_info.name == "demi-lsp"
        assert caps.inline_completion_provider is not None
        assert caps.completion_provider is not None
        assert caps.code_action_provider.resolve_provider is True
        assert set(caps.execute_command_provider.commands) == {"demi.explain", "demi.refactor", "demi.fix"}
        sync = caps.text_document_sync
        assert getattr(sync, "change", sync) == t.TextDocumentSyncKind.Incremental
    finally:
        await stop_client(c)


async def test_inline_completion_at_the_cursor(client, workdir):
    uri = uri_of(workdir, "basic.py")
    open_doc(client, uri, "def add(a, b):\n    \n")
    result = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert [i.insert_text for i in result.items] == ["value = 42"]
    assert result.items[0].range == t.Range(t.Position(1, 4), t.Position(1, 4))


async def test_completion_fallback_is_one_item_with_a_text_edit(client, workdir):
    uri = uri_of(workdir, "fallback.py")
    open_doc(client, uri, "def add(a, b):\n    val\n")
    result = await client.text_document_completion_async(
        t.CompletionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(1, 7),
            context=t.CompletionContext(trigger_kind=t.CompletionTriggerKind.Invoked),
        )
    )
    assert len(result.items) == 1
    item = result.items[0]
    # the word before the cursor is part of the edit, so a client filtering on "val" keeps the item
    assert item.text_edit.range == t.Range(t.Position(1, 4), t.Position(1, 7))
    assert item.text_edit.new_text.startswith("val")
    assert item.filter_text == item.text_edit.new_text
    assert result.is_incomplete is True


async def test_unicode_positions_are_utf16(client, workdir):
    uri = uri_of(workdir, "emoji.py")
    open_doc(client, uri, "s = '😀😀'\n" + TYPE_THROUGH)
    # line 0 is 10 UTF-16 units long (each emoji is two); the position after it is valid
    result = await client.text_document_inline_completion_async(inline_params(uri, 0, 10))
    assert isinstance(result.items, (list, tuple))
    with pytest.raises(JsonRpcException) as err:
        await client.text_document_inline_completion_async(inline_params(uri, 0, 11))
    assert err.value.code == -32602


# -- bad input gets an error answer, and the server goes on ---------------------------------------------


async def test_unknown_document_is_an_error(client, workdir):
    with pytest.raises(JsonRpcException) as err:
        await client.text_document_inline_completion_async(inline_params(uri_of(workdir, "never-opened.py"), 0, 0))
    assert err.value.code == -32602 and "unknown document" in err.value.message
    with pytest.raises(JsonRpcException):
        await client.text_document_code_action_async(
            t.CodeActionParams(
                text_document=t.TextDocumentIdentifier(uri=uri_of(workdir, "never-opened.py")),
                range=t.Range(t.Position(0, 0), t.Position(0, 0)),
                context=t.CodeActionContext(diagnostics=[]),
            )
        )


@pytest.mark.parametrize("line,character", [(5, 0), (99, 0), (0, 40), (1, 6)])
async def test_out_of_range_positions_are_errors(client, workdir, line, character):
    uri = uri_of(workdir, "short.py")
    open_doc(client, uri, "x = 1\ny = 2\n")  # lines 0-2 (2 is the empty last line), 5 characters each
    with pytest.raises(JsonRpcException) as err:
        await client.text_document_inline_completion_async(inline_params(uri, line, character))
    assert err.value.code == -32602
    ok = await client.text_document_inline_completion_async(inline_params(uri, 2, 0))
    assert isinstance(ok.items, (list, tuple))


async def test_unknown_method_is_an_error(client):
    with pytest.raises(JsonRpcException) as err:
        await client.protocol.send_request_async("demi/no-such-method", {})
    assert err.value.code == -32601


async def test_bad_command_arguments_are_errors(client, workdir):
    for command, args in (
        ("demi.explain", []),
        ("demi.explain", [42]),
        ("demi.nope", ["x"]),
        ("demi.explain", [uri_of(workdir, "missing-file.py")]),
        ("demi.explain", [uri_of(workdir, "basic.py"), {"start": 1}]),
    ):
        with pytest.raises(JsonRpcException) as err:
            await client.workspace_execute_command_async(t.ExecuteCommandParams(command=command, arguments=args))
        assert err.value.code == -32602, (command, args, err.value)


# -- cancellation ---------------------------------------------------------------------------------------


async def test_cancel_request_stops_the_engine(client, workdir):
    uri = uri_of(workdir, "cancel.py")
    open_doc(client, uri, SLOW + "\n")
    await wait_ready(client)
    log = workdir / "runs.jsonl"
    before = len(read_log(log))
    fut = client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4), msg_id="cancel-me")
    await asyncio.sleep(0.3)  # a few tokens in (60 ms each)
    sent = time.monotonic()
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wrap_future(fut)
    assert err.value.code == -32800  # RequestCancelled
    assert time.monotonic() - sent < 0.5
    for _ in range(40):  # the engine notices at its next token
        runs = read_log(log)[before:]
        if runs:
            break
        await asyncio.sleep(0.05)
    assert runs and runs[-1]["reason"] == "cancelled" and runs[-1]["tokens"] < runs[-1]["of"]


async def test_a_new_request_cancels_the_previous_one(client, workdir):
    uri = uri_of(workdir, "supersede.py")
    open_doc(client, uri, SLOW + "\n" + TYPE_THROUGH + "\n")
    first = client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4))
    await asyncio.sleep(0.1)
    second = await client.text_document_inline_completion_async(inline_params(uri, 3, 4))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wrap_future(first)
    assert err.value.code == -32800
    assert second.items[0].insert_text == "return f'hello {name}'"


async def test_cancellation_storm_every_request_is_answered(client, workdir):
    uri = uri_of(workdir, "storm.py")
    text = TYPE_THROUGH + "\n"
    open_doc(client, uri, text)
    s0 = await stats(client)
    futures, version = [], 1
    for i in range(40):
        version += 1
        type_text(client, uri, version, 0, 0, "#")  # an edit before each request (the line moves right)
        futures.append(
            client.protocol.send_request(
                t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4, invoked=i % 3 == 0), msg_id=f"storm-{i}"
            )
        )
        if i % 5 == 0:
            client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=f"storm-{i}"))
        await asyncio.sleep(0.005)
    outcomes = []
    for fut in futures:
        try:
            outcomes.append(await asyncio.wait_for(asyncio.wrap_future(fut), 10))
        except JsonRpcException as exc:
            assert exc.code == -32800, exc
            outcomes.append("cancelled")
    assert len(outcomes) == 40
    assert outcomes[-1] != "cancelled" and outcomes[-1].items[0].insert_text == "return f'hello {name}'"
    assert outcomes.count("cancelled") >= 30
    s1 = await stats(client)
    invoked = len([i for i in range(40) if i % 3 == 0])  # invoked requests start at once (then are superseded)
    assert s1["runsStarted"] - s0["runsStarted"] <= invoked + 2  # the 26 automatic ones were debounced away


async def test_edit_racing_a_completion_is_not_shown_and_typing_through_uses_the_cache(client, workdir):
    uri = uri_of(workdir, "race.py")
    open_doc(client, uri, SLOW + "\n")
    fut = client.protocol.send_request(t.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, 1, 4))
    await asyncio.sleep(0.1)
    type_text(client, uri, 2, 1, 4, "res")  # the user types on while the model works, no new request
    result = await asyncio.wrap_future(fut)
    assert result.items == [] or list(result.items) == []  # computed for version 1: not shown at version 2
    s0 = await stats(client)
    typed = await client.text_document_inline_completion_async(inline_params(uri, 1, 7, invoked=False))
    assert typed.items[0].insert_text == "ult = [item for item in items if item]"
    s1 = await stats(client)
    assert s1["runsStarted"] == s0["runsStarted"] and s1["cacheHits"] == s0["cacheHits"] + 1


# -- the cache and the debounce ---------------------------------------------------------------------------


async def test_typing_through_a_suggestion_needs_no_model_run(client, workdir):
    uri = uri_of(workdir, "through.py")
    open_doc(client, uri, TYPE_THROUGH + "\n")
    first = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert first.items[0].insert_text == "return f'hello {name}'"
    s0 = await stats(client)
    version, col = 1, 4
    for ch in "return f'":
        version += 1
        type_text(client, uri, version, 1, col, ch)
        col += 1
        res = await client.text_document_inline_completion_async(inline_params(uri, 1, col, invoked=False))
        assert res.items[0].insert_text == "return f'hello {name}'"[col - 4 :]
    s1 = await stats(client)
    assert s1["runsStarted"] == s0["runsStarted"]
    assert s1["cacheHits"] - s0["cacheHits"] == len("return f'")


async def test_auto_closed_bracket_is_replaced_not_doubled(client, workdir):
    uri = uri_of(workdir, "pairs.py")
    open_doc(client, uri, AUTO_PAIR + "\n")
    first = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert first.items[0].insert_text == "print(value)"
    # the editor inserts "print(" and auto-closes it: "print(|)"
    type_text(client, uri, 2, 1, 4, "print()")
    res = await client.text_document_inline_completion_async(inline_params(uri, 1, 10, invoked=False))
    item = res.items[0]
    assert item.insert_text == "value)"
    assert item.range == t.Range(t.Position(1, 10), t.Position(1, 11))  # replaces the ")" after the cursor


async def test_debounce_applies_to_automatic_triggers_only(client, workdir):
    uri = uri_of(workdir, "debounce.py")
    open_doc(client, uri, "def a():\n    \n\n\ndef b():\n    \n")
    await wait_ready(client)
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": {"debounceMs": 400}}))
    await asyncio.sleep(0.05)
    try:
        t0 = time.monotonic()
        await client.text_document_inline_completion_async(inline_params(uri, 1, 4, invoked=False))
        automatic = time.monotonic() - t0
        t0 = time.monotonic()
        await client.text_document_inline_completion_async(inline_params(uri, 5, 4, invoked=True))
        invoked = time.monotonic() - t0
        assert automatic >= 0.4 and invoked < 0.3, (automatic, invoked)
    finally:
        client.workspace_did_change_configuration(
            t.DidChangeConfigurationParams(settings={"demi": {"debounceMs": None}})
        )
        await asyncio.sleep(0.05)
    assert (await stats(client))["settings"]["debounce_ms"] is None


# -- settings and status ------------------------------------------------------------------------------------


async def test_initialization_options_apply(client):
    s = await stats(client)
    assert s["settings"]["max_tokens"] == 48 and s["settings"]["debounce_max_ms"] == 120


async def test_language_can_be_disabled_and_enabled(client, workdir):
    uri = uri_of(workdir, "toggle.py")
    open_doc(client, uri, "def f():\n    \n")
    client.workspace_did_change_configuration(
        t.DidChangeConfigurationParams(settings={"demi": {"enable": {"python": False}}})
    )
    await asyncio.sleep(0.05)
    s0 = await stats(client)
    off = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert list(off.items) == []
    assert (await stats(client))["runsStarted"] == s0["runsStarted"]
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": {"enable": {}}}))
    await asyncio.sleep(0.05)
    on = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert on.items[0].insert_text == "value = 42"
    # markdown is off by default, like other prose
    md = uri_of(workdir, "notes.md")
    open_doc(client, md, "# Notes\n\n", language="markdown")
    assert list((await client.text_document_inline_completion_async(inline_params(md, 2, 0))).items) == []


async def test_bad_setting_values_are_reported_and_ignored(client):
    client.workspace_did_change_configuration(
        t.DidChangeConfigurationParams(settings={"demi": {"maxTokens": "lots", "noSuchThing": 1}})
    )
    await asyncio.sleep(0.1)
    s = await stats(client)
    assert s["settings"]["max_tokens"] == 48
    logs = " ".join(m.message for m in client.log_messages)
    assert "maxTokens" in logs and "noSuchThing" in logs


async def test_pull_configuration_when_the_client_sends_no_settings(client):
    client.set_configuration({"maxTokens": 40}, section="demi")
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings=None))
    for _ in range(40):
        if (await stats(client))["settings"]["max_tokens"] == 40:
            break
        await asyncio.sleep(0.05)
    assert (await stats(client))["settings"]["max_tokens"] == 40
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": {"maxTokens": 48}}))


async def test_status_notifications(client, workdir):
    await wait_ready(client)
    uri = uri_of(workdir, "status.py")
    open_doc(client, uri, "def g():\n    \n")
    n = len(client.statuses)
    await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    for _ in range(40):
        if len(client.statuses) > n:
            break
        await asyncio.sleep(0.02)
    last = client.statuses[-1]
    assert last.state == "ready" and last.model == "scripted" and last.engine == "in-process"
    assert last.latencyMs is not None and last.latencyMs >= 0
    assert any(s.state == "loading" for s in client.statuses)


async def test_selected_completion_item_is_extended(client, workdir):
    uri = uri_of(workdir, "selected.py")
    open_doc(client, uri, "def shout(name):\n    re\n")
    params = inline_params(uri, 1, 6, invoked=False)
    params.context.selected_completion_info = t.SelectedCompletionInfo(
        range=t.Range(t.Position(1, 4), t.Position(1, 6)), text="return"
    )  # the popup has "return" selected
    result = await client.text_document_inline_completion_async(params)
    item = result.items[0]
    assert item.insert_text == "return name.upper()"
    assert item.range == t.Range(t.Position(1, 4), t.Position(1, 6))


# -- code actions, explain, refactor -------------------------------------------------------------------------


async def test_code_actions_resolve_lazily(client, workdir):
    uri = uri_of(workdir, "code.py")
    open_doc(client, uri, CODE)
    actions = await client.text_document_code_action_async(
        t.CodeActionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            range=t.Range(t.Position(13, 10), t.Position(13, 10)),
            context=t.CodeActionContext(diagnostics=[]),
        )
    )
    titles = [a.title for a in actions]
    assert titles == ["Demi: Explain", "Demi: Refactor..."]
    assert all(a.command is None and a.edit is None and a.data for a in actions)
    explain = await client.code_action_resolve_async(actions[0])
    assert explain.title == "Demi: Explain `Box.grow`" and explain.command.command == "demi.explain"
    refactor = await client.code_action_resolve_async(actions[1])
    assert refactor.command.command == "demi.refactor" and refactor.command.arguments[0] == uri
    only = await client.text_document_code_action_async(
        t.CodeActionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            range=t.Range(t.Position(3, 0), t.Position(5, 0)),
            context=t.CodeActionContext(diagnostics=[], only=[t.CodeActionKind.Refactor]),
        )
    )
    assert [a.title for a in only] == ["Demi: Refactor selection..."]


async def test_explain_returns_markdown_and_opens_it(client, workdir):
    uri = uri_of(workdir, "code.py")
    md = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.explain",
            arguments=[uri, {"start": {"line": 4, "character": 4}, "end": {"line": 4, "character": 4}}],
        )
    )
    assert "`add`" in md and "Static analysis" in md and "adds two numbers" in md
    assert client.shown_documents, "window/showDocument was not sent"
    shown = client.shown_documents[-1].uri
    assert shown.endswith(".md") and Path(shown.removeprefix("file://")).read_text(encoding="utf-8") == md


async def test_refactor_applies_through_workspace_apply_edit(client, workdir):
    uri = uri_of(workdir, "refactor.py")
    open_doc(client, uri, CODE, version=7)
    n = len(client.applied)
    result = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[
                uri,
                {"start": {"line": 5, "character": 4}, "end": {"line": 5, "character": 4}},
                "rename a to first",
            ],
        )
    )
    assert result["applied"] is True and "first" in result["diff"]
    edit = client.applied[n].edit
    change = edit.document_changes[0]
    assert change.text_document.version == 7 and change.text_document.uri == uri
    assert "def add(first, b):" in change.edits[0].new_text


async def test_refactor_without_instruction_asks_for_one(client, workdir):
    uri = uri_of(workdir, "refactor.py")
    n = len(client.asked)
    result = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[uri, {"start": {"line": 10, "character": 8}, "end": {"line": 10, "character": 8}}],
        )
    )
    assert len(client.asked) == n + 1 and "Box.__init__" in client.asked[-1].message
    assert [a.title for a in client.asked[-1].actions][:2] == ["Add type hints", "Add a docstring"]
    assert result["applied"] is False  # the scripted model gave the code back unchanged
    assert any("unchanged" in note for note in result["notes"])


async def test_refactor_of_a_document_edited_meanwhile_is_not_applied(client, workdir):
    uri = uri_of(workdir, "moving.py")
    open_doc(client, uri, CODE)
    n = len(client.applied)
    fut = client.protocol.send_request(
        t.WORKSPACE_EXECUTE_COMMAND,
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[
                uri,
                {"start": {"line": 3, "character": 0}, "end": {"line": 5, "character": 16}},
                "rename a to first, slowly",
            ],
        ),
    )
    await asyncio.sleep(0.3)
    type_text(client, uri, 2, 0, 0, "# edited\n")
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wrap_future(fut)
    assert err.value.code == -32803 and "changed while Demi" in err.value.message
    assert len(client.applied) == n


async def test_long_work_shows_progress_that_cancels(client, workdir):
    uri = uri_of(workdir, "progress.py")
    open_doc(client, uri, "# slowly, please\n" + CODE)
    tokens_before = set(client.progress_reports)
    fut = client.protocol.send_request(
        t.WORKSPACE_EXECUTE_COMMAND, t.ExecuteCommandParams(command="demi.explain", arguments=[uri])
    )
    token = None
    for _ in range(100):
        new = set(client.progress_reports) - tokens_before
        if new and client.progress_reports[next(iter(new))]:
            token = next(iter(new))
            break
        await asyncio.sleep(0.02)
    assert token is not None, "no $/progress began"
    begin = client.progress_reports[token][0]
    assert begin.kind == "begin" and begin.cancellable is True and "explaining" in begin.title
    client.window_work_done_progress_cancel(t.WorkDoneProgressCancelParams(token=token))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(asyncio.wrap_future(fut), 5)
    assert err.value.code == -32800
    for _ in range(50):
        if client.progress_reports[token][-1].kind == "end":
            break
        await asyncio.sleep(0.02)
    assert client.progress_reports[token][-1].kind == "end"


async def test_quick_work_shows_no_progress(client, workdir):
    uri = uri_of(workdir, "code.py")
    before = dict((k, len(v)) for k, v in client.progress_reports.items())
    await client.workspace_execute_command_async(t.ExecuteCommandParams(command="demi.explain", arguments=[uri]))
    after = dict((k, len(v)) for k, v in client.progress_reports.items())
    assert after == before


async def test_cancel_request_on_a_command(client, workdir):
    uri = uri_of(workdir, "progress.py")
    fut = client.protocol.send_request(
        t.WORKSPACE_EXECUTE_COMMAND,
        t.ExecuteCommandParams(command="demi.explain", arguments=[uri]),
        msg_id="explain-cancel",
    )
    await asyncio.sleep(0.2)
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id="explain-cancel"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(asyncio.wrap_future(fut), 5)
    assert err.value.code == -32800
    runs = read_log(workdir / "runs.jsonl")
    for _ in range(40):
        runs = read_log(workdir / "runs.jsonl")
        if runs and runs[-1]["kind"] == "chat" and runs[-1]["reason"] == "cancelled":
            break
        await asyncio.sleep(0.05)
    assert runs[-1]["kind"] == "chat" and runs[-1]["reason"] == "cancelled"


async def test_history_records_explain_and_refactor(client, workdir):
    from demi.assistant.store import Store

    await asyncio.sleep(0.2)  # written on a task thread
    with Store.open_default(workdir / "data") as store:
        kinds = {s.kind for s in store.sessions(50)}
    assert {"explain", "refactor"} <= kinds


async def test_line_breaks_are_lsps_not_pythons(client, workdir):
    """A form feed or U+2028 is not a line break in LSP (str.splitlines thinks it is)."""
    uri = uri_of(workdir, "formfeed.py")
    open_doc(client, uri, "# page\x0cbreak \u2028 here\n" + TYPE_THROUGH + "\n")
    first = await client.text_document_inline_completion_async(inline_params(uri, 2, 4))
    assert first.items[0].insert_text == "return f'hello {name}'"
    type_text(client, uri, 2, 2, 4, "ret")  # an incremental edit after the form feed
    typed = await client.text_document_inline_completion_async(inline_params(uri, 2, 7, invoked=False))
    assert typed.items[0].insert_text == "urn f'hello {name}'"


async def test_a_settings_change_is_not_answered_from_the_cache(client, workdir):
    uri = uri_of(workdir, "resettle.py")
    open_doc(client, uri, "def h():\n    \n")
    await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    s0 = await stats(client)
    await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    s1 = await stats(client)
    assert s1["runsStarted"] == s0["runsStarted"]  # the same question: the cache answers
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": {"maxTokens": 47}}))
    await asyncio.sleep(0.05)
    try:
        await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
        assert (await stats(client))["runsStarted"] == s1["runsStarted"] + 1
    finally:
        client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": {"maxTokens": 48}}))
        await asyncio.sleep(0.05)
