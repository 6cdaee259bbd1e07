"""demi-lsp over a raw pipe and over TCP: malformed messages get error answers, the server lives
on, and shutdown/exit ends it with the exit code LSP asks for (0 after shutdown, 1 without).

Malformed input covered here: bodies that are not JSON (or not UTF-8, or binary), frames whose
Content-Length is too short, too long, not a number or missing, messages that are not JSON-RPC
(a scalar, a batch, a bad id or method), unknown methods, parameters of the wrong type, requests
before initialize and a second initialize, a 10 MB document, NUL bytes and lone surrogates in a
document. After each, a valid request must still get its answer."""

from __future__ import annotations

import json
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from lsp_support import scripted_command, server_env

INIT = {"processId": None, "rootUri": None, "capabilities": {}}


class RawClient:
    """Frames JSON-RPC by hand, so the test can send what no well-behaved client would."""

    def __init__(self, reader: Any, writer: Any, proc: subprocess.Popen | None = None):
        self.reader, self.writer, self.proc = reader, writer, proc
        self.inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            length = None
            while True:
                try:
                    line = self.reader.readline()
                except OSError:
                    line = b""
                if not line:
                    self.inbox.put(None)
                    return
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b"\n"):
                    break
            self.inbox.put(json.loads(self.reader.read(length)))

    def send_bytes(self, body: bytes) -> None:
        self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.writer.flush()

    def send(self, obj: dict[str, Any]) -> None:
        self.send_bytes(json.dumps(obj).encode("utf-8"))

    def request(self, msg_id: Any, method: str, params: Any = None) -> None:
        msg = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def send_frame(self, header: bytes, body: bytes) -> None:
        """A frame with a header of the test's choosing (a wrong Content-Length, or none)."""
        self.writer.write(header + body)
        self.writer.flush()

    def until(self, msg_id: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every message from the server up to and including the response with `msg_id`."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg is None:
                raise AssertionError("the server closed the connection")
            seen.append(msg)
            if "id" in msg and "method" not in msg and msg["id"] == msg_id:
                return seen
        raise AssertionError(f"no answer to {msg_id!r}; got {seen!r}")

    def answer(self, msg_id: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The response with `msg_id` (notifications and other responses are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg is None:
                raise AssertionError("the server closed the connection")
            if "id" in msg and "method" not in msg and msg["id"] == msg_id:
                return msg
        raise AssertionError(f"no answer to {msg_id!r}")


@pytest.fixture
def raw_uninitialized(tmp_path):
    """A raw client on a fresh server, before initialize; the server logs to tmp_path/server.log."""
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        scripted_command() + ["--log-file", str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(tmp_path),
    )
    client = RawClient(proc.stdout, proc.stdin, proc)
    client.log_path = log
    yield client
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def raw(raw_uninitialized):
    client = raw_uninitialized
    client.request(1, "initialize", INIT)
    assert "capabilities" in client.answer(1)["result"]
    client.notify("initialized", {})
    return client


def test_malformed_messages_get_error_answers(raw, tmp_path):
    raw.send_bytes(b"{this is not json")
    assert raw.answer(None)["error"]["code"] == -32700  # ParseError, id null
    raw.request(2, "textDocument/inlineCompletion", {"textDocument": 5, "position": "here"})
    err = raw.answer(2)["error"]
    assert err["code"] == -32602 and "textDocument/inlineCompletion" in err["message"]
    raw.send({"id": 3, "method": "textDocument/completion"})  # no "jsonrpc"
    assert raw.answer(3)["error"]["code"] == -32600
    raw.request(4, "workspace/executeCommand", {"command": "demi.explain"})  # no arguments
    assert raw.answer(4)["error"]["code"] == -32602
    raw.request(5, "no/such/method", {})
    assert raw.answer(5)["error"]["code"] == -32601
    raw.notify(
        "textDocument/didChange",
        {"textDocument": {"uri": "file:///nowhere.py", "version": 2}, "contentChanges": [{"text": "x"}]},
    )  # a change to an unknown document
    raw.request(
        6,
        "textDocument/inlineCompletion",
        {
            "textDocument": {"uri": "file:///nowhere.py"},
            "position": {"line": 0, "character": 0},
            "context": {"triggerKind": 1},
        },
    )
    assert raw.answer(6)["error"]["code"] == -32602
    # still alive and well: a real request works
    uri = (tmp_path / "ok.py").as_uri()
    raw.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "def f():\n    \n"}},
    )
    raw.request(
        7,
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}},
    )
    assert raw.answer(7)["result"]["items"][0]["insertText"] == "value = 42"
    raw.request(8, "shutdown")
    assert raw.answer(8)["result"] is None
    raw.notify("exit")
    assert raw.proc.wait(10) == 0


