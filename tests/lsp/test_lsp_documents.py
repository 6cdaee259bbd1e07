"""Regression tests for what tests/lsp/test_lsp_fuzz.py found in demi-lsp.

Each bug has a unit test on the piece that was wrong and, where the client sees it, an end-to-end
test through a real client against the scripted server (tests/lsp_support.py):

1. pygls's ranged change: a character past a line's end split a CRLF or landed one character
   early on the last line; a backwards range duplicated text; a position inside a surrogate pair
   split the pair.
2. Every error answer a handler chose (InvalidParams, RequestFailed) was logged with a traceback.
3. A refactor cancelled mid-way left "Future exception was never retrieved" in the log.
4. A didChange for a document that is not open became "KeyError" in the editor's log.
5. demi.explain / demi.refactor read lines at \\n only: in a file with lone \\r line ends, a valid
   line was "past the end".
6. demi.explain / demi.refactor read the document on a task thread, some time after the request
   came: a close or an edit sent after the request changed what it worked on.
7. The client's answer to a request of the server's (showMessageRequest, applyEdit) that came
   after the command needing it was cancelled raised InvalidStateError in pygls (a traceback,
   and "JsonRpcException: CANCELLED" in the editor's log).
8. A refactor's WorkspaceEdit came from the session layer, in lines that end at \\n only: in a
   file with U+2028 or a form feed it replaced the wrong lines. And a rewrite the model cut off
   at refactorMaxTokens was applied, deleting the code after the cut.
9. pygls kept the future of every notification handled by a generator (each didChange) for good.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import open_doc, scripted_command, server_env, start_client, stop_client, to_plain
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

from demi.lsp.documents import LspTextDocument
from demi.lsp.textutil import index_of_units, offset_at, without_lone_surrogates


def _change(text: str, start: tuple[int, int], end: tuple[int, int], new: str) -> str:
    doc = LspTextDocument("file:///x.py", text)
    doc.apply_change(t.TextDocumentContentChangePartial(range=t.Range(t.Position(*start), t.Position(*end)), text=new))
    return doc.source


@pytest.mark.parametrize(
    "text,start,end,new,expected",
    [
        ("abc\r\ndef", (0, 4), (0, 4), "X", "abcX\r\ndef"),  # past the end of a CRLF line: before the CRLF
        ("abc", (0, 7), (0, 7), "X", "abcX"),  # past the end of the last line: at its end
        ("def ", (0, 0), (0, 5), "", ""),  # (pygls deleted one character short)
        ("abc\n", (0, 1), (0, 0), "", "bc\n"),  # backwards: the same range forwards
        ("ab\ncd\n", (1, 1), (0, 1), "-", "a-d\n"),  # backwards over a line break
        ("a😀b", (0, 2), (0, 2), "X", "aX😀b"),  # inside a surrogate pair: before the emoji
        ("ab", (5, 0), (5, 0), "X", "abX"),  # past the last line: the end of the text
        ("x\ry", (1, 0), (1, 1), "Z", "x\rZ"),  # a lone CR ends a line
        ("a\u2028b\x0cc", (0, 5), (0, 5), "!", "a\u2028b\x0cc!"),  # U+2028 and form feed do not
    ],
)
def test_ranged_changes_follow_lsp(text, start, end, new, expected):
    assert _change(text, start, end, new) == expected


def test_positions_inside_a_character_mean_its_start():
    assert index_of_units("a😀b", 2, "utf-16") == 1
    assert index_of_units("é", 1, "utf-8") == 0 and index_of_units("é", 2, "utf-8") == 1
    assert index_of_units("x" * 1000 + "😀", 1001, "utf-16") == 1000  # the long-line shortcut stops short
    assert index_of_units("abc", 4, "utf-16") is None and index_of_units("abc", 4, "utf-8") is None
    assert offset_at("ab\r\ncd", 0, 99, "utf-16") == 2 and offset_at("ab\r\ncd", 9, 0, "utf-16") == 6


def test_lone_surrogates_become_replacement_characters():
    assert without_lone_surrogates("a\ud800b\udc00") == "a\ufffdb\ufffd"
    text = "no surrogates 😀"
    assert without_lone_surrogates(text) is text


# -- end to end ---------------------------------------------------------------------------------------------

on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-documents")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir):
    env = server_env(workdir, DEMI_TEST_CHAT_DELAY_MS="1")
    cmd = scripted_command() + ["--log-file", str(workdir / "server.log")]
    c = await start_client(cmd, env, workdir, init_options={"maxTokens": 16})
    yield c
    assert await stop_client(c) == 0


def new_log(workdir: Path, since: int) -> str:
    return (workdir / "server.log").read_text(encoding="utf-8", errors="replace")[since:]


def log_size(workdir: Path) -> int:
    path = workdir / "server.log"
    return len(path.read_text(encoding="utf-8", errors="replace")) if path.exists() else 0


async def server_text(client, uri: str) -> str | None:
    got = to_plain(await client.protocol.send_request_async("demi/documentText", {"uri": uri}))
    return got["text"] if got is not None else None


@on_module_loop
async def test_server_text_follows_edge_case_changes(client, workdir):
    uri = (workdir / "edges.py").as_uri()
    open_doc(client, uri, "abc\r\ndef\n😀x")
    changes = [
        ((0, 9), (0, 9), "1"),  # past the line's end, before its CRLF
        ((2, 1), (2, 1), "2"),  # inside the surrogate pair: before it
        ((1, 2), (0, 1), ""),  # backwards, over a line break
        ((2, 50), (2, 50), "3"),
    ]  # past the end of the last line
    for i, (a, b, text) in enumerate(changes, start=2):
        client.text_document_did_change(
            t.DidChangeTextDocumentParams(
                text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=i),
                content_changes=[
                    t.TextDocumentContentChangePartial(range=t.Range(t.Position(*a), t.Position(*b)), text=text)
                ],
            )
        )
    assert await server_text(client, uri) == "af\n2😀x3"
    assert await server_text(client, (workdir / "never-opened.py").as_uri()) is None


@on_module_loop
async def test_error_answers_leave_no_traceback(client, workdir):
    since = log_size(workdir)
    uri = (workdir / "errors.py").as_uri()
    open_doc(client, uri, "x = 1\n")
    with pytest.raises(JsonRpcException) as err:
        await client.text_document_inline_completion_async(
            t.InlineCompletionParams(
                text_document=t.TextDocumentIdentifier(uri=uri),
                position=t.Position(line=9, character=0),
                context=t.InlineCompletionContext(trigger_kind=t.InlineCompletionTriggerKind.Invoked),
            )
        )
    assert err.value.code == -32602
    with pytest.raises(JsonRpcException):
        await client.workspace_execute_command_async(t.ExecuteCommandParams(command="demi.explain", arguments=[]))
    await asyncio.sleep(0.2)
    assert "Traceback" not in new_log(workdir, since)


@on_module_loop
async def test_a_cancelled_refactor_leaves_no_unretrieved_error(client, workdir):
    since = log_size(workdir)
    uri = (workdir / "slow_refactor.py").as_uri()
    open_doc(client, uri, "def f(a):\n    return a\n")
    fut = client.protocol.send_request(
        t.WORKSPACE_EXECUTE_COMMAND,
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[
                uri,
                {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 12}},
                "rename a to b, slowly",
            ],
        ),
        msg_id="refactor-to-cancel",
    )
    await asyncio.sleep(0.3)
    client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id="refactor-to-cancel"))
    with pytest.raises(JsonRpcException) as err:
        await asyncio.wait_for(asyncio.wrap_future(fut), 30)
    assert err.value.code == -32800
    await asyncio.sleep(1.0)  # the task thread sees the cancel at the model's next step
    text = new_log(workdir, since)
    assert "never retrieved" not in text and "Traceback" not in text


@on_module_loop
async def test_a_change_to_a_document_that_is_not_open_is_a_warning(client, workdir):
    since = log_size(workdir)
    before = len(client.log_messages)
    uri = (workdir / "not-open.py").as_uri()
    client.text_document_did_change(
        t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=3),
            content_changes=[t.TextDocumentContentChangeWholeDocument(text="x")],
        )
    )
    assert await server_text(client, uri) is None  # ignored, and the server answers the next request
    assert "not open: ignored" in new_log(workdir, since)
    assert not any("KeyError" in m.message for m in client.log_messages[before:])


@on_module_loop
async def test_explain_reads_lines_the_way_lsp_does(client, workdir):
    """Lines 1-2 (0-based) of a file whose lines end in lone CRs: the text of those lines."""
    uri = (workdir / "cr_only.py").as_uri()
    open_doc(client, uri, "a = 1\rb = 2\rc = 3\r")
    markdown = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.explain",
            arguments=[uri, {"start": {"line": 1, "character": 0}, "end": {"line": 2, "character": 5}}],
        )
    )
    assert isinstance(markdown, str) and markdown
    with pytest.raises(JsonRpcException) as err:
        await client.workspace_execute_command_async(
            t.ExecuteCommandParams(
                command="demi.explain",
                arguments=[uri, {"start": {"line": 4, "character": 0}, "end": {"line": 4, "character": 0}}],
            )
        )
    assert err.value.code == -32602 and "0-based lines 0-3" in err.value.message


@on_module_loop
async def test_a_command_works_on_the_text_it_was_sent_for(client, workdir):
    """The task threads are busy (four slow explanations), so the explain's work starts after the
    close that follows it has been handled: it must still explain the text it was sent for."""
    busy_uri = (workdir / "busy.py").as_uri()
    open_doc(client, busy_uri, "# slowly, please\nx = 1\n")
    busy = [
        client.protocol.send_request(
            t.WORKSPACE_EXECUTE_COMMAND,
            t.ExecuteCommandParams(command="demi.explain", arguments=[busy_uri]),
            msg_id=f"busy-{i}",
        )
        for i in range(4)
    ]
    await asyncio.sleep(0.3)
    uri = (workdir / "closed_after.py").as_uri()
    open_doc(client, uri, "def f(x):\n    return x\n")
    fut = client.protocol.send_request(
        t.WORKSPACE_EXECUTE_COMMAND,
        t.ExecuteCommandParams(
            command="demi.explain",
            arguments=[uri, {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 5}}],
        ),
    )
    client.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))
    for i in range(4):
        client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=f"busy-{i}"))
    markdown = await asyncio.wait_for(asyncio.wrap_future(fut), 30)  # not "unknown document"
    assert isinstance(markdown, str) and markdown
    for b in busy:
        with pytest.raises(JsonRpcException):
            await asyncio.wait_for(asyncio.wrap_future(b), 30)


@on_module_loop
async def test_an_answer_after_its_command_was_cancelled_is_dropped_quietly(workdir):
    root = workdir / "late-answer"
    root.mkdir()
    log = root / "server.log"
    c = await start_client(scripted_command() + ["--log-file", str(log)], server_env(root), root, ask_delay_s=0.8)
    try:
        uri = (root / "ask.py").as_uri()
        open_doc(c, uri, "def f(a):\n    return a\n")
        fut = c.protocol.send_request(
            t.WORKSPACE_EXECUTE_COMMAND,
            t.ExecuteCommandParams(
                command="demi.refactor",
                arguments=[uri, {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}}],
            ),
            msg_id="asks-first",
        )
        for _ in range(100):  # the server has asked for an instruction; the client takes its time
            if c.asked:
                break
            await asyncio.sleep(0.02)
        assert c.asked
        c.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id="asks-first"))
        with pytest.raises(JsonRpcException) as err:
            await asyncio.wait_for(asyncio.wrap_future(fut), 30)
        assert err.value.code == -32800
        await asyncio.sleep(1.2)  # the client's late answer has arrived
        got = await c.protocol.send_request_async("demi/documentText", {"uri": uri})
        assert got is not None  # still serving
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        assert "Traceback" not in text and "InvalidStateError" not in text
        assert not any("CANCELLED" in m.message for m in c.log_messages)
    finally:
        assert await stop_client(c) == 0


def test_a_huge_document_is_completed_from_a_steady_window():
    """Past HUGE_CHARS a completion sees whole lines around the cursor, and typing there keeps
    the window's start (the type-through cache compares the text before the cursor)."""
    from demi.lsp.completion import HUGE_CHARS, Snapshot, windowed

    text = "".join(f"line_{i} = {i}\n" for i in range(200_000))
    assert len(text) > HUGE_CHARS
    offset = text.index("line_150000 = ") + len("line_150000 = ")
    snap = Snapshot("file:///big.py", 1, text, offset, "python", "big.py")
    w = windowed(snap)
    assert len(w.text) < 400_000 and snap.before.endswith(w.before) and snap.after.startswith(w.after)
    assert text[offset - w.offset - 1] == "\n" and w.text.endswith("\n")  # whole lines
    typed = text[:offset] + "4" + text[offset:]
    w2 = windowed(Snapshot("file:///big.py", 2, typed, offset + 1, "python", "big.py"))
    assert w2.before == w.before + "4" and w2.after.startswith(w.after[:1000])
    small = Snapshot("file:///s.py", 1, "x = 1\n", 4, "python", "s.py")
    assert windowed(small) is small


