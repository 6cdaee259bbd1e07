"""demi-lsp over a raw pipe and over TCP: malformed messages get error answers, the server lives
on, and shutdown/exit ends it with the exit code LSP asks for (0 after shutdown, 1 without)."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
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
def raw(tmp_path):
    proc = subprocess.Popen(scripted_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=server_env(tmp_path))
    client = RawClient(proc.stdout, proc.stdin, proc)
    client.request(1, "initialize", INIT)
    assert "capabilities" in client.answer(1)["result"]
    client.notify("initialized", {})
    yield client
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


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
    raw.notify("textDocument/didChange", {"textDocument": {"uri": "file:///nowhere.py", "version": 2},
                                          "contentChanges": [{"text": "x"}]})  # a change to an unknown document
    raw.request(6, "textDocument/inlineCompletion", {"textDocument": {"uri": "file:///nowhere.py"},
                                                     "position": {"line": 0, "character": 0},
                                                     "context": {"triggerKind": 1}})
    assert raw.answer(6)["error"]["code"] == -32602
    # still alive and well: a real request works
    uri = (tmp_path / "ok.py").as_uri()
    raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                         "text": "def f():\n    \n"}})
    raw.request(7, "textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                                     "position": {"line": 1, "character": 4},
                                                     "context": {"triggerKind": 1}})
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
    raw.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                         "text": "x = 1\n"}})
    raw.request(2, "shutdown")
    assert "result" in raw.answer(2)
    raw.request(3, "textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                                     "position": {"line": 0, "character": 0},
                                                     "context": {"triggerKind": 1}})
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
    proc = subprocess.Popen([sys.executable, "-m", "demi.main", "lsp", "--tcp", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env(tmp_path))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("demi lsp --tcp did not listen")
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
    out = subprocess.run([sys.executable, "-m", "demi.main", "lsp", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tcp" in out.stdout
    out = subprocess.run([sys.executable, "-m", "demi.lsp.server", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--tcp" in out.stdout


def test_utf8_position_encoding_when_the_client_prefers_it(tmp_path):
    proc = subprocess.Popen(scripted_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=server_env(tmp_path))
    try:
        c = RawClient(proc.stdout, proc.stdin, proc)
        c.request(1, "initialize", {"processId": None, "rootUri": None,
                                    "capabilities": {"general": {"positionEncodings": ["utf-8", "utf-16"]}}})
        assert c.answer(1)["result"]["capabilities"]["positionEncoding"] == "utf-8"
        c.notify("initialized", {})
        uri = (tmp_path / "accent.py").as_uri()
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                           "text": "café = 1\n"}})
        # "café = " is 8 bytes in UTF-8 (7 characters): the cursor after it is character 8
        c.request(2, "textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                                       "position": {"line": 0, "character": 8},
                                                       "context": {"triggerKind": 1}})
        item = c.answer(2)["result"]["items"][0]
        assert item["range"]["start"] == {"line": 0, "character": 8}
        c.request(3, "textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                                       "position": {"line": 0, "character": 10},
                                                       "context": {"triggerKind": 1}})
        assert c.answer(3)["error"]["code"] == -32602  # past the line's 9 bytes
    finally:
        proc.kill()
        proc.wait(5)
