"""pygls's protocol, with an answer for every request the client can get wrong.

pygls logs and drops a message whose JSON or parameters do not parse; a client waiting on
that request would wait forever. Here the client gets an error answer instead: ParseError
(id null) for a body that is not JSON, InvalidRequest for an object that is not JSON-RPC (a
method that is not a string, an id that is not a number or a string, a batch: LSP has none),
and InvalidParams, with the request's id, for parameters of the wrong shape. A request before
`initialize` gets ServerNotInitialized (pygls failed it with a traceback, as InternalError), a
second `initialize` InvalidRequest (pygls started a new workspace, losing every open document).
Strings and integers in params must be JSON strings and integers (cattrs would coerce them).
`workspace/executeCommand` runs the command as its own task, so `$/cancelRequest` reaches it
(pygls' built-in runs it one step removed, where a cancel only drops the answer and the work
goes on). Reading frames off the stream, and recovering from bad ones, is framing.py's job.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Generator
from typing import Any
from urllib.parse import unquote

from lsprotocol import types as t
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.workspace import Workspace

from demi.lsp.documents import DemiWorkspace

log = logging.getLogger("demi.lsp")


class _Dropped:
    """What a message that was already answered with an error becomes: handle_message skips it."""

    jsonrpc = "dropped"


class DemiProtocol(LanguageServerProtocol):
    _initialize_seen = False

    def __init__(self, server: Any, converter: Any):
        super().__init__(server, converter)
        self.fm.add_builtin_feature(t.WORKSPACE_EXECUTE_COMMAND, self.execute_command)
        strict_scalars(converter)

    def structure_message(self, data: dict[str, Any]) -> Any:
        if "jsonrpc" in data and "id" in data and not ({"method", "result", "error"} & data.keys()):
            log.warning(
                "a message with an id but no method, result or error: ignored: %.200s", json.dumps(data, default=str)
            )
            return _Dropped()
        if "jsonrpc" in data and "method" in data:  # (pygls calls this for every JSON object)
            problem = _request_problem(data)
            if problem is not None:
                log.warning("%s: %.200s", problem, json.dumps(data, default=str))
                if "id" in data:
                    msg_id = data["id"] if _valid_id(data["id"]) else None
                    self._send_error(msg_id, JsonRpcInvalidRequest(problem))
                return _Dropped()
            if "params" not in data:  # optional in JSON-RPC; pygls's untyped messages require it
                data = {**data, "params": None}
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                self._send_error(
                    data.get("id"), JsonRpcInvalidParams(f"invalid params for {data.get('method')!r}: {_reason(exc)}")
                )
                return _Dropped()
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Dropped):
            return
        if isinstance(message, list):  # a JSON-RPC batch: LSP has none
            log.warning("a batch of %d messages: LSP has no batches", len(message))
            for item in message:
                msg_id = item.get("id") if isinstance(item, dict) else getattr(item, "id", None)
                if msg_id is not None and _valid_id(msg_id) and not isinstance(item, _Dropped):
                    self._send_error(msg_id, JsonRpcInvalidRequest("LSP has no batches: send one message at a time"))
            return
        if isinstance(message, dict):  # JSON, but not JSON-RPC 2.0 (no "jsonrpc" member)
            log.warning("not a JSON-RPC message: %.200s", json.dumps(message, default=str)[:200])
            if "id" in message and _valid_id(message.get("id")):
                self._send_error(message["id"], JsonRpcInvalidRequest("not a JSON-RPC 2.0 message"))
            return
        if not hasattr(message, "jsonrpc"):  # a number, a string, null
            log.warning("not a JSON-RPC message: %.200s", json.dumps(message, default=str))
            self._send_error(None, JsonRpcInvalidRequest("a message must be a JSON object"))
            return
        if getattr(message, "jsonrpc", None) != self.VERSION:
            if getattr(message, "id", None) is not None and getattr(message, "method", None):
                self._send_error(message.id, JsonRpcInvalidRequest(f'jsonrpc must be "{self.VERSION}"'))
            return
        method = getattr(message, "method", None)
        is_request = method is not None and getattr(message, "id", None) is not None
        if method == t.INITIALIZE and is_request:
            if self._initialize_seen:
                self._send_error(message.id, JsonRpcInvalidRequest("initialize was sent already"))
                return
            self._initialize_seen = True
        elif method and not self._initialize_seen and method != t.EXIT:
            if is_request:
                self._send_error(message.id, JsonRpcServerNotInitialized(f"{method}: send initialize first"))
            else:
                log.warning("%s before initialize: ignored", method)
            return
        if self._shutdown and method and method != t.EXIT and is_request:
            # LSP: requests after shutdown get InvalidRequest (pygls would drop them unanswered)
            self._send_error(message.id, JsonRpcInvalidRequest(f"{method}: the server is shutting down"))
            return
        super().handle_message(message)

    def parse_error(self, exc: Exception) -> None:
        """A body that is not JSON: answer ParseError with a null id, as JSON-RPC says."""
        self._send_error(None, JsonRpcParseError(f"parse error: {exc}"))

    def _send_error(self, msg_id: Any, error: JsonRpcException) -> None:
        # a plain dict: the converter would drop a null id, which JSON-RPC requires here
        self._send_data(
            {"jsonrpc": self.VERSION, "id": msg_id, "error": {"code": error.code, "message": error.message}}
        )

    @lsp_method(t.INITIALIZE)
    def lsp_initialize(self, params: t.InitializeParams) -> Any:
        result = yield from super().lsp_initialize(params)
        if self._workspace is not None and type(self._workspace) is Workspace:
            self._workspace.__class__ = DemiWorkspace  # documents are only created after initialize
        return result

    def _execute_handler(self, msg_id: Any, handler: Any, callback: Any, args: Any = None, kwargs: Any = None) -> None:
        """pygls files each handler's future under its message id, and only a request's answer
        takes it out again: the future of every notification handled by a generator or a
        coroutine (didOpen, didChange, didClose: one per keystroke) stayed for good, about 1.4 KB
        each. Here such a future leaves once it is done."""
        super()._execute_handler(msg_id, handler, callback, args, kwargs)
        if getattr(callback, "func", None) == self._send_handler_result:
            return  # a request: its answer pops it
        future = self._request_futures.get(msg_id)
        if future is None:
            return
        if future.done():
            self._request_futures.pop(msg_id, None)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None

        def forget(_: Any) -> None:  # later, on the loop: shutdown iterates the dict while it cancels
            if loop is None:
                self._request_futures.pop(msg_id, None)
                return
            try:
                loop.call_soon_threadsafe(self._request_futures.pop, msg_id, None)
            except RuntimeError:  # the loop has closed
                pass

        future.add_done_callback(forget)

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        """pygls logs a traceback for every error answer. An error the handler chose (invalid
        params, a failed request) is answered with a one-line log, so tracebacks in the log are
        the server's own faults and nothing else."""
        if not future.cancelled() and isinstance(future.exception(), JsonRpcException):
            exc = future.exception()
            self._request_futures.pop(msg_id, None)
            log.info("request %s answered with error %s: %s", msg_id, exc.code, exc.message)
            self._send_response(msg_id, error=exc.to_response_error())
            return
        super()._send_handler_result(future, msg_id=msg_id)

    def _handle_response(self, msg_id: Any, result: Any = None, error: Any = None) -> None:
        """The client's answer to a request of ours that nobody waits for any more (the request
        that needed it was cancelled, which cancelled this too): dropped with a debug line. pygls
        would set a result on the cancelled future and log an InvalidStateError traceback."""
        future = self._request_futures.get(msg_id)
        if future is not None and future.done():
            self._request_futures.pop(msg_id, None)
            log.debug("answer to %s came after it was cancelled: dropped", msg_id)
            return
        super()._handle_response(msg_id, result, error)

    @lsp_method(t.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: t.DidChangeTextDocumentParams) -> Generator[Any, Any, None]:
        """A change to a document that is not open is a client's mistake: a warning, not a KeyError."""
        uri = params.text_document.uri
        if self.workspace.text_documents.get(unquote(uri)) is None:
            log.warning("textDocument/didChange for %s, which is not open: ignored", uri)
            return
        yield from super().lsp_text_document__did_change(params)

    async def execute_command(self, params: t.ExecuteCommandParams) -> Any:
        """workspace/executeCommand as a coroutine, its own task (pygls' built-in, a generator, is
        registered in its place in __init__: an override would not have the built-in's type)."""
        run = getattr(self._server, "run_command", None)
        if run is None:
            raise JsonRpcInvalidParams(f"unknown command {params.command!r}")
        return await run(params)