@on_module_loop
async def test_notifications_leave_no_handler_behind(client, workdir):
    """pygls kept the future of every didOpen/didChange/didClose for good (~1.4 KB a keystroke:
    the slow RSS creep of the soak benchmark)."""
    uri = (workdir / "many_changes.py").as_uri()
    open_doc(client, uri, "x = 1\n")
    for version in range(2, 602):
        client.text_document_did_change(
            t.DidChangeTextDocumentParams(
                text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[t.TextDocumentContentChangeWholeDocument(text=f"x = {version}\n")],
            )
        )
    client.text_document_did_close(t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=uri)))
    s = to_plain(await client.protocol.send_request_async("demi/stats", {}))
    assert s["handlersInFlight"] <= 2, s["handlersInFlight"]  # (demi/stats itself, and little else)


# -- 8. a refactor's WorkspaceEdit ----------------------------------------------------------------------------
# The session layer's workspace_edit (assistant/edits.py) finds the changed lines with str.splitlines
# and places them with lines that end at \n only: in a file with U+2028 or a form feed, the edit
# landed on the wrong line (inserting instead of replacing); with lone \r it raised IndexError.
# The server now builds the edit itself, in LSP's lines and the negotiated encoding.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from demi.lsp.textutil import replace_changed_lines  # noqa: E402

