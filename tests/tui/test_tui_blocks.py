"""Cutting a streamed answer into sealed Markdown pieces: where cuts go, and that the pieces look
exactly like the whole answer drawn as one document (same lines on screen)."""

from __future__ import annotations

import asyncio

import pytest
from textual.app import App, ComposeResult
from textual.containers import VerticalScroll

from demi.tui.blocks import BlockCuts, needs_whole, starts_block
from demi.tui.style import CSS
from demi.tui.widgets import AssistantMessage, Piece

DOC = (
    "# Title\n\nA paragraph with `code` and **bold**,\nwrapped on two lines.\n\n```python\ndef f(x):\n\n"
    "    return x\n```\n\n- one\n- two\n\n- three, loose\n\n1. first\n\n2. second\n\n    indented code\n\n"
    "## Sub\n\nText after.\n\n> a quote\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n---\n\n### Third level\n\n"
    "~~~\nplain fence\n\n~~~\n\n**bold start** and 12 apples\n\n12 apples again\n\nEnd.\n"
)


def cuts_of(text: str, step: int) -> tuple[list[int], int | None]:
    b = BlockCuts()
    found: list[int] = []
    for i in range(0, len(text), step):
        found += b.feed(text[i : i + step])
    return found, b.undecided


@pytest.mark.parametrize("step", [1, 2, 7, 10_000])
def test_cuts_only_between_blocks_that_cannot_join(step):
    found, undecided = cuts_of(DOC, step)
    starts = [DOC[c:].split("\n", 1)[0] for c in found]
    assert starts == [
        "A paragraph with `code` and **bold**,",
        "```python",
        "## Sub",
        "Text after.",
        "> a quote",
        "| a | b |",
        "---",
        "### Third level",
        "~~~",
        "**bold start** and 12 apples",
        "12 apples again",
        "End.",
    ]
    assert all(DOC[c - 2 : c] == "\n\n" for c in found) and undecided is None


def test_a_line_is_held_until_it_can_be_decided():
    assert [starts_block(x) for x in ("", "-", "- ", "-x", "1", "12", "12.", "12. ", "12.5", "  x", "#")] == [
        None,
        None,
        False,
        True,
        None,
        None,
        None,
        False,
        True,
        False,
        True,
    ]
    b = BlockCuts()
    assert b.feed("para\n\n") == [] and b.undecided == 6
    assert b.feed("1") == [] and b.undecided == 6
    assert b.feed(". item") == [] and b.undecided is None
    assert b.feed("\n\nnext") == [15]


def test_needs_whole_for_cross_block_references():
    assert needs_whole("see [the docs][1]\n\n[1]: https://example.com\n")
    assert needs_whole("<!-- a\n\nb -->\n") and not needs_whole("plain [link](x) and `<pre>`\n")


class Host(App[None]):
    """The message alone on a screen; thawed pieces are frozen again as demi-chat does when idle."""

    CSS = CSS

    def __init__(self, message: AssistantMessage) -> None:
        super().__init__()
        self.message = message
        self.thawed = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="log"):
            yield self.message

    def on_mount(self) -> None:
        self.set_interval(0.05, self._refreeze)

    def on_piece_thawed(self) -> None:
        self.thawed = True

    async def _refreeze(self) -> None:
        if self.thawed and await self.message.freeze_finished():
            self.thawed = False


async def frozen_all(pilot, message: AssistantMessage) -> None:
    """Wait until every piece of a finished answer is drawn from its frozen lines."""
    for _ in range(200):
        if all(p.frozen is not None for p in message.query(Piece)):
            return
        await pilot.pause(0.02)
    raise AssertionError([p.frozen is not None for p in message.query(Piece)])


def lines_of(app: App) -> list[str]:
    return [strip.text.rstrip() for strip in app.screen._compositor.render_strips()]


async def screen_lines(text: str, stream_step: int | None, width: int = 70) -> tuple[list[str], int]:
    message = AssistantMessage("demi", "" if stream_step else text, "done")
    message.SEAL_CHARS = 1  # cut wherever it may: the strictest check of the pieces' looks
    app = Host(message)
    async with app.run_test(size=(width, 120)) as pilot:
        await pilot.pause()
        if stream_step:
            message.start()
            for i in range(0, len(text), stream_step):
                await message.write(text[i : i + stream_step])
            await message.finish("done")
            await frozen_all(pilot, message)  # a history answer stays one Markdown: nothing to freeze
        await pilot.pause()
        return lines_of(app), len(message.pieces)


@pytest.mark.asyncio
@pytest.mark.parametrize("step", [3, 50])
async def test_sealed_pieces_look_like_the_whole_answer(step):
    whole, one = await screen_lines(DOC, None)
    streamed, pieces = await screen_lines(DOC, step)
    assert one == 1 and pieces == 13
    assert streamed == whole


@pytest.mark.asyncio
async def test_writes_that_overlap_a_seal_wait_for_it():
    """The app drains an answer from a Flush handler and from the end of the job, which can overlap
    while a piece is being sealed; the second write must wait, not write to the stopped stream."""
    message = AssistantMessage("demi", "")
    message.SEAL_CHARS = 1
    app = Host(message)
    async with app.run_test(size=(70, 60)) as pilot:
        await pilot.pause()
        message.start()
        await message.write("# Title\n\nFirst paragraph.\n\n")
        await asyncio.gather(message.write("Second paragraph.\n\n"), message.write("Third."), message.finish("done"))
        await frozen_all(pilot, message)
        assert message.text.endswith("Second paragraph.\n\nThird.") and len(message.pieces) == 4
        assert [line for line in lines_of(app) if line.strip(" ▌")][-2:] == [" ▌ Third.", " ▌ done"]


@pytest.mark.asyncio
async def test_frozen_pieces_follow_a_change_of_width_and_the_mouse():
    narrow, _ = await screen_lines(DOC, None, width=50)
    message = AssistantMessage("demi", "", "done")
    message.SEAL_CHARS = 1
    app = Host(message)
    async with app.run_test(size=(70, 120)) as pilot:
        await pilot.pause()
        message.start()
        await message.write(DOC)
        await message.finish("done")
        await frozen_all(pilot, message)
        assert not any(m.display for m in message.pieces)  # drawn from frozen lines only
        await pilot.resize_terminal(50, 120)
        await pilot.pause()
        await frozen_all(pilot, message)  # thawed, laid out at the new width, frozen again
        assert lines_of(app) == narrow
        assert {p.frozen.width for p in message.query(Piece)} == {message.query_one(Piece).content_size.width}
        first = message.query_one(Piece)
        await pilot.click(Piece, offset=(5, 2))  # the mouse gets the real Markdown back (links, selecting)
        assert first.frozen is None and first.markdown.display and not first.sealed
        await pilot.pause()
        assert lines_of(app) == narrow
