"""The pieces of the chat screen: the message box, messages, the diff card, the session list, modals."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, OptionList, Static, TextArea
from textual.widgets.markdown import MarkdownStream

from demi.tui.blocks import BlockCuts, needs_whole
from demi.tui.completion import Completion
from demi.tui.frozen import Frozen, draw


def fence(code: str, language: str = "") -> str:
    """`code` as a fenced Markdown block whose fence cannot be closed by the code itself."""
    ticks = "```"
    while ticks in code:
        ticks += "`"
    return f"{ticks}{language}\n{code.rstrip(chr(10))}\n{ticks}\n"


class PromptInput(TextArea):
    """The message box: Enter sends, ctrl+j / alt+enter / shift+enter add a line, Tab completes,
    Up and Down on the first and last line walk through earlier messages."""

    class Submitted(Message):
        def __init__(self, text: str, at: float) -> None:
            super().__init__()
            self.text, self.at = text, at

    class Hints(Message):
        """Completion candidates to show (empty: hide them)."""

        def __init__(self, candidates: list[str]) -> None:
            super().__init__()
            self.candidates = candidates

    NEWLINE_KEYS = frozenset({"ctrl+j", "shift+enter", "alt+enter", "ctrl+enter"})

    def __init__(self, completer: Callable[[str, int], Completion | None] | None = None, **kwargs: Any) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False, compact=True, **kwargs)
        self.completer = completer
        self.sent: list[str] = []
        self._recall: int | None = None
        self._draft = ""
        self._cycle: tuple[Completion, int] | None = None
        self._cycle_end = 0
        self._hinting = False

    @property
    def offset(self) -> int:
        row, col = self.cursor_location
        lines = self.text.split("\n")
        return sum(len(line) + 1 for line in lines[:row]) + col

    def remember(self, text: str) -> None:
        if text.strip() and (not self.sent or self.sent[-1] != text):
            self.sent.append(text)
        self._recall = None

    async def _on_key(self, event: Any) -> None:
        key = event.key
        if key != "tab":
            self._cycle = None
            if self._hinting:  # typing on: the candidates shown no longer apply
                self._hinting = False
                self.post_message(self.Hints([]))
        if key == "enter":
            self._stop(event)
            self.post_message(self.Hints([]))
            self.post_message(self.Submitted(self.text, getattr(event, "time", None) or time.monotonic()))
        elif key in self.NEWLINE_KEYS:
            self._stop(event)
            self.insert("\n")
        elif key == "tab" and self._complete():
            self._stop(event)
        elif key == "up" and self.cursor_location[0] == 0 and self.sent:
            self._stop(event)
            self._walk(-1)
        elif key == "down" and self._recall is not None and self.cursor_location[0] == self.document.line_count - 1:
            self._stop(event)
            self._walk(1)

    @staticmethod
    def _stop(event: Any) -> None:
        event.stop()
        event.prevent_default()

    def _walk(self, step: int) -> None:
        if self._recall is None:
            self._draft, self._recall = self.text, len(self.sent)
        self._recall = max(0, min(len(self.sent), self._recall + step))
        text = self.sent[self._recall] if self._recall < len(self.sent) else self._draft
        if self._recall == len(self.sent):
            self._recall = None
        self.load_text(text)
        self.move_cursor(self.document.end)

    def _complete(self) -> bool:
        if self.completer is None:
            return False
        if self._cycle is not None:  # Tab again: the next candidate
            comp, i = self._cycle
            i = (i + 1) % len(comp.candidates)
            self._replace(comp.start, self._cycle_end, comp.candidates[i])
            self._cycle = (comp, i)
            self._cycle_end = comp.start + len(comp.candidates[i])
            return True
        comp = self.completer(self.text, self.offset)
        if comp is None or not comp.candidates:
            self.post_message(self.Hints([]))
            return False
        common = comp.common()
        current = self.text[comp.start : comp.end]
        if len(comp.candidates) == 1:
            self._replace(comp.start, comp.end, comp.candidates[0])
            self.post_message(self.Hints([]))
        elif len(common) > len(current):
            self._replace(comp.start, comp.end, common)
            self.post_message(self.Hints(comp.candidates))
            self._hinting = True
        else:
            self.post_message(self.Hints(comp.candidates))
            self._hinting = True
            self._cycle = (comp, -1)
            self._cycle_end = comp.end
            return self._complete()
        return True

    def _replace(self, start: int, end: int, text: str) -> None:
        doc = self.document
        self.replace(text, self._location(doc, start), self._location(doc, end))

    @staticmethod
    def _location(doc: Any, offset: int) -> tuple[int, int]:
        row = 0
        for line in doc.lines:
            if offset <= len(line):
                return row, offset
            offset -= len(line) + 1
            row += 1
        return doc.end


class UserMessage(Static):
    """What the user sent (plain text: brackets are not markup), with what it attached."""

    def __init__(self, text: str, attached: list[str] | None = None, **kwargs: Any) -> None:
        body = Text(text)
        if attached:
            body.append("\nattached: " + ", ".join(attached), style="dim")
        super().__init__(body, **kwargs)
        self.text = text


class MoreMarkdown(Markdown):
    """A piece after the first: its first block has one line less above it, the line the block before
    already has below it (Textual's blocks keep a line below them), so the pieces read as one document.

    Set on the block itself as it is mounted, not with a `:first-child` rule: such a rule has Textual
    match every block of every answer again on each style update (a third more CPU for a session)."""

    def append(self, markdown: str) -> AwaitComplete:
        appended = super().append(markdown)

        async def run() -> None:
            await appended
            self._close_gap()

        return AwaitComplete(run())

    def _close_gap(self) -> None:
        first = next(iter(self.children), None)
        if first is None or getattr(first, "_gap_closed", False):
            return
        first._gap_closed = True  # type: ignore[attr-defined]
        margin = first.styles.margin
        first.styles.margin = (max(0, margin.top - 1), margin.right, margin.bottom, margin.left)


class Piece(Vertical):
    """One piece of an answer: its Markdown (or, once finished, the `Frozen` lines it drew) and a
    zero-height line under it.

    Why the empty line: Textual measures a container whose children all have automatic heights
    against its parent's height, so while an answer grows every finished piece would be measured
    (and laid out) again on every frame; one fixed-height child makes the measure independent of
    the parent, and a sealed piece's layout stays cached."""

    def __init__(self, markdown: Markdown) -> None:
        super().__init__(classes="piece")
        self.markdown = markdown
        self.frozen: Frozen | None = None
        self.sealed = False  # its text is final: it may be frozen
        self.held_open = False  # the mouse wanted the real widgets: never frozen again
        self._tries = 0
        self._freezing = False

    def compose(self) -> ComposeResult:
        yield self.markdown
        yield Static(classes="piece-end")

    def seal(self, later: bool = True) -> None:
        """The text is final: it may be frozen (`later`: by itself, once drawn at its final size;
        otherwise the caller calls `try_freeze`, e.g. with the next streamed frame, which lays out
        the screen anyway)."""
        if self.held_open or not str(getattr(self.markdown, "source", "x")).strip():
            return  # kept as Markdown, or nothing drawn: nothing to freeze
        self.sealed, self._tries = True, 0
        if later:
            self.call_after_refresh(self.freeze)

    async def try_freeze(self) -> bool:
        """Replace the Markdown by the lines it draws (it stays, hidden, for a change of width);
        False when it cannot be done yet (not laid out as it is now)."""
        if not self.sealed or not self.is_mounted or self._freezing:
            return False
        if self.frozen is not None:
            return True
        if self.markdown.outer_size.width != self.outer_size.width:
            return False  # the Markdown is not laid out at this width yet
        strips = draw(self.markdown)
        if strips is None:
            return False
        frozen = Frozen(strips, self.markdown.outer_size.width)
        self._freezing = True
        try:
            with self.app.batch_update():
                await self.mount(frozen, before=self.markdown)
                self.markdown.display = False
        finally:
            self._freezing = False
        self.frozen = frozen
        if self.outer_size.width != frozen.width:  # the width changed while it was being frozen
            await self.thaw()
            self.post_message(self.Thawed(self))
            return False
        return True

    async def freeze(self) -> None:
        """`try_freeze`, again a little later while the layout is not there yet."""
        if self.sealed and not await self.try_freeze():
            self._tries += 1
            if self._tries <= 40:
                self.set_timer(0.05, self.freeze)

    async def thaw(self) -> None:
        """The Markdown again (the width changed, its text is replaced, or the mouse wants links)."""
        if self.frozen is not None:
            frozen, self.frozen = self.frozen, None
            with self.app.batch_update():
                self.markdown.display = True
                await frozen.remove()

    class Thawed(Message):
        """A frozen piece is Markdown again after a change of width: the app freezes it when idle."""

        def __init__(self, piece: Piece) -> None:
            super().__init__()
            self.piece = piece

    async def on_resize(self) -> None:
        if self.frozen is not None and self.frozen.width != self.content_size.width:
            await self.thaw()  # (many pieces thaw at once: freezing them all now would stall the screen)
            self.post_message(self.Thawed(self))

    async def on_mouse_down(self) -> None:
        self.sealed, self.held_open = False, True  # links and text selection need the real widgets
        await self.thaw()


class AssistantMessage(Vertical):
    """One answer: a heading with who wrote it, Markdown that streams, a line of timings.

    While it streams, the answer is cut between finished blocks (`BlockCuts`) into several Markdown
    pieces: the finished ones are sealed (never laid out again) and only the last one grows, so a
    frame costs about the same at the end of a long answer as at its start."""

    SEAL_CHARS = 600  # a sealed piece holds at least this much text (fewer, larger pieces)

    def __init__(self, who: str, text: str = "", meta: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.who, self.text, self._meta = who, text, meta
        self._stream: MarkdownStream | None = None
        self._live: Markdown | None = None
        self._cuts = BlockCuts()
        self._shown = 0  # self.text[:_shown] has been handed to the pieces
        self._piece_start = 0  # where the growing piece's text begins
        self._writing = asyncio.Lock()  # one write at a time: a write may wait while a piece is sealed
        self._unfrozen: list[Piece] = []  # sealed while streaming: frozen with the next write
        self.first_write_at: float | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(self.who), classes="who")
        yield Piece(Markdown(self.text, classes="answer"))
        yield Static(Text(self._meta), classes="meta")

    @property
    def markdown(self) -> Markdown:
        """The first piece of the answer (the whole answer once it is not streaming)."""
        return self.query(Markdown).first()

    @property
    def pieces(self) -> list[Markdown]:
        return list(self.query(Markdown))

    def set_meta(self, text: str) -> None:
        self._meta = text
        self.query_one(".meta", Static).update(Text(text))

    def start(self) -> None:
        self._live = self.pieces[-1]
        self._stream = Markdown.get_stream(self._live)
        self._cuts = BlockCuts()
        self._cuts.feed(self.text)
        self._shown = self._piece_start = len(self.text)

    async def write(self, text: str) -> None:
        async with self._writing:
            await self._write(text)

    async def _write(self, text: str) -> None:
        if self._stream is None:
            self.start()
        for piece in list(self._unfrozen):  # this frame lays the screen out anyway: no extra layout
            if await piece.try_freeze() or not piece.sealed:
                self._unfrozen.remove(piece)
        self.text += text
        if self.first_write_at is None:
            self.first_write_at = time.monotonic()
        for cut in self._cuts.feed(text):
            if cut - self._piece_start >= self.SEAL_CHARS and cut >= self._shown:
                await self._show(cut)
                await self._seal(cut)
        held = self._cuts.undecided  # the start of a line that may begin a new piece: wait for it
        await self._show(len(self.text) if held is None else held)

    async def _show(self, upto: int) -> None:
        if upto > self._shown and self._stream is not None:
            piece, self._shown = self.text[self._shown : upto], upto
            await self._stream.write(piece)

    async def _seal(self, cut: int) -> None:
        """The growing piece is finished: it stays as it is and a new one grows below it."""
        assert self._stream is not None and self._live is not None
        await self._stream.stop()
        self._seal_live(later=False)
        nxt = MoreMarkdown(classes="answer -more")
        await self.mount(Piece(nxt), before=self.query_one(".meta"))
        self._live, self._piece_start = nxt, cut
        self._stream = Markdown.get_stream(nxt)

    def _seal_live(self, later: bool) -> None:
        piece = self._live.parent if self._live is not None else None
        if isinstance(piece, Piece):
            piece.seal(later)
            if not later:
                self._unfrozen.append(piece)

    async def finish(self, meta: str, replace: str | None = None) -> None:
        async with self._writing:
            await self._finish(meta, replace)

    async def _finish(self, meta: str, replace: str | None) -> None:
        if self._stream is not None:
            await self._show(len(self.text))
            await self._stream.stop()
            self._stream = None
        whole = replace if replace is not None else self.text
        if replace is not None and replace != self.text or len(self.pieces) > 1 and needs_whole(whole):
            self._unfrozen.clear()
            await self._redraw(whole)
        else:
            self._seal_live(later=True)
            for piece in self._unfrozen:  # not frozen by a later write: by themselves now
                piece.seal(later=True)
            self._unfrozen.clear()
        self._live = None
        self.set_meta(meta)

    async def _redraw(self, text: str) -> None:
        """Draw `text` again as one document (a replaced answer, or pieces that refer to each other)."""
        self.text = text
        first, *rest = list(self.query(Piece))
        with self.app.batch_update():
            if rest:
                await self.remove_children(rest)
            await first.thaw()
            await first.markdown.update(text)
        first.seal()

    async def freeze_finished(self) -> bool:
        """Freeze an answer that is not streaming (from history) now; False if it cannot be yet."""
        if self._stream is not None:
            return False  # not finished: later
        if self.has_class("-folded"):
            return True  # nothing shown, nothing to freeze
        done = True
        for piece in self.query(Piece):
            if piece.frozen is None:
                piece.seal(later=False)
                if piece.sealed:  # (not: empty, or held open by the mouse)
                    done = await piece.try_freeze() and done
        return done

    def fold(self) -> None:
        """Hide the prose (a refactor's card shows what matters)."""
        self.add_class("-folded")

    @property
    def streaming(self) -> bool:
        return self._stream is not None


class Notice(Static):
    """An inline line from demi-chat itself (errors, results of commands); never from the model."""

    def __init__(self, text: str, kind: str = "info", **kwargs: Any) -> None:
        super().__init__(Text(text), classes=f"notice -{kind}", **kwargs)
        self.text, self.kind = text, kind


class HelpNotice(Markdown):
    pass


class DiffProposal(Vertical):
    """A proposed refactor: the diff (highlighted), notes, and Apply / Reject."""

    class Decided(Message):
        def __init__(self, proposal: DiffProposal, apply: bool) -> None:
            super().__init__()
            self.proposal, self.apply = proposal, apply

    def __init__(
        self, title: str, diff: str, notes: list[str], result: Any = None, resolved: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.title, self.diff, self.notes, self.result = title, diff, notes, result
        self.resolved = resolved

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title), classes="who")
        yield Markdown(fence(self.diff, "diff") if self.diff.strip() else "_(no change)_", classes="diff")
        if self.notes:
            yield Static(Text("\n".join(f"note: {n}" for n in self.notes)), classes="meta")
        yield Static(
            Text(
                "Apply writes it (atomically, with a backup: /undo restores it); Reject drops it. "
                "Or type /apply or /reject."
                if self.resolved is None
                else self.resolved
            ),
            classes="meta state",
        )
        with Horizontal(classes="buttons"):
            yield Button("Apply", id="apply", variant="success", compact=True)
            yield Button("Reject", id="reject", variant="error", compact=True)

    def on_mount(self) -> None:
        if self.resolved is not None or self.result is None or not self.diff.strip():
            self._close(self.resolved or "nothing to apply")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.resolved is None:
            self.post_message(self.Decided(self, event.button.id == "apply"))

    def _close(self, text: str) -> None:
        self.resolved = text
        self.query_one(".buttons").display = False
        self.query_one(".state", Static).update(Text(text))

    def resolve(self, text: str) -> None:
        self._close(text)


