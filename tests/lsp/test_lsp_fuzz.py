"""Property-based fuzzing of demi-lsp through a real client, with a real (tiny, random-weight) model.

Hypothesis writes random sessions: documents opened, edited (whole-text and ranged changes,
with non-ASCII, astral-plane characters, CRLF, lone CR, NUL, U+2028 and form feeds), closed;
inline completions, completions, code actions, `demi.explain` / `demi.refactor`, and
`$/cancelRequest`, at random positions, some past the line or the document. The client sends
without waiting, so requests overlap with edits and each other. After every step:

- every request answered so far got a result, or an error of a kind that request may get (an
  out-of-range position is InvalidParams, a cancelled request RequestCancelled: never an
  internal error, never silence);
- the server's text for each document (`demi/documentText`) equals the client's, which is
  kept here independently: LSP's rules in UTF-16 code units (a character past the line's end
  means the end of the line, a line past the document its end, a position inside a surrogate
  pair the start of that character, and a backwards range is the same range forwards);
- the server process is alive and its log has no traceback.

One server serves every example (each example has documents of its own, closed at its end);
shutdown and exit must end it with code 0. Each engine (the tiny model, and the scripted one
whose refactors apply) gets DEMI_FUZZ_FAST_EXAMPLES examples (default 40) in the normal suite;
the long run is marked slow: `pytest -m slow -s tests/lsp/test_lsp_fuzz.py` (DEMI_FUZZ_EXAMPLES
examples per engine, default 400; -s prints the counts).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from lsp_support import scripted_command, server_env, start_client, stop_client, tiny_model_dir, to_plain
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

CONTEXT = 1024
INIT = {
    "maxTokens": 8,
    "contextTokens": 256,
    "explainMaxTokens": 12,
    "explainContextTokens": 256,
    "refactorMaxTokens": 64,
    "refactorContextTokens": 256,
    "debounceMaxMs": 60,
}
ANSWER_TIMEOUT_S = 120.0  # a shared 2-core machine: generous; silence is what fails, not slowness
SLOTS = 3
# The refactor the sessions ask for: the scripted model's x -> y rewrite, phrased so the server's
# static rename (which answers at once, without the model) does not take it: these sessions drive
# the model's rewrite path, whose timing they were written for.
REWRITE = "write y for every x"
LANGS = ("python", "python", "python", "javascript", "plaintext", "made-up-language")
PIECES = (
    "def ",
    "f",
    "(x)",
    ":",
    " ",
    "    ",
    "\t",
    "return ",
    "x",
    " = ",
    "1",
    "#",
    '"',
    "'",
    "(",
    ")",
    "{",
    "}",
    "\n",
    "\n",
    "\n",
    "\r\n",
    "\r\n",
    "\r",
    "é",
    "ß",
    "中文",
    "😀",
    "𝔘",
    "👩\u200d💻",
    "\u2028",
    "\x0c",
    "\x00",
    "\u200b",
)
CANCELLED, INVALID_PARAMS, REQUEST_FAILED, INTERNAL_ERROR = -32800, -32602, -32803, -32603
LOG_RECORD = re.compile(r"^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ demi-lsp )", re.M)


# -- the client's copy of a document: LSP edits in UTF-16 code units, written apart from the server --


class Buffer:
    """A document as the client holds it, as UTF-16 code units (LSP's default position encoding)."""

    def __init__(self, text: str, version: int, language: str):
        self.units = array("H", text.encode("utf-16-le", "surrogatepass"))
        self.version, self.language = version, language

    @property
    def text(self) -> str:
        return self.units.tobytes().decode("utf-16-le", "surrogatepass")

    def lines(self) -> list[tuple[int, int]]:
        """(start, end of content) of each line, in code units; breaks are \\n, \\r\\n and \\r."""
        out, start, i, u = [], 0, 0, self.units
        while i < len(u):
            if u[i] in (10, 13):
                out.append((start, i))
                i += 2 if u[i] == 13 and i + 1 < len(u) and u[i + 1] == 10 else 1
                start = i
            else:
                i += 1
        out.append((start, len(u)))
        return out

    def offset(self, pos: t.Position) -> int:
        lines = self.lines()
        if pos.line >= len(lines):
            return len(self.units)
        start, end = lines[pos.line]
        off = start + min(pos.character, end - start)
        if start < off < end and 0xD800 <= self.units[off - 1] < 0xDC00 and 0xDC00 <= self.units[off] < 0xE000:
            off -= 1  # inside a surrogate pair: the start of that character
        return off

    def apply(self, rng: t.Range, text: str) -> None:
        a, b = sorted((self.offset(rng.start), self.offset(rng.end)))
        self.units[a:b] = array("H", text.encode("utf-16-le", "surrogatepass"))

    def valid(self, pos: t.Position) -> bool:
        """A position a request may use: on a line, at most at its end (inside a pair is tolerated)."""
        lines = self.lines()
        return pos.line < len(lines) and pos.character <= lines[pos.line][1] - lines[pos.line][0]


# -- operations ---------------------------------------------------------------------------------------


class Pos(NamedTuple):
    """A position resolved against the text when the step runs: ok (a character boundary), mid (inside
    a surrogate pair where there is one), eol (past the line's end), past (past the document), huge."""

    kind: str
    a: int
    b: int


class Open(NamedTuple):
    slot: int
    text: str
    language: str


class Change(NamedTuple):
    slot: int
    changes: tuple  # ("full", text) | ("range", Pos, Pos, text)


class Close(NamedTuple):
    slot: int


class Inline(NamedTuple):
    slot: int
    pos: Pos
    invoked: bool
    selected: tuple | None  # (Pos, Pos, text): the popup's selected item


class Complete(NamedTuple):
    slot: int
    pos: Pos
    invoked: bool


class Actions(NamedTuple):
    slot: int
    start: Pos
    end: Pos


class Command(NamedTuple):
    slot: int
    name: str
    start: Pos
    end: Pos
    instruction: str | None
    forwards: bool  # put the two positions in order (else as they come: maybe backwards)


class Cancel(NamedTuple):
    which: int
    unknown: bool


class Pause(NamedTuple):
    ms: int  # 0: wait for every answer


# Python that parses (so refactors can apply), with non-ASCII in comments and strings.
CODE_LINES = (
    "x = 1",
    "def f(x):\n    return x",
    "y = x + 1  # é😀",
    "s = '中文 𝔘 👩\u200d💻'",
    "class C:\n    x = 2",
    "if x:\n    pass",
    "print(x)",
    "",
)
code = st.tuples(st.lists(st.sampled_from(CODE_LINES), max_size=12), st.sampled_from(("\n", "\r\n"))).map(
    lambda p: p[1].join(line.replace("\n", p[1]) for line in p[0])
)
texts = st.one_of(st.lists(st.sampled_from(PIECES), max_size=40).map("".join), code)
small = st.integers(0, 10_000)
positions = st.builds(Pos, st.sampled_from(("ok",) * 8 + ("mid", "mid", "eol", "past", "huge")), small, small)
slots = st.integers(0, SLOTS - 1)
changes = st.one_of(
    st.tuples(st.just("full"), texts),
    st.tuples(st.just("range"), positions, positions, st.lists(st.sampled_from(PIECES), max_size=6).map("".join)),
)
operations = st.one_of(
    st.builds(Open, slots, texts, st.sampled_from(LANGS)),
    st.builds(Change, slots, st.lists(changes, min_size=1, max_size=4).map(tuple)),
    st.builds(Change, slots, st.lists(changes, min_size=1, max_size=4).map(tuple)),
    st.builds(Close, slots),
    st.builds(
        Inline,
        slots,
        positions,
        st.booleans(),
        st.none() | st.tuples(positions, positions, st.sampled_from(("x", "return", "é😀", ""))),
    ),
    st.builds(Inline, slots, positions, st.booleans(), st.none()),
    st.builds(Complete, slots, positions, st.booleans()),
    st.builds(Actions, slots, positions, positions),
    st.builds(
        Command,
        slots,
        st.just("demi.explain"),
        positions,
        positions,
        st.sampled_from((None,) * 6 + (REWRITE,)),
        st.sampled_from((True, True, True, False)),
    ),
    st.builds(
        Command,
        slots,
        st.just("demi.refactor"),
        positions,
        positions,
        st.sampled_from((REWRITE,) * 4 + ("Add a docstring", "  ", None)),
        st.sampled_from((True, True, True, False)),
    ),
    st.builds(Cancel, small, st.booleans()),
    st.builds(Cancel, small, st.just(False)),
    st.builds(Pause, st.sampled_from((0, 0, 5, 30))),
)
opens = st.lists(st.builds(Open, slots, texts, st.sampled_from(LANGS)), min_size=1, max_size=SLOTS + 1)


def sessions(max_ops: int) -> st.SearchStrategy[list[Any]]:
    """Documents opened first (most steps then have something to work on), then anything."""
    return st.tuples(opens, st.lists(operations, min_size=2, max_size=max_ops)).map(lambda p: p[0] + p[1])


# -- running a session ----------------------------------------------------------------------------------


@dataclass
class Pending:
    op: Any
    allowed: set[Any]  # "result" and the error codes this request may get
    future: Any
    answer: Any = None


@dataclass
class Session:
    client: Any
    prefix: str
    root: Path
    docs: dict[int, Buffer] = field(default_factory=dict)
    exited: Any = None  # a task that ends when the server process does
    scripted: bool = False  # the scripted engine, whose refactors are known renames
    failures: list[str] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)
    counter: int = 0
    requests: int = 0
    applied: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def uri(self, slot: int) -> str:
        names = ("plain.py", "with space é.py", "untitled:Untitled-{}")
        name = names[slot % len(names)]
        if name.startswith("untitled:"):
            return name.format(self.prefix)
        return (self.root / f"{self.prefix}-{name}").as_uri()

    def slot_of(self, uri: str) -> int | None:
        return next((s for s in range(SLOTS) if self.uri(s) == uri), None)

    # positions ------------------------------------------------------------------------------------

    def position(self, slot: int, p: Pos) -> t.Position:
        buf = self.docs.get(slot) or Buffer("", 0, "python")
        lines = buf.lines()
        line = p.a % len(lines)
        start, end = lines[line]
        if p.kind == "huge":
            return t.Position(line=2**31 - 1, character=p.b) if p.b % 2 else t.Position(line=line, character=2**31 - 1)
        if p.kind == "past":
            return t.Position(line=len(lines) + p.b % 3, character=p.a % 4)
        if p.kind == "eol":
            return t.Position(line=line, character=end - start + 1 + p.b % 3)
        bounds = [i - start for i in range(start, end + 1) if not (start < i < end and 0xDC00 <= buf.units[i] < 0xE000)]
        if p.kind == "mid":
            mids = [i - start for i in range(start + 1, end) if 0xDC00 <= buf.units[i] < 0xE000]
            if mids:
                return t.Position(line=line, character=mids[p.b % len(mids)])
        return t.Position(line=line, character=bounds[p.b % len(bounds)])

    def rng(self, slot: int, a: Pos, b: Pos) -> t.Range:
        return t.Range(start=self.position(slot, a), end=self.position(slot, b))

    # steps ----------------------------------------------------------------------------------------

    async def step(self, op: Any) -> None:
        c = self.client
        if isinstance(op, Open):
            version = self.docs[op.slot].version + 1 if op.slot in self.docs else 1
            self.docs[op.slot] = Buffer(op.text, version, op.language)
            c.text_document_did_open(
                t.DidOpenTextDocumentParams(
                    text_document=t.TextDocumentItem(
                        uri=self.uri(op.slot), language_id=op.language, version=version, text=op.text
                    )
                )
            )
        elif isinstance(op, Change):
            buf = self.docs.get(op.slot)
            events: list[Any] = []
            for ch in op.changes:
                if ch[0] == "full":
                    events.append(t.TextDocumentContentChangeWholeDocument(text=ch[1]))
                    if buf is not None:
                        buf.units = Buffer(ch[1], 0, "").units
                else:
                    rng = self.rng(op.slot, ch[1], ch[2])
                    events.append(t.TextDocumentContentChangePartial(range=rng, text=ch[3]))
                    if buf is not None:
                        buf.apply(rng, ch[3])
            version = buf.version + 1 if buf is not None else 7
            if buf is not None:
                buf.version = version
            c.text_document_did_change(
                t.DidChangeTextDocumentParams(
                    text_document=t.VersionedTextDocumentIdentifier(uri=self.uri(op.slot), version=version),
                    content_changes=events,
                )
            )
        elif isinstance(op, Close):
            self.docs.pop(op.slot, None)
            c.text_document_did_close(
                t.DidCloseTextDocumentParams(text_document=t.TextDocumentIdentifier(uri=self.uri(op.slot)))
            )
        elif isinstance(op, Inline):
            pos = self.position(op.slot, op.pos)
            kind = t.InlineCompletionTriggerKind.Invoked if op.invoked else t.InlineCompletionTriggerKind.Automatic
            selected, points = None, [pos]
            if op.selected is not None:
                rng = self.rng(op.slot, op.selected[0], op.selected[1])
                selected = t.SelectedCompletionInfo(range=rng, text=op.selected[2])
                points += [rng.start, rng.end]
            params = t.InlineCompletionParams(
                text_document=t.TextDocumentIdentifier(uri=self.uri(op.slot)),
                position=pos,
                context=t.InlineCompletionContext(trigger_kind=kind, selected_completion_info=selected),
            )
            self.send(op, t.TEXT_DOCUMENT_INLINE_COMPLETION, params, self.completion_allowed(op.slot, points))
        elif isinstance(op, Complete):
            pos = self.position(op.slot, op.pos)
            kind = (
                t.CompletionTriggerKind.Invoked
                if op.invoked
                else t.CompletionTriggerKind.TriggerForIncompleteCompletions
            )
            params = t.CompletionParams(
                text_document=t.TextDocumentIdentifier(uri=self.uri(op.slot)),
                position=pos,
                context=t.CompletionContext(trigger_kind=kind),
            )
            self.send(op, t.TEXT_DOCUMENT_COMPLETION, params, self.completion_allowed(op.slot, [pos]))
        elif isinstance(op, Actions):
            params = t.CodeActionParams(
                text_document=t.TextDocumentIdentifier(uri=self.uri(op.slot)),
                range=self.rng(op.slot, op.start, op.end),
                context=t.CodeActionContext(diagnostics=[]),
            )
            self.send(
                op,
                t.TEXT_DOCUMENT_CODE_ACTION,
                params,
                {"result", CANCELLED} if op.slot in self.docs else {INVALID_PARAMS, CANCELLED},
            )
        elif isinstance(op, Command):
            rng = self.rng(op.slot, op.start, op.end)
            if op.forwards and (rng.end.line, rng.end.character) < (rng.start.line, rng.start.character):
                rng = t.Range(start=rng.end, end=rng.start)
            args: list[Any] = [self.uri(op.slot), to_json_range(rng)]
            if op.instruction is not None:
                args.append(op.instruction)
            self.send(
                op,
                t.WORKSPACE_EXECUTE_COMMAND,
                t.ExecuteCommandParams(command=op.name, arguments=args),
                self.command_allowed(op.slot, op.name, rng, len(args)),
            )
        elif isinstance(op, Cancel):
            ids = list(self.pending)
            target = f"{self.prefix}-never-sent-{op.which}" if op.unknown or not ids else ids[op.which % len(ids)]
            c.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=target))
        elif isinstance(op, Pause):
            if op.ms:
                await asyncio.sleep(op.ms / 1000)
            else:
                await self.drain()
        await self.collect()
        await self.check_documents()
        assert not self.failures, self.failures[0]

    def completion_allowed(self, slot: int, points: list[t.Position]) -> set[Any]:
        buf = self.docs.get(slot)
        if buf is None or not buf.valid(points[0]):
            return {INVALID_PARAMS, CANCELLED}
        if not all(buf.valid(p) for p in points[1:]):  # a selected item's range: checked where it is used
            return {"result", INVALID_PARAMS, CANCELLED}
        return {"result", CANCELLED}

    def command_allowed(self, slot: int, name: str, rng: t.Range, nargs: int) -> set[Any]:
        """A range on the document's lines, forwards, gets an answer; anything else InvalidParams
        (and so does an instruction for demi.explain, which takes none)."""
        buf = self.docs.get(slot)
        n = len(buf.lines()) if buf is not None else 0
        forwards = (rng.start.line, rng.start.character) <= (rng.end.line, rng.end.character)
        if (
            buf is None
            or not forwards
            or max(rng.start.line, rng.end.line) >= n
            or (name == "demi.explain" and nargs > 2)
        ):
            return {INVALID_PARAMS, CANCELLED}
        if name == "demi.refactor":  # a random model's rewrite is refused (it does not parse), or the
            return {"result", CANCELLED, REQUEST_FAILED, INVALID_PARAMS}  # target is too long for the budget
        return {"result", CANCELLED}

    def send(self, op: Any, method: str, params: Any, allowed: set[Any]) -> None:
        self.counter += 1
        self.requests += 1
        msg_id = f"{self.prefix}-{self.counter}"
        fut = self.client.protocol.send_request(method, params, msg_id=msg_id)
        self.pending[msg_id] = Pending(op, allowed, asyncio.wrap_future(fut))

    async def collect(self) -> None:
        """Check the answers that have come in."""
        for msg_id, p in list(self.pending.items()):
            if p.future.done():
                del self.pending[msg_id]
                self.check_answer(msg_id, p)

    def check_answer(self, msg_id: str, p: Pending) -> None:
        try:
            p.future.result()
            kind: Any = "result"
        except JsonRpcException as exc:
            kind = exc.code
            detail = f"{exc.code} {exc.message}"
        else:
            detail = "result"
        self.outcomes[f"{type(p.op).__name__}:{kind}"] = self.outcomes.get(f"{type(p.op).__name__}:{kind}", 0) + 1
        assert kind in p.allowed, f"request {msg_id} ({p.op}) got {detail}; allowed {sorted(map(str, p.allowed))}"

    async def drain(self) -> None:
        """Every request sent so far gets its answer."""
        for msg_id, p in list(self.pending.items()):
            try:
                await self.answer(p.future, f"request {msg_id} ({p.op})")
            except JsonRpcException:
                pass  # checked in collect()
        await self.collect()
        assert not self.pending

    async def answer(self, future: Any, what: str) -> Any:
        """The answer to `future`; fails at once if the server exits, or after ANSWER_TIMEOUT_S."""
        done, _ = await asyncio.wait(
            {future, self.exited}, timeout=ANSWER_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if future in done:
            return future.result()
        if self.exited in done:
            raise AssertionError(f"the server exited (code {self.exited.result()}) before answering {what}")
        raise AssertionError(f"{what} was not answered in {ANSWER_TIMEOUT_S:.0f} s")

    async def check_documents(self) -> None:
        """The server's text equals the client's as it was when the question was sent (a refactor's
        workspace/applyEdit may change the client's copy while the answer is on its way)."""
        for slot in range(SLOTS):
            buf = self.docs.get(slot)
            expected = (buf.text, buf.version) if buf is not None else None
            fut = asyncio.ensure_future(
                self.client.protocol.send_request_async("demi/documentText", {"uri": self.uri(slot)})
            )
            got = to_plain(await self.answer(fut, f"demi/documentText for slot {slot}"))
            if expected is None:
                assert got is None, f"slot {slot} is closed but the server holds {got!r}"
            else:
                assert got is not None, f"slot {slot} is open but the server does not have it"
                assert got["text"] == expected[0], (
                    f"slot {slot}: the server's text differs from the client's\n"
                    f"server: {got['text']!r}\nclient: {expected[0]!r}"
                )
                assert got["version"] == expected[1]

    async def close_all(self) -> None:
        for slot in list(self.docs):
            await self.step(Close(slot))

    def apply_edit(self, params: t.ApplyWorkspaceEditParams) -> t.ApplyWorkspaceEditResult:
        """What an editor does with a refactor: apply it when the version matches, then say so (didChange)."""
        edits: list[tuple[str, int | None, list[t.TextEdit]]] = []
        for change in params.edit.document_changes or []:
            if isinstance(change, t.TextDocumentEdit):
                edits.append((change.text_document.uri, change.text_document.version, list(change.edits)))
        for uri, items in (params.edit.changes or {}).items():
            edits.append((uri, None, list(items)))
        for uri, version, _items in edits:
            slot = self.slot_of(uri)
            buf = self.docs.get(slot) if slot is not None else None
            if buf is None or (version is not None and version != buf.version):
                return t.ApplyWorkspaceEditResult(applied=False, failure_reason="version mismatch")
        for uri, _, items in edits:
            slot = self.slot_of(uri)
            buf = self.docs[slot]
            before = buf.text
            ordered = sorted(items, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True)
            for e in ordered:
                buf.apply(e.range, e.new_text)
            if self.scripted and _renamed(buf.text) != _renamed(before):
                # its only rewrite renames x to y (the session layer may also tidy whitespace):
                # nothing else may change (an assert here would only become an error answer to
                # the server; the next step reports it)
                self.failures.append(f"the refactor's edit {ordered} turned {before!r} into {buf.text!r}")
            buf.version += 1
            self.client.text_document_did_change(
                t.DidChangeTextDocumentParams(
                    text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=buf.version),
                    content_changes=[
                        t.TextDocumentContentChangePartial(range=e.range, text=e.new_text) for e in ordered
                    ],
                )
            )
        self.applied += 1
        return t.ApplyWorkspaceEditResult(applied=True)


