"""`demi-lsp`: Demi's language server (pygls 2, LSP 3.18 inline completion).

Threads: the asyncio loop (the protocol, debounce timers, every message sent to the client);
task threads (context, tree-sitter, post-processing, HTTP engines); and one model thread that
runs every step of the in-process model (the model runner, demi.assistant.runner). Nothing here builds a prompt or
touches a model: completions, explanations and refactors come from `demi.assistant`.

    demi-lsp                 # stdio (what editors start)
    demi-lsp --tcp 2087      # listen on 127.0.0.1:2087 for one client
    demi lsp --model DIR     # the same through the demi command

Besides LSP, the server answers two requests of its own: `demi/stats` (counters: model runs,
cache hits, cancellations, latencies) and, for debugging, `demi/documentText` ({uri} -> {uri,
version, languageId, text}, or null when that document is not open): the text the server holds,
so a test or a bug report can compare it with the editor's buffer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote

from lsprotocol import types as t
from pygls.exceptions import FeatureRequestError, JsonRpcException, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from demi.assistant.runner import EXIT_WAIT_S, RunCancelled
from demi.lsp.actions import COMMANDS, KIND_EXPLAIN, KIND_FIX, KIND_REFACTOR, Actions, RequestFailed
from demi.lsp.completion import HUGE_CHARS, CompletionService, Outcome, Snapshot, display_name, windowed
from demi.lsp.engine_host import EngineHost, EngineUnavailable
from demi.lsp.framing import FrameError, serve_stdio, serve_tcp
from demi.lsp.progress import Progress
from demi.lsp.protocol import DemiProtocol
from demi.lsp.settings import LspSettings, from_config, merge
from demi.lsp.textutil import advance, index_of_units, line_text, lsp_lines, units, word_before

log = logging.getLogger("demi.lsp")

STATUS = "demi/status"  # notification: {state, model, engine, server, latencyMs, ...}
STATS = "demi/stats"  # request: counters (model runs, cache hits, cancellations, latencies)
DOCUMENT_TEXT = "demi/documentText"  # request (debugging): {uri} -> the text the server holds for it
TASK_THREADS = 4


def _version() -> str:
    try:
        from demi import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return "0"


class DemiLanguageServer(LanguageServer):
    def __init__(
        self,
        base: LspSettings | None = None,
        engine_factory: Callable[[LspSettings], Any] | None = None,
        probe: bool = True,
    ):
        super().__init__(
            "demi-lsp",
            _version(),
            protocol_cls=DemiProtocol,
            text_document_sync_kind=t.TextDocumentSyncKind.Incremental,
        )
        self.base = base or LspSettings()
        self.settings = self.base
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool = ThreadPoolExecutor(TASK_THREADS, thread_name_prefix="demi-task")
        self.host = EngineHost(on_status=self._engine_status, factory=engine_factory, probe=probe)
        from demi.assistant.context import RecentFiles

        self.recent = RecentFiles()
        self.completions = CompletionService(
            self.host, self.pool, lambda: self.settings, self.recent, on_result=self._completion_done
        )
        self.actions = Actions(self)
        self._reported_error: str | None = None
        self._last_latency: float | None = None
        self._closed = False

    # -- settings -----------------------------------------------------------------------------------

    def apply_settings(self, update: Any, source: str) -> None:
        new, problems = merge(self.settings, update)
        for p in problems:
            self.log_message(f"{source}: {p}", t.MessageType.Warning)
        if _answer_key(new) != _answer_key(self.settings):
            self.completions.cache.clear()  # suggestions made under other settings are not served again
        self.settings = new
        self.completions.debouncer.configure(
            new.debounce_min_ms / 1000,
            new.debounce_max_ms / 1000,
            new.debounce_ms / 1000 if new.debounce_ms is not None else None,
        )
        if not self._closed:
            self.host.configure(new)

    async def pull_configuration(self) -> None:
        caps = getattr(self.protocol, "client_capabilities", None)
        ws = getattr(caps, "workspace", None)
        if ws is None or not ws.configuration:
            return
        try:
            items = await asyncio.wait_for(
                self.workspace_configuration_async(t.ConfigurationParams(items=[t.ConfigurationItem(section="demi")])),
                5.0,
            )
        except Exception:  # noqa: BLE001 - a client that cannot answer keeps the settings it gave
            log.debug("workspace/configuration failed", exc_info=True)
            return
        if items and isinstance(items[0], dict) and items[0]:
            self.apply_settings(items[0], "workspace/configuration")

    # -- messages to the client (always from the loop thread) ---------------------------------------

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is None or self._closed:
            return
        try:
            if _running_loop() is loop:
                fn(*args)
            else:
                loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed
            pass

    def log_message(self, text: str, kind: t.MessageType = t.MessageType.Info) -> None:
        self._on_loop(lambda: self.window_log_message(t.LogMessageParams(type=kind, message=text)))

    def status(self) -> dict[str, Any]:
        st = self.host.status()
        d = self.completions.debouncer
        st.update(
            {
                "latencyMs": round(d.latency_s * 1000, 1) if d.latency_s is not None else None,
                "lastLatencyMs": round(self._last_latency * 1000, 1) if self._last_latency is not None else None,
                "runs": self.host.runs_started,
            }
        )
        return st

    def send_status(self) -> None:
        if self.settings.status_notifications and not self._closed:
            self._on_loop(lambda: self.protocol.notify(STATUS, self.status()))

    def _engine_status(self, st: dict[str, Any]) -> None:
        self.send_status()
        if st["state"] == "error" and st.get("message") != self._reported_error:
            self._reported_error = st.get("message")
            text = f"Demi: no model: {st.get('message')}"
            self._on_loop(lambda: self.window_show_message(t.ShowMessageParams(type=t.MessageType.Error, message=text)))

    def _completion_done(self, seconds: float) -> None:
        self._last_latency = seconds
        self.send_status()

    # -- documents ----------------------------------------------------------------------------------

    def open_document(self, uri: str) -> Any:
        return self.workspace.text_documents.get(unquote(uri))

    def display_name(self, uri: str, doc: Any) -> str:
        return display_name(
            uri, doc.path if uri.startswith("file:") else None, self.workspace.root_path, doc.language_id
        )

    def snapshot(self, uri: str, position: t.Position) -> tuple[Snapshot, Any]:
        doc = self.open_document(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: open it first (textDocument/didOpen)")
        text = doc.source
        lines = lsp_lines(text)
        count = len(lines) + (1 if not lines or lines[-1].endswith(("\n", "\r")) else 0)
        if position.line >= count:
            raise JsonRpcInvalidParams(
                f"position line {position.line} is past the end of the document (0-based lines 0-{count - 1})"
            )
        current = line_text(lines[position.line]) if position.line < len(lines) else ""
        enc = self.workspace.position_encoding
        col = index_of_units(current, position.character, enc)
        if col is None:
            raise JsonRpcInvalidParams(
                f"position character {position.character} is past the end of line "
                f"{position.line} ({units(current, enc)} {enc or 'utf-16'} code units)"
            )
        offset = sum(len(x) for x in lines[: position.line]) + col
        return Snapshot(uri, doc.version, text, offset, doc.language_id, self.display_name(uri, doc)), doc

    def _version_of(self, uri: str) -> Callable[[], int | None]:
        def now() -> int | None:
            doc = self.open_document(uri)
            return doc.version if doc is not None else None

        return now

    def supports_document_changes(self) -> bool:
        caps = getattr(self.protocol, "client_capabilities", None)
        ws = getattr(caps, "workspace", None)
        we = getattr(ws, "workspace_edit", None) if ws is not None else None
        return bool(we is not None and we.document_changes)

    # -- completions --------------------------------------------------------------------------------

    async def _complete(
        self, uri: str, position: t.Position, invoked: bool, selected: t.SelectedCompletionInfo | None = None
    ) -> tuple[Outcome, Snapshot]:
        snap, doc = self.snapshot(uri, position)
        if not self.settings.enabled_for(doc.language_id):
            return Outcome("", 0, "disabled"), snap
        if selected is not None:  # the editor's popup has an item selected: complete as if it were inserted
            start = self.snapshot(uri, selected.range.start)[0].offset
            end = self.snapshot(uri, selected.range.end)[0].offset
            text = snap.text[:start] + selected.text + snap.text[end:]
            snap = Snapshot(uri, snap.version, text, start + len(selected.text), snap.language_id, snap.name)
        snap = windowed(snap)
        try:
            return await self.completions.complete(snap, invoked, self._version_of(uri)), snap
        except RunCancelled:
            raise asyncio.CancelledError() from None
        except EngineUnavailable as exc:
            if invoked:
                raise RequestFailed(f"Demi has no model: {exc}") from None
            return Outcome("", 0, "unavailable"), snap
        except JsonRpcException:
            raise
        except Exception as exc:  # noqa: BLE001 - a DemiError from the task: answer, never go silent
            self.completions.stats.errors += 1
            from demi.assistant.errors import DemiUserError

            if isinstance(exc, DemiUserError):
                raise JsonRpcInvalidParams(str(exc)) from None
            log.exception("completion failed")
            raise RequestFailed(f"completion failed: {exc}") from None

    async def inline_completion(self, params: t.InlineCompletionParams) -> t.InlineCompletionList:
        ctx = params.context
        invoked = ctx is None or ctx.trigger_kind == t.InlineCompletionTriggerKind.Invoked
        selected = ctx.selected_completion_info if ctx is not None else None
        outcome, snap = await self._complete(params.text_document.uri, params.position, invoked, selected)
        if not outcome.text:
            return t.InlineCompletionList(items=[])
        enc = self.workspace.position_encoding
        end = advance(params.position, snap.after[: outcome.replace], enc)
        if selected is not None:
            item = t.InlineCompletionItem(
                insert_text=selected.text + outcome.text, range=t.Range(selected.range.start, end)
            )
        else:
            item = t.InlineCompletionItem(insert_text=outcome.text, range=t.Range(params.position, end))
        return t.InlineCompletionList(items=[item])

    async def completion(self, params: t.CompletionParams) -> t.CompletionList:
        ctx = params.context
        invoked = ctx is None or ctx.trigger_kind == t.CompletionTriggerKind.Invoked
        outcome, snap = await self._complete(params.text_document.uri, params.position, invoked)
        if not outcome.text.strip():
            return t.CompletionList(is_incomplete=True, items=[])
        enc = self.workspace.position_encoding
        word = word_before(snap.before)
        start = t.Position(params.position.line, params.position.character - units(word, enc))
        end = advance(params.position, snap.after[: outcome.replace], enc)
        new_text = word + outcome.text
        first = new_text.strip().split("\n", 1)[0]
        label = first if len(first) <= 60 else first[:59] + "…"
        lang = snap.language_id or ""
        if self._markdown_docs():
            docs: Any = t.MarkupContent(kind=t.MarkupKind.Markdown, value=f"```{lang}\n{new_text}\n```")
        else:
            docs = new_text
        item = t.CompletionItem(
            label=label or new_text.strip()[:60],
            kind=t.CompletionItemKind.Text,
            detail="Demi",
            documentation=docs,
            filter_text=new_text,
            sort_text="0",
            preselect=True,
            insert_text_format=t.InsertTextFormat.PlainText,
            text_edit=t.TextEdit(range=t.Range(start, end), new_text=new_text),
        )
        return t.CompletionList(is_incomplete=True, items=[item])

    def _markdown_docs(self) -> bool:
        caps: Any = getattr(self.protocol, "client_capabilities", None)
        try:
            formats = caps.text_document.completion.completion_item.documentation_format or []
        except AttributeError:
            return False
        return t.MarkupKind.Markdown in formats

    # -- commands and history -----------------------------------------------------------------------

    async def run_command(self, params: t.ExecuteCommandParams) -> Any:
        return await self.actions.run(params)

    def data_dir(self) -> Path:
        if self.settings.data_dir:
            return Path(self.settings.data_dir).expanduser()
        from demi.assistant.config import data_dir

        return data_dir(None)

    def record_history(
        self,
        kind: str,
        title: str,
        model: str,
        prompt: str,
        answer: str,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        meta: dict[str, Any],
    ) -> None:
        if not self.settings.history:
            return

        def write() -> None:
            from demi.assistant.store import Store, StoreError

            try:
                with Store.open_default(self.data_dir()) as store:
                    store.record(
                        kind,
                        title,
                        model,
                        prompt,
                        answer,
                        prompt_tokens,
                        completion_tokens,
                        seconds,
                        {**meta, "front_end": "lsp"},
                    )
            except (StoreError, OSError) as exc:
                self.log_message(f"not saved to history: {exc}", t.MessageType.Warning)

        self.pool.submit(write)

    def stats(self) -> dict[str, Any]:
        c = self.completions
        return {
            "completions": c.stats.as_dict(),
            "cacheHits": c.cache.hits,
            "runsStarted": self.host.runs_started,
            "runsSkipped": self.host.runs_skipped,
            "modelSteps": self.host.steps,
            # prompt tokens of in-process runs, and how many of them came from the prefix cache
            "promptTokens": self.host.runner.counts["prompt_tokens"],
            "cachedTokens": self.host.runner.counts["cached_tokens"],
            "shiftedTokens": self.host.runner.counts["shifted_tokens"],
            "debounce": c.debouncer.as_dict(),
            "status": self.status(),
            "handlersInFlight": len(self.protocol._request_futures),
            "settings": self.settings.as_dict(),
        }

    def document_text(self, params: Any) -> dict[str, Any] | None:
        """demi/documentText: the server's copy of a document, to compare with the editor's."""
        uri = params.get("uri") if isinstance(params, dict) else getattr(params, "uri", None)
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams(f'{DOCUMENT_TEXT} takes {{"uri": string}}')
        doc = self.open_document(uri)
        if doc is None:
            return None
        return {"uri": uri, "version": doc.version, "languageId": doc.language_id, "text": doc.source}

    # -- lifecycle ----------------------------------------------------------------------------------

    def report_server_error(self, error: Exception, source: Any) -> None:
        """A body that is not JSON, or a frame that cannot be read, gets a ParseError answer; other
        out-of-band errors go to the log (pygls would pop them up in the editor)."""
        if isinstance(error, (json.JSONDecodeError, FrameError)):
            cast(DemiProtocol, self.protocol).parse_error(error)
            return
        if source is FeatureRequestError:
            return  # already answered to the request
        log.warning("%s: %s", getattr(source, "__name__", source), error)
        self.log_message(f"demi-lsp: {error}", t.MessageType.Warning)

    # -- transports: pygls's, with a reader that recovers from bad frames (framing.py) ----------------

    def _start_io_async(self, stdin: Any = None, stdout: Any = None) -> None:
        serve_stdio(self, stdin, stdout)

    def start_tcp(self, host: str, port: int) -> None:
        serve_tcp(self, host, port)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.completions.cancel_all()
        self.host.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _answer_key(s: LspSettings) -> tuple[Any, ...]:
    """The settings a completion's text depends on."""
    return (
        s.engine_key(),
        s.max_tokens,
        s.context_tokens,
        s.target_latency_ms,
        s.temperature,
        s.latency_budget_ms,
        s.workspace_cache,
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def build_server(
    base: LspSettings | None = None, engine_factory: Callable[[LspSettings], Any] | None = None, probe: bool = True
) -> DemiLanguageServer:
    server = DemiLanguageServer(base, engine_factory, probe)

    @server.feature(t.INITIALIZE)
    def initialize(ls: DemiLanguageServer, params: t.InitializeParams) -> None:
        ls.loop = _running_loop()
        ls.apply_settings(params.initialization_options, "initializationOptions")

    @server.feature(t.INITIALIZED)
    async def initialized(ls: DemiLanguageServer, params: t.InitializedParams) -> None:
        ls.loop = _running_loop()
        ls.send_status()
        await ls.pull_configuration()
        if not ls.host.ready_future.done():
            async with Progress(ls, "Demi: loading the model", None, None, cancellable=False):
                try:
                    await asyncio.wrap_future(ls.host.ready_future)
                except Exception:  # noqa: BLE001 - reported through demi/status and showMessage
                    pass

    @server.feature(t.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DemiLanguageServer, params: t.DidChangeConfigurationParams) -> None:
        if params.settings:
            ls.apply_settings(params.settings, "workspace/didChangeConfiguration")
        else:  # a pull-model client: the change is only a hint to ask
            await ls.pull_configuration()

    @server.feature(t.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DemiLanguageServer, params: t.DidOpenTextDocumentParams) -> None:
        ls.completions.closed(params.text_document.uri)  # a new life for this uri: nothing carried over
        doc = ls.open_document(params.text_document.uri)
        if doc is not None:
            ls.recent.add(ls.display_name(doc.uri, doc), doc.source)

    @server.feature(t.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DemiLanguageServer, params: t.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.completions.edited(uri)
        doc = ls.open_document(uri)
        if doc is not None:
            name = ls.display_name(doc.uri, doc)
            ls.recent.add(name, doc.source)
            if ls.settings.enabled_for(doc.language_id) and len(doc.source) <= HUGE_CHARS:
                # parse it for the completion that will follow (a huge one is parsed by the window)
                ls.completions.parse_soon(Snapshot(uri, doc.version, doc.source, 0, doc.language_id, name))

    @server.feature(t.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DemiLanguageServer, params: t.DidCloseTextDocumentParams) -> None:
        ls.completions.closed(params.text_document.uri)

    @server.feature(t.TEXT_DOCUMENT_INLINE_COMPLETION, t.InlineCompletionOptions())
    async def inline_completion(ls: DemiLanguageServer, params: t.InlineCompletionParams) -> t.InlineCompletionList:
        return await ls.inline_completion(params)

    @server.feature(t.TEXT_DOCUMENT_COMPLETION, t.CompletionOptions(resolve_provider=False))
    async def completion(ls: DemiLanguageServer, params: t.CompletionParams) -> t.CompletionList:
        return await ls.completion(params)

    @server.feature(
        t.TEXT_DOCUMENT_CODE_ACTION,
        t.CodeActionOptions(code_action_kinds=[KIND_REFACTOR, KIND_EXPLAIN, KIND_FIX], resolve_provider=True),
    )
    def code_action(ls: DemiLanguageServer, params: t.CodeActionParams) -> list[t.CodeAction]:
        return ls.actions.code_actions(params)

    @server.feature(t.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls: DemiLanguageServer, params: t.CodeAction) -> t.CodeAction:
        return await ls.actions.resolve(params)

    @server.feature(t.TEXT_DOCUMENT_HOVER)
    async def hover(ls: DemiLanguageServer, params: t.HoverParams) -> t.Hover | None:
        return await ls.actions.hover(params)  # explanations kept for editors that cannot open them

    for name in COMMANDS:  # advertised in executeCommandProvider; DemiProtocol dispatches to run_command
        server.command(name)(lambda ls, *args: None)

    @server.feature(STATS)
    def stats(ls: DemiLanguageServer, params: Any = None) -> dict[str, Any]:
        return ls.stats()

    @server.feature(DOCUMENT_TEXT)
    def document_text(ls: DemiLanguageServer, params: Any = None) -> dict[str, Any] | None:
        return ls.document_text(params)

    @server.feature(t.SHUTDOWN)
    def shutdown(ls: DemiLanguageServer, params: Any = None) -> None:
        ls.close()

    return server


# -- command line ---------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser, engine_flags: bool = True) -> None:
    p.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", type=int, metavar="PORT", default=None, help="listen on PORT instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="address for --tcp (default 127.0.0.1)")
    p.add_argument("--log-file", default=None, help="write the server's log here (stderr by default)")
    if engine_flags:
        p.add_argument(
            "--model",
            "-m",
            default=None,
            help="model name, directory or hub id "
            "(default: the editor's settings, $DEMI_MODEL, the config file, demi-tiny)",
        )
        p.add_argument(
            "--server",
            default=None,
            metavar="URL",
            help="an OpenAI-compatible server (demi serve) instead of the in-process model",
        )
        p.add_argument("--quant", default=None, choices=["none", "int8", "int4", "nf4", "auto"])
        p.add_argument("--device", default=None)
        p.add_argument("--context", type=int, default=None)
        p.add_argument("--debug", action="store_true", help="debug logging")


def base_settings(args: argparse.Namespace) -> LspSettings:
    """Config file and DEMI_* variables, then the command line's engine flags."""
    from demi.assistant.config import ConfigFileError, load_config

    try:
        base = from_config(load_config())
    except ConfigFileError as exc:
        print(f"demi-lsp: warning: {exc}; using defaults", file=sys.stderr)
        base = LspSettings()
    flags = {k: getattr(args, k, None) for k in ("model", "server", "quant", "device", "context")}
    update = {k: v for k, v in flags.items() if v is not None}
    if update:
        base, _ = merge(base, update)
    return base


def serve(args: argparse.Namespace, engine_factory: Callable[[LspSettings], Any] | None = None) -> int:
    level = logging.DEBUG if getattr(args, "debug", False) else logging.WARNING
    handler: logging.Handler = (
        logging.FileHandler(args.log_file) if args.log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s demi-lsp %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pygls").setLevel(logging.DEBUG if level == logging.DEBUG else logging.ERROR)
    server = build_server(
        base_settings(args), engine_factory, probe=os.environ.get("DEMI_LSP_NO_PROBE", "") in ("", "0")
    )
    _preload()
    try:
        if args.tcp is not None:
            if not 0 <= args.tcp <= 65535:
                print(f"demi-lsp: --tcp must be a port between 0 and 65535, got {args.tcp}", file=sys.stderr)
                return 2
            server.start_tcp(args.host, args.tcp)
        else:
            server.start_io()
    finally:
        server.close()
    code = 0 if server.protocol._shutdown or args.tcp is not None else 1
    if not server.host.wait_stopped(EXIT_WAIT_S):
        # the model thread is still inside torch: finalizing the interpreter now would stop it
        # there and abort the process, so end it without finalizing (nothing of the user's is open)
        log.warning("the model thread did not stop within %.0f s: exiting without cleanup", EXIT_WAIT_S)
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(ValueError, OSError):  # stdout is closed after `exit`
                stream.flush()
        os._exit(code)
    return code


def _preload() -> None:
    """Import the session layer (and torch, through it) in the background while the client starts."""
    import threading

    def run() -> None:
        started = time.monotonic()
        try:
            import demi.assistant.complete  # noqa: F401
            import demi.assistant.engines  # noqa: F401
        except Exception:  # noqa: BLE001 - the first request will report it
            log.debug("preload failed", exc_info=True)
        log.debug("preloaded in %.2fs", time.monotonic() - started)

    threading.Thread(target=run, name="demi-preload", daemon=True).start()


def main(argv: list[str] | None = None, engine_factory: Callable[[LspSettings], Any] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="demi-lsp",
        description="Demi's language server: inline completion (LSP 3.18), "
        "completion, code actions to explain and refactor.",
    )
    add_arguments(p)
    p.add_argument("--version", action="version", version=f"demi-lsp {_version()}")
    args = p.parse_args(argv)
    return serve(args, engine_factory)


if __name__ == "__main__":
    raise SystemExit(main())