def test_exit_without_shutdown_is_exit_code_1(raw):
    raw.notify("exit")
    assert raw.proc.wait(10) == 1


def test_requests_after_shutdown_are_refused_and_exit_is_clean(raw, tmp_path):
    uri = (tmp_path / "late.py").as_uri()
    raw.notify(
        "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "x = 1\n"}}
    )
    raw.request(2, "shutdown")
    assert "result" in raw.answer(2)
    raw.request(
        3,
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}},
    )
    assert raw.answer(3)["error"]["code"] == -32600
    raw.notify("exit")
    assert raw.proc.wait(10) == 0


def test_closed_stdin_ends_the_server(raw):
    raw.proc.stdin.close()
    assert raw.proc.wait(10) in (0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_mode(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "demi.cli.main", "lsp", "--tcp", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=server_env(tmp_path),
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("demi lsp --tcp did not listen") from None
                time.sleep(0.1)
        reader, writer = sock.makefile("rb"), sock.makefile("wb")
        client = RawClient(reader, writer)
        client.request(1, "initialize", INIT)
        result = client.answer(1)["result"]
        assert result["serverInfo"]["name"] == "demi-lsp" and "inlineCompletionProvider" in result["capabilities"]
        client.request(2, "shutdown")
        client.answer(2)
        client.notify("exit")
        assert proc.wait(10) == 0  # one client, then the server ends
        sock.close()
    finally:
        proc.kill()
        proc.wait(5)


def test_cli_help():
    out = subprocess.run([sys.executable, "-m", "demi.cli.main", "lsp", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tcp" in out.stdout
    out = subprocess.run([sys.executable, "-m", "demi.lsp.server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tcp" in out.stdout


def test_utf8_position_encoding_when_the_client_prefers_it(tmp_path):
    proc = subprocess.Popen(
        scripted_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(tmp_path),
    )
    try:
        c = RawClient(proc.stdout, proc.stdin, proc)
        c.request(
            1,
            "initialize",
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}},
            },
        )
        assert c.answer(1)["result"]["capabilities"]["positionEncoding"] == "utf-8"
        c.notify("initialized", {})
        uri = (tmp_path / "accent.py").as_uri()
        c.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": "café = 1\n"}},
        )
        # "café = " is 8 bytes in UTF-8 (7 characters): the cursor after it is character 8
        c.request(
            2,
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 8}, "context": {"triggerKind": 1}},
        )
        item = c.answer(2)["result"]["items"][0]
        assert item["range"]["start"] == {"line": 0, "character": 8}
        c.request(
            3,
            "textDocument/inlineCompletion",
            {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 10}, "context": {"triggerKind": 1}},
        )
        assert c.answer(3)["error"]["code"] == -32602  # past the line's 9 bytes
    finally:
        proc.kill()
        proc.wait(5)


# -- malformed input, case by case: an error answer or a logged warning, and the server serves on ------------

STATS = {"jsonrpc": "2.0", "id": 50, "method": "demi/stats", "params": {}}


def stats_ok(raw: RawClient, msg_id: int = 99) -> None:
    """A valid request after the bad input gets its answer."""
    raw.request(msg_id, "demi/stats", {})
    assert "completions" in raw.answer(msg_id)["result"]


def server_log(raw: RawClient) -> str:
    time.sleep(0.2)
    return raw.log_path.read_text(encoding="utf-8", errors="replace") if raw.log_path.exists() else ""


def open_text(raw: RawClient, uri: str, text: str) -> None:
    raw.notify(
        "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}}
    )