def _renamed(text: str) -> str:
    """`text` as the scripted refactor cannot change it: x and y the same, whitespace gone."""
    return re.sub(r"\s", "", text).replace("y", "x")


def to_json_range(r: t.Range) -> dict[str, Any]:
    return {
        "start": {"line": r.start.line, "character": r.start.character},
        "end": {"line": r.end.line, "character": r.end.character},
    }


# -- the server, shared by the examples -----------------------------------------------------------------


class Harness:
    """One demi-lsp process and one event loop, for many examples. The engine is the tiny random
    model, or the scripted one (tests/lsp_support.py), whose rewrites parse, so refactors reach
    workspace/applyEdit and come back as the client's didChange."""

    def __init__(self, workdir: Path, engine: str):
        self.workdir = workdir
        self.root = workdir / "project"
        self.root.mkdir(exist_ok=True)
        self.log = workdir / "server.log"
        self.loop = asyncio.new_event_loop()
        self.session: Session | None = None
        self.examples = 0
        self.steps = 0
        self.requests = 0
        self.applied = 0
        self.outcomes: dict[str, int] = {}
        self.log_seen = 0
        if engine == "tiny":
            model = tiny_model_dir(workdir / "tiny", CONTEXT)
            cmd = [sys.executable, "-m", "demi.lsp.server", "--model", str(model), "--context", str(CONTEXT)]
        else:
            cmd = scripted_command()
        cmd += ["--log-file", str(self.log)]
        self.engine = engine
        self.client = self.loop.run_until_complete(
            start_client(cmd, server_env(workdir), self.root, init_options=INIT, apply_edit=self._apply_edit)
        )
        self.exited = self.loop.create_task(self.client._server.wait())

    def _apply_edit(self, params: t.ApplyWorkspaceEditParams) -> t.ApplyWorkspaceEditResult:
        if self.session is None:
            return t.ApplyWorkspaceEditResult(applied=False, failure_reason="no session")
        return self.session.apply_edit(params)

    def run(self, ops: list[Any]) -> None:
        note(f"ops = {ops!r}")
        self.examples += 1
        self.session = Session(
            self.client, f"ex{self.examples}", self.root, exited=self.exited, scripted=self.engine == "scripted"
        )
        try:
            self.loop.run_until_complete(self._run(self.session, ops))
        finally:
            self.requests += self.session.requests
            self.applied += self.session.applied
            for k, v in self.session.outcomes.items():
                self.outcomes[k] = self.outcomes.get(k, 0) + v
            self.session = None

    async def _run(self, s: Session, ops: list[Any]) -> None:
        for op in ops:
            self.steps += 1
            await s.step(op)
        await s.drain()
        assert not s.failures, s.failures[0]
        await s.close_all()
        await s.check_documents()
        assert self.client._server.returncode is None, "the server died"
        self.check_log()

    def check_log(self) -> None:
        """No traceback in what the server logged since the last check (one per example)."""
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        new, self.log_seen = text[self.log_seen :], len(text)
        faults = [r for r in LOG_RECORD.split(new) if "Traceback" in r]
        assert not faults, "the server logged a traceback:\n" + "\n".join(faults)[-6000:]

    def close(self) -> int | None:
        try:
            code = self.loop.run_until_complete(stop_client(self.client))
        finally:
            self.loop.close()
        print(
            f"\nlsp fuzz ({self.engine}): {self.examples} examples, {self.steps} steps, {self.requests} requests, "
            f"{self.applied} refactors applied; answers {dict(sorted(self.outcomes.items()))}"
        )
        return code


@pytest.fixture(scope="module", params=["tiny", "scripted"])
def harness(request, tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp(f"lsp-fuzz-{request.param}"), request.param)
    yield h
    code = h.close()
    h.check_log()
    assert code == 0, f"shutdown/exit ended the server with {code}"


FAST = settings(
    max_examples=int(os.environ.get("DEMI_FUZZ_FAST_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
SLOW = settings(FAST, max_examples=int(os.environ.get("DEMI_FUZZ_EXAMPLES", "400")))


@FAST
@given(ops=sessions(25))
def test_fuzz_sessions(harness, ops):
    harness.run(ops)


@pytest.mark.slow
@SLOW
@given(ops=sessions(60))
def test_fuzz_sessions_long(harness, ops):
    harness.run(ops)
