"""Code actions "Demi: Explain" and "Demi: Refactor...", the commands behind them, and the hover
that shows an explanation to an editor that cannot open one.

Listing code actions is cheap (the editor asks on every cursor move): titles and a `data`
payload only. `codeAction/resolve` finds the target (the selection's lines, else the symbol at
the cursor, else the file) with tree-sitter and attaches the command. The commands do the
model work on a task thread at priority 1, so completions keep flowing meanwhile:

- `demi.explain` (uri, optional range) returns the Markdown and writes it to a file under the data
  dir; where the client supports `window/showDocument` it opens that file, otherwise (Helix
  25.07) the explanation is kept for `textDocument/hover` over what it explains, and a
  `window/showMessage` says so;
- `demi.refactor` (uri, range, instruction) asks for an instruction with
  `window/showMessageRequest` when none is given, validates the model's rewrite, and applies it
  with `workspace/applyEdit` (so it lands in the editor's undo history); a rewrite computed for
  an older version of the document is never applied. A client that cannot ask (no
  `window.showMessage` capability, as Helix 25.07) is offered one code action per suggested
  instruction instead of "Refactor...", and hears how each command ended through
  `window/showMessage` (such a client drops a command's answer and error).
- `demi.fix` (uri, a diagnostic's range, its message) is "Fix with Demi", the quick fix offered
  when the editor sends diagnostics with the request: the function around the diagnostic's line
  rewritten by the model (`assistant.fix`, validated like a refactor) and applied the same way.

Each shows `$/progress` once it runs past half a second; cancelling it, or `$/cancelRequest`,
stops the model at its next step.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from lsprotocol import types as t
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from demi.assistant.runner import RunCancelled, set_priority
from demi.lsp.progress import Progress
from demi.lsp.textutil import lsp_lines, offset_at, replace_changed_lines

log = logging.getLogger("demi.lsp")

EXPLAIN, REFACTOR, FIX = "demi.explain", "demi.refactor", "demi.fix"
COMMANDS = (EXPLAIN, REFACTOR, FIX)
KIND_EXPLAIN = t.CodeActionKind.Empty
KIND_REFACTOR = t.CodeActionKind.RefactorRewrite
KIND_FIX = t.CodeActionKind.QuickFix  # "Fix with Demi", offered on the diagnostics the editor sends
REQUEST_FAILED = -32803
# Offered by window/showMessageRequest when demi.refactor comes without an instruction, and as one
# code action each to a client that cannot ask.
SUGGESTED_INSTRUCTIONS = (
    "Add type hints",
    "Add a docstring",
    "Simplify it",
    "Handle errors explicitly",
    "Use clearer names",
)
KEPT_EXPLANATIONS = 32  # explanations kept for hover, over all documents (the oldest go first)


class RequestFailed(JsonRpcException):
    CODE = REQUEST_FAILED
    MESSAGE = "Request Failed"


@dataclass
class Target:
    """What a command works on, in the assistant's terms."""

    uri: str
    doc: Any  # demi.assistant.document.Document
    version: int | None
    symbol: str | None = None
    lines: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        if self.symbol:
            return f"`{self.symbol}`"
        if self.lines:
            a, b = self.lines
            return f"line {a}" if a == b else f"lines {a}-{b}"
        return Path(self.doc.name).name


class Captured(NamedTuple):
    """An open document's text, display name and version at one moment."""

    text: str
    name: str
    version: int | None


class Explained(NamedTuple):
    """An explanation kept for hover: the symbol it is about (found again by name, so edits above
    it do not lose it) or else its 1-based lines, and the Markdown."""

    uri: str
    symbol: str | None
    lines: tuple[int, int]
    markdown: str


_NOW = object()  # read the document when called


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _kind(kind: Any) -> str:
    return str(getattr(kind, "value", kind))


# -- arguments ---------------------------------------------------------------------------------------