def inline(raw: RawClient, msg_id: int, uri: str, line: int, character: int) -> dict[str, Any]:
    raw.request(
        msg_id,
        "textDocument/inlineCompletion",
        {
            "textDocument": {"uri": uri},
            "position": {"line": line, "character": character},
            "context": {"triggerKind": 1},
        },
    )
    return raw.answer(msg_id, timeout=60)


def test_content_length_too_short_is_a_parse_error_then_back_in_step(raw):
    body = json.dumps(STATS).encode()
    raw.send_frame(b"Content-Length: %d\r\n\r\n" % (len(body) - 5), body)
    raw.request(99, "demi/stats", {})
    seen = raw.until(99)  # the cut-off body: ParseError; its tail, left before the next header: skipped
    assert [m["error"]["code"] for m in seen if m.get("id") is None and "error" in m] == [-32700]
    assert "completions" in seen[-1]["result"]
    assert "skipped 5 bytes" in server_log(raw)


@pytest.mark.parametrize("extra", [3, 10, 40, 1000])
def test_content_length_too_long_still_answers_both_messages(raw, extra):
    """The declared body runs into the next message (3 and 10: into its header; 1000: past its
    end): the first message is read to its end, the next one is not lost."""
    body = json.dumps(STATS).encode()
    raw.send_frame(b"Content-Length: %d\r\n\r\n" % (len(body) + extra), body)
    raw.request(99, "demi/stats", {})
    seen = raw.until(99)
    assert [m["id"] for m in seen if "id" in m and "method" not in m] == [50, 99]
    assert "was more than the message's" in server_log(raw)


@pytest.mark.parametrize(
    "header", [b"Content-Length: abc\r\n\r\n", b"Content-Length: -5\r\n\r\n", b"Content-Length:\r\n\r\n"]
)
def test_content_length_that_is_not_a_number(raw, header):
    raw.send_frame(header, json.dumps(STATS).encode())
    raw.request(99, "demi/stats", {})
    seen = raw.until(99)
    errors = [m for m in seen if m.get("id") is None and "error" in m]
    assert errors and errors[0]["error"]["code"] == -32700 and "not a number" in errors[0]["error"]["message"]


