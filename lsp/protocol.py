"""pygls's protocol, with an answer for every request the client can get wrong.

pygls logs and drops a message whose JSON or parameters do not parse; a client waiting on
that request would wait forever. Here the client gets an error answer instead: ParseError
(id null) for a body that is not JSON, InvalidRequest for an object that is not JSON-RPC, and
InvalidParams, with the request's id, for parameters of the wrong shape. `workspace/executeCommand`
runs the command as its own task, so `$/cancelRequest` reaches it (pygls' built-in runs it
one step removed, where a cancel only drops the answer and the work goes on).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Generator
from urllib.parse import unquote

from lsprotocol import types as t
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.workspace import TextDocument, Workspace

from .textutil import lsp_lines, offset_at, without_lone_surrogates

log = logging.getLogger("demi.lsp")


class LspTextDocument(TextDocument):
    """pygls's document with LSP's line breaks and LSP's reading of a change's range.

    pygls splits lines with str.splitlines, which also breaks at form feeds and U+2028, so an
    edit after one would land on the wrong line. Its ranged change also goes wrong at the edges:
    a character past the end of a line lands after the line break (or, on the last line, one
    character early), a backwards range duplicates text or drops the insertion, and a position
    inside a surrogate pair splits it. Here a range is read as editors write it (`offset_at`:
    past the line's end is the line's end, past the last line is the end of the text, a backwards
    range is the same range forwards). Lone surrogates, which JSON can carry and UTF-8 cannot,
    become U+FFFD (same UTF-16 length, so later positions still agree).
    """

    @property
    def lines(self) -> tuple[str, ...]:  # type: ignore[override]
        return lsp_lines(self.source)

    def apply_change(self, change: t.TextDocumentContentChangeEvent) -> None:
        clean = without_lone_surrogates(change.text)
        if clean is not change.text:
            log.warning("%s: a change with lone surrogates (not Unicode text): each became U+FFFD", self.uri)
            change.text = clean
        super().apply_change(change)

    def _apply_incremental_change(self, change: t.TextDocumentContentChangePartial) -> None:
        text, lines, enc = self.source, self.lines, self._position_codec.encoding
        start, end = change.range.start, change.range.end
        a = offset_at(text, start.line, start.character, enc, lines)
        b = offset_at(text, end.line, end.character, enc, lines)
        if b < a:
            a, b = b, a
        self._source = text[:a] + change.text + text[b:]


class DemiWorkspace(Workspace):
    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        if source is not None:
            clean = without_lone_surrogates(source)
            if clean is not source:
                log.warning("%s: opened with lone surrogates (not Unicode text): each became U+FFFD", doc_uri)
                source = clean
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self._position_codec)


class _Dropped:
    """What a message that was already answered with an error becomes: handle_message skips it."""

    jsonrpc = "dropped"


class DemiProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                self._send_error(data.get("id"), JsonRpcInvalidParams(
                    f"invalid params for {data.get('method')!r}: {_reason(exc)}"))
                return _Dropped()
            raise

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Dropped):
            return
        if isinstance(message, dict):  # JSON, but not JSON-RPC 2.0 (no "jsonrpc" member)
            log.warning("not a JSON-RPC message: %.200s", json.dumps(message)[:200])
            if "id" in message and isinstance(message.get("id"), (int, str)):
                self._send_error(message["id"], JsonRpcInvalidRequest("not a JSON-RPC 2.0 message"))
            return
        if getattr(message, "jsonrpc", None) != self.VERSION:
            if getattr(message, "id", None) is not None and getattr(message, "method", None):
                self._send_error(message.id, JsonRpcInvalidRequest(f"jsonrpc must be \"{self.VERSION}\""))
            return
        method = getattr(message, "method", None)
        if self._shutdown and method and method != t.EXIT and getattr(message, "id", None) is not None:
            # LSP: requests after shutdown get InvalidRequest (pygls would drop them unanswered)
            self._send_error(message.id, JsonRpcInvalidRequest(f"{method}: the server is shutting down"))
            return
        super().handle_message(message)

    def parse_error(self, exc: Exception) -> None:
        """A body that is not JSON: answer ParseError with a null id, as JSON-RPC says."""
        self._send_error(None, JsonRpcParseError(f"parse error: {exc}"))

    def _send_error(self, msg_id: Any, error: JsonRpcException) -> None:
        # a plain dict: the converter would drop a null id, which JSON-RPC requires here
        self._send_data({"jsonrpc": self.VERSION, "id": msg_id,
                         "error": {"code": error.code, "message": error.message}})

    @lsp_method(t.INITIALIZE)
    def lsp_initialize(self, params: t.InitializeParams) -> Any:
        result = yield from super().lsp_initialize(params)
        if self._workspace is not None and type(self._workspace) is Workspace:
            self._workspace.__class__ = DemiWorkspace  # documents are only created after initialize
        return result

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

    @lsp_method(t.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: t.ExecuteCommandParams) -> Any:
        run = getattr(self._server, "run_command", None)
        if run is None:
            raise JsonRpcInvalidParams(f"unknown command {params.command!r}")
        return await run(params)


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if cause is not None:
        try:
            from cattrs import transform_error

            return "; ".join(transform_error(cause)) or str(cause)
        except Exception:  # noqa: BLE001 - only the message's wording is at stake
            return str(cause)
    return str(exc) or type(exc).__name__
