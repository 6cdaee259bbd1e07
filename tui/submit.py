"""`Submitter`: what Enter does with the message box's text.

A command runs, a message goes to the chat, and while an answer streams the text waits in the
outbox (`outbox.Outbox`) to go when the answer ends. Why this care: typed text is never lost.
Whatever cannot be sent (a bad @path, a model that failed to load) goes back into the box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.widgets import Static

from demi.assistant.chat import load_mentions
from demi.assistant.errors import DemiUserError
from demi.tui import commands as cmds
from demi.tui.code_tasks import load_target
from demi.tui.labels import one_line
from demi.tui.outbox import back_in_box
from demi.tui.part import AppPart

if TYPE_CHECKING:
    from demi.tui.app import DemiChat


class Submitter(AppPart):
    """Enter's text to a command, the chat or the queue; the queue's strip above the box."""

    def __init__(self, app: DemiChat) -> None:
        super().__init__(app)
        self._accepted = False  # set when a submitted text was taken (the box cleared)

    async def submitted(self, text: str, at: float) -> None:
        """Enter in the message box: queue the text while an answer streams, else submit it."""
        if not text.strip():
            return
        if self.app.busy and cmds.waits_for_answer(text):
            await self._enqueue(text)
            return
        await self.submit(text, at)

    async def submit(self, text: str, at: float | None = None) -> None:
        """Enter's text: a command, or a message (`//x` sends "/x")."""
        parsed = cmds.parse(text)
        if parsed is not None:
            await self.app.commands.run(parsed[0], parsed[1], text)
            return
        if text.lstrip().startswith("//"):
            text = text.lstrip()[1:]
        await self.app.chat.send(text, at)

    def accept(self, text: str) -> None:
        """The message is on its way: clear the box, remember it for Up."""
        self._accepted = True
        prompt = self.app.prompt
        prompt.remember(text)
        prompt.load_text("")

    def back_to_box(self, texts: list[str]) -> None:
        """Texts that were not sent go back into the box, above whatever is being typed there."""
        prompt = self.app.prompt
        prompt.load_text(back_in_box(texts, prompt.text))
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    async def refuse_busy(self, then: str = "") -> bool:
        """While an answer streams, an action that needs the model or the session waits: say so."""
        if self.app.busy:
            await self.app.say(
                "Demi is still answering: Esc stops it"
                + (f", then {then}" if then else "; your text stays in the box"),
                "warning",
            )
            return True
        return False

    # -- the queue: Enter while an answer streams ----------------------------------------------------

    async def _enqueue(self, text: str) -> None:
        error = self._queue_problem(text)
        if error is not None:
            await self.app.say(f"{error} (nothing was queued; your text stays in the box)", "error")
            return
        self.app.outbox.add(text)
        self.accept(text)
        self.show_queue()

    def _queue_problem(self, text: str) -> str | None:
        """What would refuse `text` later, found now while the user is here: a bad @path, a missing
        file or symbol for /explain or /refactor, a command without its arguments."""
        app = self.app
        parsed = cmds.parse(text)
        try:
            if parsed is None:
                body = text.lstrip()[1:] if text.lstrip().startswith("//") else text
                load_mentions(body, app.root, app.max_bytes)
            elif parsed[0] in ("explain", "refactor", "fix"):
                name, rest = parsed
                parts = rest.split(None, 1)
                if not parts or name == "refactor" and len(parts) < 2:
                    return "usage: " + cmds.BY_NAME[name].usage
                load_target(rest if name == "explain" else parts[0], app.root, app.max_bytes)
        except DemiUserError as exc:
            return one_line(exc)
        return None

    def show_queue(self) -> None:
        """The strip above the box that lists the queued texts (hidden when there are none)."""
        app = self.app
        strip = app.query_one("#queued", Static)
        strip.update(app.outbox.describe(max(20, app.log_view.size.width)))
        strip.set_class(bool(app.outbox), "-shown")

    async def send_queued(self) -> None:
        """The answer ended: send the next queued text (what cannot be sent goes back to the box)."""
        app = self.app
        if app.busy:
            return  # something else started first; the queue moves on when it ends
        text = app.outbox.pop()
        self.show_queue()
        if text is None:
            return
        self._accepted = False
        await self.submit(text)
        if not self._accepted:  # refused (a file gone since, a model still loading): nothing is lost
            self.back_to_box([text])
            await app.say("the queued message was not sent; it is back in the box", "warning")
        elif not app.busy and app.outbox:  # a command that started no answer (/new): the next one
            app.call_later(self.send_queued)

    def unqueue(self, why: str) -> None:
        """Queued texts back into the box at once (the line saying so follows)."""
        texts = self.app.outbox.take_all()
        self.show_queue()
        if texts:
            self.back_to_box(texts)
            n = len(texts)
            self.app.call_later(
                self.app.say,
                f"{why}: {'your queued message is' if n == 1 else f'{n} queued messages are'}"
                " back in the box (Enter sends)",
                "warning",
            )