def test_no_content_length_at_all(raw):
    raw.send_frame(b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n", json.dumps(STATS).encode())
    stats_ok(raw)
    assert "skipped" in server_log(raw)


def test_bodies_that_are_not_json(raw):
    raw.send_bytes(b'{"jsonrpc": "2.0", "id": 50, "method": "demi/stats", "params": {"x": "a\x00b"}}')  # raw NUL
    assert raw.answer(None)["error"]["code"] == -32700
    raw.send_bytes(bytes(random.Random(7).randrange(256) for _ in range(500)))  # binary noise
    assert raw.answer(None)["error"]["code"] == -32700
    raw.send_bytes(b'{"jsonrpc": "2.0", "id": 51, "method": ')  # cut off
    assert raw.answer(None)["error"]["code"] == -32700
    stats_ok(raw)


def test_a_body_that_is_not_utf8_is_read_with_replacement_characters(raw, tmp_path):
    uri = (tmp_path / "latin1.py").as_uri()
    raw.send_bytes(
        b'{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"textDocument":{"uri":"'
        + uri.encode()
        + b'","languageId":"python","version":1,"text":"caf\xe9 = 1\\n"}}}'
    )
    raw.request(2, "demi/documentText", {"uri": uri})
    assert raw.answer(2)["result"]["text"] == "caf\ufffd = 1\n"
    assert "not UTF-8" in server_log(raw)


def test_messages_that_are_not_json_rpc_requests(raw):
    raw.send_bytes(b"42")
    assert raw.answer(None)["error"]["code"] == -32600
    raw.send([{"jsonrpc": "2.0", "id": 50, "method": "demi/stats"}, {"jsonrpc": "2.0", "method": "x"}])  # a batch
    assert raw.answer(50)["error"]["code"] == -32600
    raw.send({"jsonrpc": "2.0", "id": {"a": 1}, "method": "demi/stats"})  # an id that is an object
    assert raw.answer(None)["error"]["code"] == -32600
    raw.send({"jsonrpc": "2.0", "id": 52, "method": 7})
    assert raw.answer(52)["error"]["code"] == -32600
    raw.send({"jsonrpc": "1.0", "id": 53, "method": "demi/stats"})
    assert raw.answer(53)["error"]["code"] == -32600
    raw.send({"jsonrpc": "2.0", "id": 54})  # neither a request nor a response: ignored
    raw.send({"jsonrpc": "2.0", "id": 55, "method": "demi/stats"})  # params may be left out
    seen = raw.until(55)
    assert "result" in seen[-1] and not any(m.get("id") == 54 for m in seen)
    stats_ok(raw)


def test_unknown_methods(raw):
    raw.request(2, "no/such/method", {})
    assert raw.answer(2)["error"]["code"] == -32601
    raw.notify("no/such/notification", {"x": 1})
    raw.notify("$/somethingOptional", {})
    raw.request(3, "demi/stats", {})
    seen = raw.until(3)
    assert not any("error" in m for m in seen)  # the notifications were ignored, not answered


@pytest.mark.parametrize(
    "method,params",
    [
        ("textDocument/inlineCompletion", [1, 2]),
        ("textDocument/inlineCompletion", {"textDocument": {"uri": 5}, "position": {"line": 0, "character": 0}}),
        (
            "textDocument/completion",
            {"textDocument": {"uri": "file:///x.py"}, "position": {"line": -1, "character": 0}},
        ),
        ("textDocument/completion", {"textDocument": {"uri": "file:///x.py"}, "position": "here"}),
        ("textDocument/codeAction", None),
        ("codeAction/resolve", {"title": 5}),
        ("workspace/executeCommand", {"command": 5}),
        ("workspace/executeCommand", {"command": "demi.explain", "arguments": "file:///x.py"}),
        ("workspace/executeCommand", {"command": "demi.refactor", "arguments": [{"uri": 3}]}),
        (
            "textDocument/completion",
            {"textDocument": {"uri": "file:///x.py"}, "position": {"line": "3", "character": 0}},
        ),
        (
            "textDocument/completion",
            {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 2.7, "character": 0}},
        ),
        (
            "textDocument/completion",
            {"textDocument": {"uri": "file:///x.py"}, "position": {"line": True, "character": 0}},
        ),
        ("demi/documentText", {"uri": 5}),
        ("demi/documentText", "file:///x.py"),
    ],
)
def test_parameters_of_the_wrong_type_are_invalid_params(raw, method, params):
    raw.request(7, method, params)
    assert raw.answer(7)["error"]["code"] == -32602
    stats_ok(raw)


def test_notifications_with_wrong_parameters_are_logged_and_ignored(raw, tmp_path):
    uri = (tmp_path / "n.py").as_uri()
    raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": 5}})
    raw.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": {"not": "text"}}},
    )
    raw.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": "1", "text": "x = 1\n"}},
    )
    raw.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": "nope"})
    raw.notify("textDocument/didClose", [])
    raw.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": "many"}})
    raw.request(2, "demi/documentText", {"uri": uri})
    seen = raw.until(2)
    assert seen[-1]["result"] is None  # never opened
    assert not any("error" in m for m in seen[:-1])
    stats_ok(raw)


def test_requests_before_initialize_and_a_second_initialize(raw_uninitialized, tmp_path):
    raw = raw_uninitialized
    uri = (tmp_path / "early.py").as_uri()
    open_text(raw, uri, "x = 1\n")  # a notification before initialize: dropped
    raw.request(2, "demi/stats", {})
    assert raw.answer(2)["error"]["code"] == -32002  # ServerNotInitialized
    raw.request(
        3,
        "textDocument/inlineCompletion",
        {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}},
    )
    assert raw.answer(3)["error"]["code"] == -32002
    raw.request(1, "initialize", INIT)
    assert "capabilities" in raw.answer(1)["result"]
    raw.notify("initialized", {})
    open_text(raw, uri, "y = 2\n")
    raw.request(4, "initialize", INIT)  # again: refused, and the open document is kept
    assert raw.answer(4)["error"]["code"] == -32600
    raw.request(5, "demi/documentText", {"uri": uri})
    assert raw.answer(5)["result"]["text"] == "y = 2\n"
    assert "Traceback" not in server_log(raw)


