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
from typing import Any

from lsprotocol import types as t
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method
from pygls.workspace import TextDocument, Workspace

from .textutil import lsp_lines

log = logging.getLogger("demi.lsp")


class LspTextDocument(TextDocument):
    """pygls's document with LSP's line breaks (pygls uses str.splitlines, which also breaks at
    form feeds and U+2028, so an incremental edit after one would land on the wrong line)."""

    @property
    def lines(self) -> tuple[str, ...]:  # type: ignore[override]
        return lsp_lines(self.source)


class DemiWorkspace(Workspace):
    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
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
