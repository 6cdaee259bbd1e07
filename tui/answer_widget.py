"""`AssistantMessage`: an answer in the log, streamed as Markdown in pieces (`Piece`).

Why pieces: Textual re-parses and re-lays out a Markdown widget whole on every append, so a long
answer would get slower with every token. The answer is cut into pieces at block boundaries
(`blocks.BlockCuts`); a finished piece is sealed (its layout cached) and later frozen into plain
drawn lines (`frozen.Frozen`), so only the last piece costs anything while text streams.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.await_complete import AwaitComplete
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from demi.tui.blocks import BlockCuts, needs_whole
from demi.tui.frozen import Frozen, draw


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
