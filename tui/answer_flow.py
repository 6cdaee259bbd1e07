"""How an answer gets on screen (`AnswerFlow`) and how old answers get cheap (`IdleFreezer`).

Why a part of its own: chat, /explain and /refactor all stream the same way. The worker pushes
text into a `Job`; the screen drains it at the pace `Pacer` allows, so a fast model never keeps
the screen too busy re-laying out the answer for a key press to get through; the end of every
answer (done, stopped or failed) leaves the app ready and sends what was queued meanwhile.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from demi.tui.history import Conversation
from demi.tui.jobs import Flush, Job, Pacer
from demi.tui.labels import one_line
from demi.tui.part import AppPart
from demi.tui.widgets import AssistantMessage, Piece

if TYPE_CHECKING:
    from demi.tui.app import DemiChat

FLUSH_HZ = 10  # answer repaints per second at most (the first piece is shown at once; see Pacer)


class AnswerFlow(AppPart):
    """One answer at a time: started, drained onto the screen, ended (`app.job` while it runs)."""

    def __init__(self, app: DemiChat) -> None:
        super().__init__(app)
        self.pacer = Pacer(FLUSH_HZ)

    async def start(self, kind: str, request: Any, who: str, at: float | None) -> Job:
        """Show the request and an empty answer under it; the job the worker will write into."""
        app = self.app
        widget = AssistantMessage(who, meta="waiting for the model…" if app.loader.engine is None else "thinking…")
        await app.mount_in_log(request, widget)
        job = Job(kind, widget, app.conv, app, at or time.monotonic())
        widget.start()
        app.job = job
        app.status.set(state="answering… esc stops")
        return job

    def save(self, conv: Conversation, role: str, content: str, **fields: Any) -> None:
        """One message into the session store (queued: the store's writer thread does it)."""
        self.app.history.append(conv, role, content, **fields)

    async def drain(self, job: Job, final: bool = False) -> None:
        """Move the job's pending text onto the screen when the pacer allows (see `Pacer`): a fast
        model never keeps the screen so busy re-laying out the answer that a key press has to wait."""
        if job.done:
            return
        now = time.monotonic()
        wait = self.pacer.delay(job.last_write, now)
        if wait > 0 and not final:
            if not job.timer:  # keep `scheduled` set: the worker posts nothing until this fires
                job.timer = True
                self.app.set_timer(wait, lambda: self._flush_timer(job))
            return
        text = job.take()
        if not text:
            return
        job.last_write = now
        first = job.widget.first_write_at is None
        await job.widget.write(text)
        if first:
            job.widget.set_meta("writing… (esc stops)")
        self.app.call_after_refresh(self._painted, job, now, first)

    def _painted(self, job: Job, written: float, first: bool) -> None:
        now = time.monotonic()
        self.pacer.painted(now - written)
        if first:
            job.first_paint_at = now

    def _flush_timer(self, job: Job) -> None:
        job.timer = False
        self.app.post_message(Flush(job))

    async def end(self, job: Job, meta: str, replace: str | None = None, ok: bool = True) -> None:
        """The answer is over: the last text, its line of timings, and the app ready for the next one
        (even if drawing the end fails: a stuck "answering…" would refuse everything after it)."""
        app = self.app
        try:
            await self.drain(job, final=True)
            job.done = True
            await job.widget.finish(meta, replace)
        except Exception as exc:  # shown, and the answer's text is kept in the session all the same
            job.done = True
            await app.say(f"could not draw the end of the answer: {one_line(exc)}", "error")
        if app.job is job:
            app.job = None
        app.last_job = job
        app.status.set(state="ready")
        if app.outbox:
            if ok:  # finished or stopped: what was queued (after the Esc, if any) goes now
                app.call_later(app.submitter.send_queued)
            else:
                app.submitter.unqueue("not sent because the answer before it failed")

    def show_speed(self, tokens: int, tps: float | None, used: int | None, context: int | None) -> None:
        """The last answer's speed and context use, in the status bar."""
        self.app.status.set(
            speed=f"{tps:.1f} tok/s" if tps else "",
            context=(f"ctx {used}/{context}" if context else f"ctx {used}") if used else "",
        )


class IdleFreezer(AppPart):
    """Answers shown from history, drawn into frozen lines one at a time while the user is idle:
    each costs a full draw once, then makes every later frame cheaper (Textual lays out hidden
    widgets too). See tui/frozen.py."""

    def __init__(self, app: DemiChat) -> None:
        super().__init__(app)
        self.unfrozen: list[AssistantMessage] = []  # newest last
        self._typed_at = 0.0
        self._tries: dict[AssistantMessage, int] = {}

    def typed(self) -> None:
        """The user is typing: freezing waits (a frozen draw would delay the keys)."""
        self._typed_at = time.monotonic()

    async def freeze_one(self) -> None:
        """One answer from history (the newest first) frozen, while nothing streams and the user is
        not typing."""
        if not self.unfrozen or self.app.job is not None or time.monotonic() - self._typed_at < 1.0:
            return
        message = self.unfrozen[-1]
        self._tries[message] = tries = self._tries.get(message, 0) + 1
        if not message.is_mounted or tries > 20 or await message.freeze_finished():
            self.unfrozen.pop()
            self._tries.pop(message, None)

    def thawed(self, piece: Piece) -> None:
        """A frozen piece came back to life (a click, a resize): freeze its answer again later."""
        message = next((a for a in piece.ancestors if isinstance(a, AssistantMessage)), None)
        if message is not None and message not in self.unfrozen:
            self.unfrozen.insert(0, message)  # after the ones already waiting (newest last)
