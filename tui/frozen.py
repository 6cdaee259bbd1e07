"""Finished Markdown drawn from the lines it already had on screen.

Why: Textual lays out every widget of the screen again whenever anything changes size, hidden
parts of the conversation included, so each streamed frame of an answer cost more the more
Markdown blocks (lists are four widgets an item) the session held. A finished piece of Markdown is
drawn once more off screen, at its width, and replaced by one `Frozen` widget holding those lines;
the Markdown stays, hidden, and comes back when the width changes (then is frozen again).
"""

from __future__ import annotations

from typing import Any

from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget


def draw(widget: Widget) -> list[Strip] | None:
    """The lines `widget` shows at its current size, or None when they cannot be had: not laid out
    as it is now (a block added, grown or resized since the screen's last layout: it would be drawn
    at a stale size), or a Textual whose compositor works differently (the widget then simply stays
    as it is)."""
    size = widget.outer_size
    if not widget.is_mounted or not size.width or not size.height or not laid_out(widget):
        return None
    try:
        from textual._compositor import Compositor

        compositor = Compositor()
        compositor.reflow(widget, size)
        for part, geometry in compositor.full_map.items():  # every block at the size it will draw at
            if part is not widget and part.outer_size != geometry.region.size:
                return None
        strips = compositor.render_strips(size)
    except Exception:  # a private API: any change in it only costs the optimisation
        return None
    return strips if len(strips) == size.height else None


def laid_out(widget: Widget) -> bool:
    """Whether the screen's last layout of `widget` matches its children as they are now (a block
    mounted or grown since then would be drawn at a stale size)."""
    try:
        arranged = widget.arrange(widget.content_size.with_height(0)).total_region.height
    except Exception:  # no layout of its own (or a Textual that arranges differently)
        return False
    return arranged + widget.styles.gutter.height == widget.outer_size.height


class Frozen(Widget):
    """Lines drawn earlier, drawn again as they are; a mouse press brings the real widgets back
    (links, selecting text), see `Piece`."""

    DEFAULT_CSS = """
    Frozen {
        height: auto;
    }
    """

    def __init__(self, strips: list[Strip], width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.strips, self.width = strips, width

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.strips)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return self.width

    def render_line(self, y: int) -> Strip:
        return self.strips[y] if 0 <= y < len(self.strips) else Strip.blank(self.size.width)
