"""`ChatTask`: a message to the model and its streamed answer, saved in the session.

Why the care on failure: a message that never reached the model goes back into the box (with
what was queued after it); what the model wrote before a failure is kept on screen and saved.
"""

from __future__ import annotations

from typing import Any

from demi.assistant.chat import (
    Attachment,
    Turn,
    answer,
    chat_sampling,
    load_mentions,
    prepare_chat,
    session_title,
)
from demi.assistant.errors import DemiUserError
from demi.tui.jobs import Job
from demi.tui.labels import fmt_speed, one_line
from demi.tui.part import AppPart
from demi.tui.widgets import UserMessage


class ChatTask(AppPart):
    """Chat messages: sent from the box, answered in a thread worker (group "engine")."""

    async def send(self, text: str, at: float | None = None) -> None:
        """Send a message (its @mentions attached) and start its answer."""
        app = self.app
        if await app.submitter.refuse_busy():
            return
        try:
            attachments = load_mentions(text, app.root, app.max_bytes)
        except DemiUserError as exc:
            await app.say(f"{one_line(exc)} (nothing was sent; your message stays in the box)", "error")
            return
        app.submitter.accept(text)
        if not app.conv.session_id and not app.conv.title:
            app.conv.title = session_title(text)
        job = await app.answers.start(
            "chat", UserMessage(text, [a.describe() for a in attachments]), app.loader.who(), at
        )
        self.thread_worker("engine", self._answer_in_thread, job, text, attachments, list(app.turns))

    def _answer_in_thread(self, job: Job, text: str, attachments: list[Attachment], history: list[Turn]) -> None:
        app = self.app
        save = app.answers.save
        engine = app.loader.wait_for_engine(job)
        if engine is None:
            app.from_thread(
                self._failed, job, text, None, app.loader.engine_error or "stopped before the model was ready"
            )
            return
        max_tokens = int(app.config["chat.max_tokens"])
        try:
            sampling = chat_sampling(app.config["chat.temperature"])
            built = prepare_chat(engine, history, text, attachments, max_tokens, int(app.config["chat.context_tokens"]))
        except DemiUserError as exc:
            app.from_thread(self._failed, job, text, None, one_line(exc))
            return
        meta: dict[str, Any] = {"attachments": [a.as_meta() for a in attachments]} if attachments else {}
        if built.turn.context:
            meta["context"] = built.turn.context
        save(job.conv, "user", text, meta=meta or None)
        try:
            result = answer(engine, built, max_tokens, on_text=job.push, cancel=job.cancel, sampling=sampling)
        except Exception as exc:  # a failure mid-answer keeps what arrived
            self._save_partial(job, engine)
            app.from_thread(self._failed, job, text, built.turn, one_line(exc))
            return
        shown = job.text
        if shown.strip() or result.finish_reason != "cancelled":
            save(
                job.conv,
                "assistant",
                shown,
                model=result.model,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                seconds=round(result.seconds, 4),
                meta=result.as_meta(),
            )
        app.from_thread(self._done, job, built.turn, result)

    def _save_partial(self, job: Job, engine: Any) -> None:
        if job.text.strip():
            self.app.answers.save(
                job.conv, "assistant", job.text, model=getattr(engine, "name", None), meta={"finish_reason": "error"}
            )

    async def _done(self, job: Job, turn: Turn, result: Any) -> None:
        app = self.app
        if job.conv is app.conv:
            app.turns.append(turn)
            if job.text.strip():
                app.turns.append(Turn("assistant", job.text))
        tps = result.tokens_per_second
        stopped = result.finish_reason == "cancelled"
        parts = [("stopped · " if stopped else "") + fmt_speed(result.completion_tokens, tps)]
        if result.finish_reason == "length":
            parts.append("cut at chat.max_tokens")
        if result.dropped_turns:
            parts.append(f"{result.dropped_turns} earlier messages left out to fit the context")
        if not job.text.strip():
            parts.insert(0, "(the model wrote nothing)")
        await app.answers.end(job, " · ".join(parts))
        app.answers.show_speed(result.completion_tokens, tps, result.context_used, result.context)

    async def _failed(self, job: Job, text: str, turn: Turn | None, error: str) -> None:
        app = self.app
        got = bool(job.text.strip())
        if turn is not None and job.conv is app.conv:
            app.turns.append(turn)
            if got:
                app.turns.append(Turn("assistant", job.text))
        back = turn is None and bool(text.strip())  # never sent: the text goes back in the box
        queued = app.outbox.take_all()  # and what was queued after it, in the order it was typed
        app.submitter.show_queue()
        if back or queued:
            app.submitter.back_to_box(([text] if back else []) + queued)
        if back:
            error += " (your message is back in the box" + (", with the ones queued after it)" if queued else ")")
        elif queued:
            error += f" ({len(queued)} queued message{'s' if len(queued) > 1 else ''} back in the box, not sent)"
        await app.say(error, "error")
        await app.answers.end(job, "failed" + (" (what arrived is kept)" if got else ""), ok=False)