EDIT_PIECES = ("x = 1", "y", "\n", "\r\n", "\r", "\u2028", "\x0c", "é", "😀", "", " ")


def _apply_edit(text: str, edit: t.TextEdit | None, encoding: str = "utf-16") -> str:
    if edit is None:
        return text
    from pygls.workspace.position_codec import PositionCodec

    doc = LspTextDocument("file:///x.py", text, position_codec=PositionCodec(encoding))
    doc.apply_change(t.TextDocumentContentChangePartial(range=edit.range, text=edit.new_text))
    return doc.source


@settings(max_examples=300, deadline=None, database=None)
@given(
    old=st.lists(st.sampled_from(EDIT_PIECES), max_size=12).map("".join),
    new=st.lists(st.sampled_from(EDIT_PIECES), max_size=12).map("".join),
    encoding=st.sampled_from(("utf-16", "utf-8", "utf-32")),
)
def test_the_refactor_edit_turns_the_old_text_into_the_new(old, new, encoding):
    assert _apply_edit(old, replace_changed_lines(old, new, encoding), encoding) == new


def test_the_refactor_edit_replaces_only_the_changed_lines():
    edit = replace_changed_lines("a\u2028b\nx = 1\nz\n", "a\u2028b\ny = 1\nz\n", "utf-16")
    assert edit.range == t.Range(t.Position(1, 0), t.Position(2, 0)) and edit.new_text == "y = 1\n"
    edit = replace_changed_lines("a\rx = 1", "a\ry = 1", "utf-16")
    assert edit.range == t.Range(t.Position(1, 0), t.Position(1, 5)) and edit.new_text == "y = 1"
    assert replace_changed_lines("same", "same", "utf-16") is None