def _range(value: Any) -> t.Range | None:
    if value is None:
        return None
    if isinstance(value, t.Range):
        return value
    try:
        s, e = value["start"], value["end"]
        r = t.Range(t.Position(int(s["line"]), int(s["character"])), t.Position(int(e["line"]), int(e["character"])))
    except (KeyError, TypeError, ValueError):
        raise JsonRpcInvalidParams("range must be {start: {line, character}, end: {line, character}}") from None
    if min(r.start.line, r.start.character, r.end.line, r.end.character) < 0:
        raise JsonRpcInvalidParams("range positions must not be negative")
    if (r.end.line, r.end.character) < (r.start.line, r.start.character):
        raise JsonRpcInvalidParams("range ends before it starts")
    return r


def _plain(value: Any) -> Any:
    """Command arguments as plain JSON values (pygls may hand over attrs objects)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "__attrs_attrs__"):
        from lsprotocol.converters import get_converter

        return get_converter().unstructure(value)
    if hasattr(value, "_asdict"):  # a namedtuple from a generic JSON object
        return {k: _plain(v) for k, v in value._asdict().items()}
    return value


def parse_arguments(arguments: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """[uri, range, ...] or [{uri, range, ...}] as a dict."""
    args = _plain(list(arguments or []))
    if len(args) == 1 and isinstance(args[0], dict):
        out = dict(args[0])
    else:
        if len(args) > len(names):
            raise JsonRpcInvalidParams(f"expected at most {len(names)} arguments ({', '.join(names)}), got {len(args)}")
        out = dict(zip(names, args))
    if not isinstance(out.get("uri"), str) or not out["uri"]:
        raise JsonRpcInvalidParams(f"the first argument must be the document's uri ({', '.join(names)})")
    return out


# -- the service --------------------------------------------------------------------------------------


class Actions:
    def __init__(self, server: Any):
        self.ls = server
        self.explained: OrderedDict[tuple[str, str | None, tuple[int, int]], Explained] = OrderedDict()

    # what the client can do ------------------------------------------------------------------------

    def _window(self) -> Any:
        caps = getattr(self.ls.protocol, "client_capabilities", None)
        return getattr(caps, "window", None)

    def can_show_documents(self) -> bool:
        """The client opens a file on `window/showDocument` (VS Code, Neovim with Demi's plugin)."""
        show = getattr(self._window(), "show_document", None)
        return bool(show is not None and show.support)

    def can_ask(self) -> bool:
        """The client answers `window/showMessageRequest` (Helix 25.07 does not)."""
        return getattr(self._window(), "show_message", None) is not None

    def tell(self, text: str, kind: t.MessageType = t.MessageType.Info) -> None:
        self.ls.window_show_message(t.ShowMessageParams(type=kind, message=text))

    # documents -------------------------------------------------------------------------------------

    def capture(self, uri: str) -> Captured | None:
        """The open document's text as it is now (None when not open). Called on the loop when a
        request comes in, so an edit or a close that follows it does not change what it is about."""
        open_doc = self.ls.open_document(uri)
        if open_doc is None:
            return None
        return Captured(open_doc.source, self.ls.display_name(uri, open_doc), open_doc.version)

    def document(self, uri: str, captured: Captured | None | object = _NOW) -> tuple[Any, int | None]:
        """The assistant's Document for `uri`: the editor's text when open, else the file on disk."""
        from demi.assistant.document import Document

        if captured is _NOW:
            captured = self.capture(uri)
        if isinstance(captured, Captured):
            return Document.from_text(captured.text, captured.name), captured.version
        parts = urlsplit(uri)
        if parts.scheme == "file":
            path = Path(unquote(parts.path))
            if path.is_file():
                return Document.load(path), None
        raise JsonRpcInvalidParams(
            f"unknown document {uri}: it is not open in the editor (textDocument/didOpen) nor a file on disk"
        )

    async def target_now(self, uri: str, rng: t.Range | None) -> Target:
        """`target` for the document as it is when the request is handled: the text is taken
        here, on the loop; parsing it runs on a task thread."""
        captured = self.capture(uri)
        return await asyncio.get_running_loop().run_in_executor(self.ls.pool, self.target, uri, rng, captured)

    def target(self, uri: str, rng: t.Range | None, captured: Captured | None | object = _NOW) -> Target:
        """Selection -> its lines; a point -> the symbol around it; nothing -> the whole file.

        The range is read in LSP's terms (lines end at \\n, \\r\\n or \\r; characters in the
        negotiated encoding) and turned into offsets, which the assistant's Document (lines at \\n
        only) maps to its own lines: a file with lone \\r line ends gets the right text."""
        from demi.assistant.syntax import parse

        doc, version = self.document(uri, captured)
        if rng is None:
            return Target(uri, doc, version)
        lines = lsp_lines(doc.text)
        count = len(lines) + (1 if not lines or lines[-1].endswith(("\n", "\r")) else 0)
        for pos in (rng.start, rng.end):
            if pos.line >= count:
                raise JsonRpcInvalidParams(
                    f"line {pos.line} is past the end of {doc.name} ({count} lines, 0-based lines 0-{count - 1})"
                )
        enc = self.ls.workspace.position_encoding
        start = offset_at(doc.text, rng.start.line, rng.start.character, enc, lines)
        end = offset_at(doc.text, rng.end.line, rng.end.character, enc, lines)
        if rng.start != rng.end:
            first, last = doc.line_of(start), doc.line_of(end)
            if last > first and end == doc.line_start(last):
                last -= 1  # a selection of whole lines ends at the start of the next one
            text_lines = max(1, doc.text.count("\n") + (0 if doc.text.endswith("\n") else 1))
            first = min(first, text_lines)  # a selection on the empty line after the last newline: the last line
            last = min(last, max(first, text_lines))
            return Target(uri, doc, version, lines=(first, last))
        sym = parse(doc).enclosing(start)
        return Target(uri, doc, version, symbol=sym.qualname if sym is not None else None)

    # code actions ----------------------------------------------------------------------------------

    def _resolve_supported(self) -> bool:
        caps = getattr(self.ls.protocol, "client_capabilities", None)
        ca = getattr(getattr(caps, "text_document", None), "code_action", None)
        return bool(ca is not None and ca.resolve_support is not None and ca.data_support)

    def code_actions(self, params: t.CodeActionParams) -> list[t.CodeAction]:
        uri = params.text_document.uri
        doc = self.ls.open_document(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"unknown document {uri}: open it first (textDocument/didOpen)")
        only = list(params.context.only or []) if params.context else []
        selection = params.range.start != params.range.end
        rng = {
            "start": {"line": params.range.start.line, "character": params.range.start.character},
            "end": {"line": params.range.end.line, "character": params.range.end.character},
        }
        offers: list[tuple[str, str, Any, str | None]] = [
            ("explain", "Demi: Explain" + (" selection" if selection else ""), KIND_EXPLAIN, None)
        ]
        if self.can_ask():
            offers.append(
                ("refactor", "Demi: Refactor" + (" selection" if selection else "") + "...", KIND_REFACTOR, None)
            )
        else:  # nothing to ask with: one action per suggested instruction
            for suggested in SUGGESTED_INSTRUCTIONS:
                offers.append(
                    ("refactor", f"Demi: {suggested}" + (" (selection)" if selection else ""), KIND_REFACTOR, suggested)
                )
        out = []
        for action, title, kind, instruction in offers:
            k = _kind(kind)
            if only and not any(k == _kind(o) or k.startswith(f"{_kind(o)}.") for o in only):
                continue
            data: dict[str, Any] = {"action": action, "uri": uri, "range": rng, "version": doc.version}
            args: list[Any] = [uri, rng]
            if instruction is not None:
                data["instruction"] = instruction
                args.append(instruction)
            ca = t.CodeAction(title=title, kind=kind, data=data)
            if not self._resolve_supported():
                ca.command = t.Command(
                    title=title, command=EXPLAIN if action == "explain" else REFACTOR, arguments=args
                )
            out.append(ca)
        out.extend(self.fix_actions(params, only))
        return out

    async def resolve(self, action: t.CodeAction) -> t.CodeAction:
        data = _plain(action.data)
        if isinstance(data, dict) and data.get("action") == "fix":
            return self.resolve_fix(action, data)
        if (
            not isinstance(data, dict)
            or data.get("action") not in ("explain", "refactor")
            or not isinstance(data.get("uri"), str)
        ):
            raise JsonRpcInvalidParams("this code action was not made by Demi (its data is missing or unknown)")
        instruction = data.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise JsonRpcInvalidParams("this code action's instruction must be a string")
        rng = _range(data.get("range"))
        target = await self.target_now(data["uri"], rng)
        args: list[Any] = [data["uri"], data.get("range")]
        if data["action"] == "explain":
            action.title = f"Demi: Explain {target.label}"
        elif instruction:
            action.title = f"Demi: {instruction} ({target.label})"
            args.append(instruction)
        else:
            action.title = f"Demi: Refactor {target.label}..."
        command = EXPLAIN if data["action"] == "explain" else REFACTOR
        action.command = t.Command(title=action.title, command=command, arguments=args)
        return action

    # commands --------------------------------------------------------------------------------------

    async def run(self, params: t.ExecuteCommandParams) -> Any:
        if params.command == FIX:
            return await self.fix(parse_arguments(params.arguments, ("uri", "range", "error")), params.work_done_token)
        if params.command not in COMMANDS:
            raise JsonRpcInvalidParams(f"unknown command {params.command!r} (Demi has {', '.join(COMMANDS)})")
        try:
            if params.command == EXPLAIN:
                args = parse_arguments(params.arguments, ("uri", "range"))
                return await self.explain(args, params.work_done_token)
            args = parse_arguments(params.arguments, ("uri", "range", "instruction"))
            result = await self.refactor(args, params.work_done_token)
        except JsonRpcException as exc:
            if not self.can_ask():  # such a client only logs a command's error: say it where it shows
                self.tell(f"Demi: {exc.message}", t.MessageType.Error)
            raise
        if not self.can_ask() and not result.get("applied") and not result.get("cancelled"):
            notes = "; ".join(result.get("notes") or []) or result.get("failureReason") or "the editor refused the edit"
            self.tell(f"Demi: nothing applied: {notes}", t.MessageType.Warning)
        return result

    async def _in_pool(self, fn: Any, token: Any, *args: Any) -> Any:
        """Run `fn` on a task thread; a cancelled request sets `token`, which stops the model."""
        fut = asyncio.get_running_loop().run_in_executor(self.ls.pool, fn, *args)
        fut.add_done_callback(_consume)  # after a cancel nobody awaits it: its error is not worth a log
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            token.cancel()
            raise

    async def explain(self, args: dict[str, Any], client_token: Any = None) -> str:
        from demi.assistant.engines import CancelToken

        rng = _range(args.get("range"))
        target = await self.target_now(args["uri"], rng)
        s = self.ls.settings
        token = CancelToken()
        async with Progress(self.ls, f"Demi: explaining {target.label}", token, client_token) as progress:
            pieces = [0]

            def on_text(piece: str) -> None:
                pieces[0] += 1
                progress.report(
                    f"writing ({pieces[0]} pieces)", min(99, int(100 * pieces[0] / max(1, s.explain_max_tokens)))
                )

            def job() -> Any:
                from demi.assistant.explain import explain

                set_priority(1)
                engine = self.ls.host.engine()
                return explain(
                    engine,
                    target.doc,
                    target.symbol,
                    target.lines,
                    max_tokens=s.explain_max_tokens,
                    budget=s.explain_context_tokens,
                    lead=s.explain_lead,
                    on_text=on_text,
                    cancel=token,
                )

            result = await self._run_task(job, token)
        if token.cancelled:
            raise asyncio.CancelledError()
        self.ls.record_history(
            "explain",
            f"explain {target.doc.name} {target.label}",
            result.model,
            f"explain {target.label}",
            result.markdown,
            result.prompt_tokens,
            result.completion_tokens,
            result.seconds,
            {"path": target.doc.name, "symbol": result.symbol, "lines": list(result.lines)},
        )
        path = await asyncio.get_running_loop().run_in_executor(self.ls.pool, self._save, target, result.markdown)
        if self.can_show_documents():
            await self._show(path)
        else:
            self._keep(Explained(target.uri, result.symbol, (result.lines[0], result.lines[1]), result.markdown))
            where = f"; also in {path}" if path is not None else ""
            self.tell(f"Demi: explained {target.label}: hover over it to read the explanation{where}")
        return result.markdown

    async def _run_task(self, job: Any, token: Any) -> Any:
        from demi.assistant.errors import DemiError, DemiUserError
        from demi.lsp.engine_host import EngineUnavailable

        try:
            return await self._in_pool(job, token)
        except (RunCancelled, asyncio.CancelledError):
            token.cancel()
            raise asyncio.CancelledError() from None
        except EngineUnavailable as exc:
            raise RequestFailed(f"Demi has no model: {exc}") from None
        except DemiError as exc:
            if token.cancelled:  # a refactor cut short says so with an error of its own
                raise asyncio.CancelledError() from None
            if isinstance(exc, DemiUserError):
                raise JsonRpcInvalidParams(str(exc)) from None
            raise RequestFailed(str(exc)) from None

    def _save(self, target: Target, markdown: str) -> Path | None:
        """The explanation as a file under the data dir (None when it cannot be written)."""
        try:
            folder = self.ls.data_dir() / "explanations"
            folder.mkdir(parents=True, exist_ok=True)
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(target.doc.name).stem}-{target.label.strip('`')}")
            path = folder / f"{stem[:80]}.md"
            path.write_text(markdown, encoding="utf-8")
            return path.resolve()
        except OSError:  # the markdown is still the command's answer
            log.warning("could not save the explanation", exc_info=True)
            return None

    async def _show(self, path: Path | None) -> None:
        """Open the saved explanation in the editor."""
        if path is None:
            return
        try:
            await asyncio.wait_for(
                self.ls.window_show_document_async(t.ShowDocumentParams(uri=path.as_uri(), take_focus=True)), 5.0
            )
        except Exception:  # the markdown is still the command's answer
            log.warning("could not show the explanation", exc_info=True)

    # explanations on hover ------------------------------------------------------------------------

    def _keep(self, explained: Explained) -> None:
        key = (explained.uri, explained.symbol, explained.lines)
        self.explained.pop(key, None)
        self.explained[key] = explained
        while len(self.explained) > KEPT_EXPLANATIONS:
            self.explained.popitem(last=False)

    async def hover(self, params: t.HoverParams) -> t.Hover | None:
        """The newest kept explanation of what is under the cursor; None (at once) when there is none."""
        uri = params.text_document.uri
        kept = [e for e in self.explained.values() if e.uri == uri]
        captured = self.capture(uri) if kept else None
        if captured is None:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.ls.pool, self._hover_at, kept[::-1], captured, params.position)

    def _hover_at(self, newest_first: list[Explained], captured: Captured, position: t.Position) -> t.Hover | None:
        from demi.assistant.document import Document
        from demi.assistant.syntax import parse

        doc = Document.from_text(captured.text, captured.name)
        lines = lsp_lines(doc.text)
        offset = offset_at(doc.text, position.line, position.character, self.ls.workspace.position_encoding, lines)
        line = doc.line_of(offset)
        symbols = None
        for e in newest_first:
            if e.symbol is None:
                hit = e.lines[0] <= line <= e.lines[1]
            else:
                symbols = parse(doc).symbols() if symbols is None else symbols
                hit = any(s.qualname == e.symbol and s.start_line <= line <= s.end_line for s in symbols)
            if hit:
                return t.Hover(contents=t.MarkupContent(kind=t.MarkupKind.Markdown, value=e.markdown))
        return None

    async def _ask_instruction(self, target: Target) -> str | None:
        if not self.can_ask():
            raise JsonRpcInvalidParams(
                "demi.refactor needs an instruction (the third argument): this editor cannot ask for one"
            )
        try:
            choice = await self.ls.window_show_message_request_async(
                t.ShowMessageRequestParams(
                    type=t.MessageType.Info,
                    message=f"Demi: how should {target.label} change?",
                    actions=[t.MessageActionItem(title=x) for x in SUGGESTED_INSTRUCTIONS],
                )
            )
        except JsonRpcException as exc:  # a client that claims the capability but cannot answer
            raise JsonRpcInvalidParams(
                f"demi.refactor needs an instruction (the third argument); asking for one failed: {exc}"
            ) from None
        return choice.title if choice is not None else None

    def workspace_edit(self, target: Target, old: str, new: str) -> t.WorkspaceEdit:
        """The rewrite as a WorkspaceEdit in the editor's terms (LSP lines, the negotiated position
        encoding), for the version it was computed for where the editor takes versioned edits."""
        edit = replace_changed_lines(old, new, self.ls.workspace.position_encoding)
        edits = [edit] if edit is not None else []
        if self.ls.supports_document_changes() and target.version is not None:
            doc = t.OptionalVersionedTextDocumentIdentifier(uri=target.uri, version=target.version)
            return t.WorkspaceEdit(document_changes=[t.TextDocumentEdit(text_document=doc, edits=edits)])
        return t.WorkspaceEdit(changes={target.uri: edits})

    async def refactor(self, args: dict[str, Any], client_token: Any = None) -> dict[str, Any]:
        from demi.assistant.engines import CancelToken

        rng = _range(args.get("range"))
        target = await self.target_now(args["uri"], rng)
        instruction = args.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise JsonRpcInvalidParams("instruction must be a string")
        if not instruction or not instruction.strip():
            instruction = await self._ask_instruction(target)
            if not instruction:
                return {"applied": False, "cancelled": True, "diff": "", "notes": ["no instruction given"]}
        s = self.ls.settings
        token = CancelToken()
        async with Progress(self.ls, f"Demi: refactoring {target.label}", token, client_token) as progress:

            def on_text(piece: str) -> None:
                progress.report("rewriting")

            def job() -> Any:
                from demi.assistant.refactor import propose

                set_priority(1)
                engine = self.ls.host.engine()
                return propose(
                    engine,
                    target.doc,
                    instruction,
                    target.symbol,
                    target.lines,
                    max_tokens=s.refactor_max_tokens,
                    budget=s.refactor_context_tokens,
                    cancel=token,
                    on_text=on_text,
                )

            result = await self._run_task(job, token)
        if token.cancelled:
            raise asyncio.CancelledError()
        notes = list(result.notes)
        self.ls.record_history(
            "refactor",
            f"refactor {target.doc.name} {target.label}: {instruction[:60]}",
            result.model,
            instruction,
            result.diff or "(no change)",
            result.prompt_tokens,
            result.completion_tokens,
            result.seconds,
            {"path": target.doc.name, "target": result.target},
        )
        if not result.edit.changed:
            return {"applied": False, "diff": "", "notes": notes}
        return {**await self._apply(target, result, "rewrite", "rewriting", "refactor"), "notes": notes}

    async def _apply(self, target: Target, result: Any, noun: str, doing: str, command: str) -> dict[str, Any]:
        """Apply a validated rewrite (a refactor's or a fix's) through workspace/applyEdit, unless the
        model was cut off by refactorMaxTokens or the document changed while it worked."""
        s = self.ls.settings
        if result.completion_tokens >= s.refactor_max_tokens:  # cut off: the rest of the code would be lost
            raise RequestFailed(
                f"the model stopped at refactorMaxTokens ({s.refactor_max_tokens}) before the end "
                f"of its {noun} of {target.label}; nothing was applied (raise refactorMaxTokens)"
            )
        open_doc = self.ls.open_document(target.uri)
        if target.version is not None and (open_doc is None or open_doc.version != target.version):
            raise RequestFailed(
                f"{target.doc.name} changed while Demi was {doing} it; nothing was applied (run the {command} again)"
            )
        answer = await self.ls.workspace_apply_edit_async(
            t.ApplyWorkspaceEditParams(
                edit=self.workspace_edit(target, result.edit.old, result.edit.new),
                label=f"Demi: {command} {target.label}",
            )
        )
        return {"applied": bool(answer.applied), "failureReason": answer.failure_reason, "diff": result.diff}

    # fix: the quick fix on diagnostics ---------------------------------------------------------------

    def fix_actions(self, params: t.CodeActionParams, only: list[Any]) -> list[t.CodeAction]:
        """ "Fix with Demi" when the editor sends diagnostics with the request (at most five, fixed
        together: the range is the first one's)."""
        diagnostics = list(params.context.diagnostics or [])[:5] if params.context else []
        k = _kind(KIND_FIX)
        if not diagnostics or only and not any(k == _kind(o) or k.startswith(f"{_kind(o)}.") for o in only):
            return []
        uri, first = params.text_document.uri, diagnostics[0].range
        rng = {
            "start": {"line": first.start.line, "character": first.start.character},
            "end": {"line": first.end.line, "character": first.end.character},
        }
        error = "\n".join(_diagnostic_text(d) for d in diagnostics)
        action = t.CodeAction(
            title="Fix with Demi",
            kind=KIND_FIX,
            diagnostics=diagnostics,
            data={"action": "fix", "uri": uri, "range": rng, "error": error},
        )
        if not self._resolve_supported():
            action.command = t.Command(title=action.title, command=FIX, arguments=[uri, rng, error])
        return [action]

    def resolve_fix(self, action: t.CodeAction, data: dict[str, Any]) -> t.CodeAction:
        if not isinstance(data.get("uri"), str) or not isinstance(data.get("error", ""), str):
            raise JsonRpcInvalidParams("this code action was not made by Demi (its data is missing or unknown)")
        _range(data.get("range"))
        action.command = t.Command(
            title=action.title, command=FIX, arguments=[data["uri"], data.get("range"), data.get("error", "")]
        )
        return action

    def _fix_site(self, uri: str, rng: t.Range, error: str, captured: Captured | None) -> tuple[Target, Any, Any]:
        """The document, the error placed at the range's first line, and the code to fix
        (`assistant.fix.locate`: the function around it)."""
        from demi.assistant.errors import DemiUserError
        from demi.assistant.fix import error_at, locate

        doc, version = self.document(uri, captured)
        lines = lsp_lines(doc.text)
        if rng.start.line > len(lines):
            raise JsonRpcInvalidParams(f"line {rng.start.line} is past the end of {doc.name}")
        enc = self.ls.workspace.position_encoding
        line = doc.line_of(offset_at(doc.text, rng.start.line, rng.start.character, enc, lines))
        report = error_at(doc.path or doc.name, line, error.strip() or "this line is wrong")
        try:
            site = locate(report, doc)
        except DemiUserError as exc:
            raise JsonRpcInvalidParams(str(exc)) from None
        return Target(uri, doc, version, site.symbol, site.lines), report, site

    async def fix(self, args: dict[str, Any], client_token: Any = None) -> dict[str, Any]:
        """demi.fix (uri, the diagnostic's range, its message): the model's fix of the function
        around it, validated like a refactor and applied with workspace/applyEdit."""
        from demi.assistant.engines import CancelToken

        rng = _range(args.get("range"))
        error = args.get("error") or ""
        if rng is None:
            raise JsonRpcInvalidParams("demi.fix needs the range of the diagnostic to fix (the second argument)")
        if not isinstance(error, str):
            raise JsonRpcInvalidParams("error must be a string (the diagnostic's message)")
        captured = self.capture(args["uri"])
        loop = asyncio.get_running_loop()
        target, report, site = await loop.run_in_executor(
            self.ls.pool, self._fix_site, args["uri"], rng, error, captured
        )
        s = self.ls.settings
        token = CancelToken()
        async with Progress(self.ls, f"Demi: fixing {target.label}", token, client_token) as progress:

            def on_text(piece: str) -> None:
                progress.report("writing the fix")

            def job() -> Any:
                from demi.assistant.fix import propose_fix

                set_priority(1)
                return propose_fix(
                    self.ls.host.engine(),
                    target.doc,
                    report,
                    site,
                    max_tokens=s.refactor_max_tokens,
                    budget=s.refactor_context_tokens,
                    cancel=token,
                    on_text=on_text,
                )

            result = await self._run_task(job, token)
        if token.cancelled:
            raise asyncio.CancelledError()
        self.ls.record_history(
            "fix",
            f"fix {target.doc.name} {target.label}: {result.error[:60]}",
            result.model,
            report.text,
            result.diff,
            result.prompt_tokens,
            result.completion_tokens,
            result.seconds,
            {"path": target.doc.name, "target": result.target, "error": result.error},
        )
        applied = await self._apply(target, result, "fix", "fixing", "fix")
        return {**applied, "notes": list(result.notes), "error": result.error, "target": result.target}


def _diagnostic_text(d: t.Diagnostic) -> str:
    """A diagnostic as one line for the prompt: its message, then who said it ("(pyflakes F821)")."""
    code = getattr(d.code, "value", d.code) if d.code is not None else None
    who = " ".join(str(x) for x in (d.source, code) if x not in (None, ""))
    return " ".join(d.message.split()) + (f" ({who})" if who else "")