def strict_scalars(converter: Any) -> None:
    """Strings and integers in params must be JSON strings and integers. cattrs would call str()
    or int() on anything: a document's text given as 5 or as an object became "5" or "{...}", a
    line given as "3" or 2.7 became 3 or 2. Now they are InvalidParams."""

    # A hook for a class also catches its subclasses: lsprotocol's enums (DiagnosticSeverity is an
    # IntEnum, MarkupKind a str Enum) are made from the checked value, so they stay enums (a plain int
    # in a Diagnostic read from a request could not be written back in a reply).
    def structure_str(value: Any, cls: Any) -> str:
        if isinstance(value, str):
            return value if cls is str else cls(value)
        raise TypeError(f"expected a string, got {type(value).__name__}")

    def structure_int(value: Any, cls: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value if cls is int else cls(value)
        raise TypeError(f"expected an integer, got {type(value).__name__}")

    def structure_bool(value: Any, _: Any) -> bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true or false, got {type(value).__name__}")

    converter.register_structure_hook(str, structure_str)
    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(bool, structure_bool)  # (the int hook would catch bool, a subclass)


def _valid_id(msg_id: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null (not booleans, objects or arrays)."""
    return msg_id is None or (isinstance(msg_id, (int, float, str)) and not isinstance(msg_id, bool))


def _request_problem(data: dict[str, Any]) -> str | None:
    """Why `data` is not a valid JSON-RPC request or notification, or None."""
    if not isinstance(data["method"], str):
        return "the method must be a string"
    if "id" in data and not _valid_id(data["id"]):
        return "an id must be a number or a string"
    return None  # the params are checked against the method's type (InvalidParams)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if cause is not None:
        try:
            from cattrs import transform_error

            return "; ".join(transform_error(cause)) or str(cause)
        except Exception:  # only the message's wording is at stake
            return str(cause)
    return str(exc) or type(exc).__name__
