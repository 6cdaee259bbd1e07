"""`AppPart`: the base of the plain helper objects that `DemiChat` composes.

Why plain objects and not widgets or mixins: each part (sessions, slash commands, the answer
tasks, the model loader) is behaviour over the app's shared state, not something on screen, and
Textual only finds message handlers (`@on`, `on_*`) on the App, screens and widgets. So the app
keeps every handler and forwards to a part; a part reaches the screen through `self.app`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.worker import Worker

if TYPE_CHECKING:
    from demi.tui.app import DemiChat


class AppPart:
    """One part of the chat app, holding the app it belongs to."""

    def __init__(self, app: DemiChat) -> None:
        self.app = app

    def thread_worker(self, group: str, fn: Callable[..., None], *args: Any, exclusive: bool = False) -> Worker[None]:
        """Run `fn(*args)` in a Textual thread worker of the app, as `@work(thread=True, group=...,
        exit_on_error=False)` would (that decorator needs a DOM node as `self`; a part is not one)."""
        name = getattr(fn, "__name__", "worker")
        return self.app.run_worker(
            partial(fn, *args),
            name=name,
            group=group,
            description=f"{name}()",
            exit_on_error=False,
            exclusive=exclusive,
            thread=True,
        )