def test_a_10mb_document_is_opened_edited_and_completed_in(raw, tmp_path):
    uri = (tmp_path / "huge.py").as_uri()
    text = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(400_000))[:10_000_000]
    text = text[: text.rfind("\n") + 1]
    lines = text.count("\n")
    middle = lines // 2 - (lines // 2) % 2 + 1  # a "    return ..." line
    started = time.monotonic()
    open_text(raw, uri, text)
    item = inline(raw, 2, uri, middle, 4)["result"]["items"][0]
    assert item["insertText"] == "value = 42" and item["range"]["start"] == {"line": middle, "character": 4}
    raw.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": uri, "version": 2},
            "contentChanges": [
                {
                    "range": {"start": {"line": middle, "character": 4}, "end": {"line": middle, "character": 4}},
                    "text": "y = ",
                }
            ],
        },
    )
    item = inline(raw, 3, uri, middle, 8)["result"]["items"][0]
    assert item["range"]["start"] == {"line": middle, "character": 8}
    assert inline(raw, 4, uri, lines, 0)["result"]["items"]  # at the very end
    assert time.monotonic() - started < 60
    raw.request(5, "demi/documentText", {"uri": uri})
    got = raw.answer(5, timeout=60)["result"]["text"]
    assert len(got) == len(text) + 4 and got.count("\n") == lines
    stats_ok(raw)


def test_nul_bytes_and_lone_surrogates_in_a_document(raw, tmp_path):
    uri = (tmp_path / "binary.py").as_uri()
    open_text(raw, uri, "x = '\x00\x01\x7f'\n\x00\n")
    assert inline(raw, 2, uri, 1, 1)["result"]["items"]
    raw.request(3, "demi/documentText", {"uri": uri})
    assert raw.answer(3)["result"]["text"] == "x = '\x00\x01\x7f'\n\x00\n"
    uri2 = (tmp_path / "surrogates.py").as_uri()
    raw.send_bytes(
        b'{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"textDocument":{"uri":"'
        + uri2.encode()
        + b'","languageId":"python","version":1,"text":"s = \\"\\ud800\\"\\n\\udc00x = "}}}'
    )
    # one U+FFFD per lone surrogate: the same UTF-16 length, so the client's positions still hold
    item = inline(raw, 4, uri2, 1, 5)["result"]["items"][0]
    assert item["range"]["start"] == {"line": 1, "character": 5}
    raw.request(5, "demi/documentText", {"uri": uri2})
    assert raw.answer(5)["result"]["text"] == 's = "\ufffd"\n\ufffdx = '
    raw.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": uri2, "version": 2},
            "contentChanges": [
                {"range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 1}}, "text": "\ud83d"}
            ],
        },
    )
    raw.request(6, "demi/documentText", {"uri": uri2})
    assert raw.answer(6)["result"]["text"] == 's = "\ufffd"\n\ufffdx = '
    assert "lone surrogates" in server_log(raw)
    stats_ok(raw)


def test_a_request_sees_the_text_it_was_sent_with_even_when_the_next_change_came_in_the_same_read(raw, tmp_path):
    """A completion and an edit that empties the document, in one write: the completion is for
    the text as it was (had the edit been applied first, its position would be past the end)."""
    uri = (tmp_path / "same_read.py").as_uri()
    open_text(raw, uri, "def f():\n    \n")
    frames = b""
    for msg in (
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "textDocument/inlineCompletion",
            "params": {
                "textDocument": {"uri": uri},
                "position": {"line": 1, "character": 4},
                "context": {"triggerKind": 1},
            },
        },
        {
            "jsonrpc": "2.0",
            "method": "textDocument/didChange",
            "params": {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": ""}]},
        },
    ):
        body = json.dumps(msg).encode()
        frames += b"Content-Length: %d\r\n\r\n" % len(body) + body
    raw.writer.write(frames)
    raw.writer.flush()
    answer = raw.answer(2)
    assert "result" in answer, answer  # not "position line 1 is past the end of the document"