@on_module_loop
async def test_a_refactor_is_applied_to_the_right_lines(client, workdir):
    uri = (workdir / "odd_breaks.py").as_uri()
    old = "a = 1  # \u2028 a separator\nx = 1\n"  # (the session layer's edit: an insertion at line 2)
    open_doc(client, uri, old)
    before = len(client.applied)
    result = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[
                uri,
                {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5}},
                "write y for every x",
            ],
        )
    )
    assert result["applied"] is True
    [params] = client.applied[before:]
    [change] = params.edit.document_changes
    [edit] = change.edits
    assert _apply_edit(old, edit) == "a = 1  # \u2028 a separator\ny = 1\n"


@on_module_loop
async def test_a_refactor_of_a_file_with_lone_cr_line_ends(client, workdir):
    uri = (workdir / "lone_cr.py").as_uri()
    open_doc(client, uri, "a = 1\rx = 1\r")
    result = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(
            command="demi.refactor",
            arguments=[
                uri,
                {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5}},
                "write y for every x",
            ],
        )
    )
    assert result["applied"] is True


@on_module_loop
async def test_a_rewrite_cut_off_by_the_token_limit_is_not_applied(client, workdir):
    uri = (workdir / "cut_off.py").as_uri()
    open_doc(client, uri, "x = 1\nx = 2\nx = 3\nx = 4\n")  # cut after 18 characters, "y = 1\ny" still parses
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"refactorMaxTokens": 6}))
    await asyncio.sleep(0.05)
    before = len(client.applied)
    try:
        with pytest.raises(JsonRpcException) as err:
            await client.workspace_execute_command_async(
                t.ExecuteCommandParams(
                    command="demi.refactor",
                    arguments=[
                        uri,
                        {"start": {"line": 0, "character": 0}, "end": {"line": 4, "character": 0}},
                        "write y for every x",
                    ],
                )
            )
        assert err.value.code == -32803 and "refactorMaxTokens" in err.value.message
        assert len(client.applied) == before
    finally:
        client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"refactorMaxTokens": 768}))
        await asyncio.sleep(0.05)