class StatusBar(Static):
    """model · quantization · device · tokens/s of the last answer · context used · state."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.fields: dict[str, str] = {
            "model": "no model yet",
            "quant": "",
            "device": "",
            "speed": "",
            "context": "",
            "state": "",
        }

    def set(self, **fields: str) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        parts = [self.fields[k] for k in ("model", "quant", "device", "speed", "context") if self.fields[k]]
        line = " · ".join(parts)
        if self.fields["state"]:
            line += "  │  " + self.fields["state"]
        self.update(Text(line))

    @property
    def line(self) -> str:
        return str(self.render())


class SessionList(OptionList):
    """Past sessions (or search hits); enter opens, r renames, d deletes."""

    BINDINGS = [
        Binding("r,f2", "rename", "rename"),
        Binding("d,delete", "delete", "delete"),
    ]

    class Act(Message):
        def __init__(self, action: str, option_id: str) -> None:
            super().__init__()
            self.action, self.option_id = action, option_id

    def _highlighted_id(self) -> str | None:
        if self.highlighted is None:
            return None
        return self.get_option_at_index(self.highlighted).id

    def action_rename(self) -> None:
        oid = self._highlighted_id()
        if oid:
            self.post_message(self.Act("rename", oid))

    def action_delete(self) -> None:
        oid = self._highlighted_id()
        if oid:
            self.post_message(self.Act("delete", oid))


class Sidebar(Vertical):
    def compose(self) -> ComposeResult:
        yield Input(placeholder="search history", id="search")
        yield SessionList(id="sessions")
        yield Static("", id="history-state")


class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.old = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Rename the session (enter saves, esc cancels)")
            yield Input(value=self.old, id="title")

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        event.stop()
        title = event.value.strip()
        self.dismiss(title or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape,n", "answer(False)", "no"), Binding("y", "answer(True)", "yes")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.question))
            with Horizontal(classes="buttons"):
                yield Button("Delete (y)", id="yes", variant="error", compact=True)
                yield Button("Keep (n)", id="no", compact=True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def last_code_block(texts: list[str]) -> str | None:
    """The last fenced code block in the newest text that has one (for copying)."""
    for text in reversed(texts):
        blocks, current, opener = [], None, ""
        for line in text.splitlines():
            stripped = line.strip()
            if current is None:
                if stripped.startswith(("```", "~~~")):
                    opener = stripped[:3]
                    n = len(stripped) - len(stripped.lstrip(opener[0]))
                    opener = opener[0] * n
                    current = []
            elif stripped.startswith(opener) and stripped.strip(opener[0]) == "":
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line)
        if current:  # a block still open (a stopped answer): take what there is
            blocks.append("\n".join(current))
        if blocks:
            return blocks[-1] + "\n"
    return None
