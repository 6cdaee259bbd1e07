"""demi-chat: the terminal home of Demi (a Textual app on top of `demi.assistant`).

Threads: the screen runs on Textual's event loop and never waits for a model or a database.
The engine is loaded by a thread worker; each answer (chat, /explain, /refactor) runs in one
thread worker at a time (the in-process engine is not thread-safe), streams its pieces into a
buffer (`jobs.Job`) that the screen drains, paced by `jobs.Pacer`, into the answer's widget
(which streams Markdown in pieces and freezes the finished ones, see `widgets.AssistantMessage`),
and is stopped with Esc through the engine's cancel token. Enter during an answer queues the
message (`outbox.Outbox`). Session history goes through `History` (one writer thread, queued and
retried writes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Footer, Input, OptionList, Static, TextArea
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from demi.assistant.chat import (
    Attachment,
    EngineDetails,
    TargetSpec,
    Turn,
    answer,
    attachment_context,
    chat_sampling,
    engine_details,
    load_attachment,
    load_mentions,
    parse_target,
    prepare_chat,
    session_title,
    symbol_names,
    turns_from_messages,
)
from demi.assistant.errors import DemiError, DemiUserError
from demi.assistant.store import DB_NAME, Session, StoreError
from demi.assistant.store import Message as StoredMessage
from demi.tui import commands as cmds
from demi.tui.completion import Completion, complete
from demi.tui.history import Conversation, History, SearchHit
from demi.tui.jobs import Flush, Job, Pacer
from demi.tui.outbox import Outbox, back_in_box
from demi.tui.style import CSS as STYLE
from demi.tui.widgets import (
    AssistantMessage,
    ConfirmScreen,
    DiffProposal,
    HelpNotice,
    Notice,
    Piece,
    PromptInput,
    RenameScreen,
    SessionList,
    Sidebar,
    StatusBar,
    UserMessage,
    last_code_block,
)

FREEZE_EVERY = 0.3  # an answer from history is frozen (see tui/frozen.py) at most this often, while idle
FLUSH_HZ = 10  # answer repaints per second at most (the first piece is shown at once; see Pacer)
WELCOME = (
    "Ask about your code.  @path attaches a file, @path:symbol one definition, @path:10-40 lines.\n"
    "/explain PATH[:SYMBOL]  ·  /refactor PATH[:SYMBOL] INSTRUCTION  ·  /model  ·  /help\n"
    "Enter sends · ctrl+j new line · Tab completes · Esc stops the answer · ctrl+q quits"
)


def settle_heap() -> None:
    """Collect once, then freeze what is alive (the model, the widgets) out of the collector's way:
    a full collection over a loaded model takes 100 ms and more, which would freeze the screen in
    the middle of an answer. Unfrozen first, so a replaced model's cycles can still be freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HistoryEvent(Message):
    def __init__(self, event: str, data: Any) -> None:
        super().__init__()
        self.event, self.data = event, data


def _when(t: float) -> str:
    day = _dt.date.fromtimestamp(t)
    today = _dt.date.today()
    if day == today:
        return "today"
    if (today - day).days == 1:
        return "yesterday"
    return day.isoformat()


SIDEBAR_TEXT = 30


def model_label(name: str) -> str:
    """A model's name for the screen: a local directory by its folder name, anything else as given."""
    p = Path(name).expanduser()
    return p.name if ("/" in name or "\\" in name) and p.is_dir() else name


def clip(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def marked(snippet: str) -> Text:
    """A search snippet with the store's [match] markers shown as highlights."""
    out = Text(style="dim")
    for i, part in enumerate(re.split(r"\[([^\[\]\n]+)\]", snippet)):
        out.append(part, style="bold reverse" if i % 2 else "")
    return out


def fmt_speed(tokens: int, tps: float | None) -> str:
    return f"{tokens} tokens" + (f" · {tps:.1f} tok/s" if tps else "")


class DemiChat(App[None]):
    """The chat app. Everything it needs can be injected (tests, benchmarks, `demi chat`)."""

    CSS = STYLE
    TITLE = "demi-chat"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("escape", "escape", "stop"),
        Binding("ctrl+n", "new_session", "new"),
        Binding("ctrl+s", "toggle_sidebar", "sessions"),
        Binding("ctrl+f", "search", "search"),
        Binding("ctrl+o", "copy_code", "copy code"),
        Binding("f1", "help", "help"),
        Binding("ctrl+q", "quit", "quit", priority=True),
    ]

    def __init__(
        self,
        config: Any = None,
        *,
        flags: dict[str, Any] | None = None,
        engine: Any = None,
        engine_factory: Callable[[str | None, str | None], Any] | None = None,
        data_dir: Path | None = None,
        session: str | None = None,
        root: Path | None = None,
        sidebar: bool | None = None,
    ):
        super().__init__()
        from demi.assistant.config import data_dir as default_data_dir
        from demi.assistant.config import load_config

        self.flags = dict(flags or {})
        self.config = config if config is not None else load_config(self.flags)
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir(self.config)
        self.root = Path(root) if root is not None else Path.cwd()
        self.max_bytes = int(float(self.config["max_file_mb"]) * 1024 * 1024)
        self.engine = engine
        self.engine_factory = engine_factory or self._default_factory
        self.current_model: str | None = self.flags.get("model") or self.config["model"]
        self.current_quant: str | None = self.flags.get("quant") or self.config["quant"]
        self.details: EngineDetails | None = None
        self.engine_error: str | None = None
        self._engine_ready = threading.Event()
        self.loading = False
        self.resume_id = session
        self.sidebar_wanted = sidebar
        self.history = History(
            self.data_dir / DB_NAME,
            float(self.config["db_timeout"]),
            notify=lambda event, data: self.post_message(HistoryEvent(event, data)),
        )
        self.conv = Conversation(model=self.current_model)
        self.turns: list[Turn] = []
        self.job: Job | None = None
        self.outbox = Outbox()
        self._unfrozen: list[AssistantMessage] = []  # answers from history, frozen while the user idles
        self._typed_at = 0.0
        self._freeze_tries: dict[AssistantMessage, int] = {}
        self._accepted = False
        self.pacer = Pacer(FLUSH_HZ)
        self.last_job: Job | None = None
        self.proposal: DiffProposal | None = None
        self.applied: list[Path] = []
        self._search_timer: Any = None
        self.unsaved_file: Path | None = None
        self._titles: dict[str, str] = {}

    # -- layout ------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="body"):
            yield Sidebar(id="sidebar")
            with Vertical(id="main"):
                with VerticalScroll(id="log"):
                    yield Static(Text(WELCOME), id="welcome")
                yield Static("", id="hints")
                yield Static("", id="queued")
                yield PromptInput(self._complete, id="prompt", placeholder="Message Demi  (/help for commands)")
        yield StatusBar(id="status")
        yield Footer()

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    @property
    def log_view(self) -> VerticalScroll:
        return self.query_one("#log", VerticalScroll)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    def on_mount(self) -> None:
        self.prompt.focus()
        self.log_view.anchor()
        wanted = self.sidebar_wanted if self.sidebar_wanted is not None else self.size.width >= 100
        self.query_one("#sidebar").set_class(not wanted, "-hidden")
        where = self.config["server"] or self.current_model or "the default model"
        self.status.set(model=str(where), state="starting…" if self.engine is not None else "loading the model…")
        self.loading = True
        self._load_worker(self.current_model, self.current_quant, False)  # an injected engine is described there
        self.set_interval(FREEZE_EVERY, self._freeze_history)
        self._open_history_worker()

    # -- small helpers -----------------------------------------------------------------------------

    def _from_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.call_from_thread(fn, *args)
        except RuntimeError:  # the app has gone (exiting): nothing left to update
            pass

    async def say(self, text: str, kind: str = "info") -> Notice:
        notice = Notice(text, kind)
        await self._mount(notice)
        return notice

    async def _mount(self, *widgets: Any) -> None:
        for w in self.query("#welcome"):
            await w.remove()
        await self.log_view.mount_all(widgets)
        self.log_view.scroll_end(animate=False)

    @property
    def busy(self) -> bool:
        return self.job is not None

    def _complete(self, text: str, cursor: int) -> Completion | None:
        return complete(text, cursor, self.root, symbols=symbol_names)

    # -- the engine --------------------------------------------------------------------------------

    def _default_factory(self, model: str | None, quant: str | None) -> Any:
        from demi.assistant.config import load_config
        from demi.assistant.engines import engine_from_config

        flags = dict(self.flags)
        flags.update({"model": model, "quant": quant})
        return engine_from_config(load_config(flags))

    @work(thread=True, group="load", exit_on_error=False)
    def _load_worker(self, model: str | None, quant: str | None, announce: bool = True) -> None:
        """Load (or, for an injected engine, describe) the engine; the previous one stays on failure."""
        started = time.monotonic()
        given = self.engine if self.details is None else None  # injected: describe it, load nothing
        try:
            engine = given if given is not None else self.engine_factory(model, quant)
            details = engine_details(engine)  # for a server: the first request, so a dead one shows here
        except Exception as exc:  # any failure to load is shown on screen
            if given is not None:
                self.engine = None
            if self.engine is None:
                self.engine_error = f"no model: {one_line(exc)}"
            self._engine_ready.set()
            self._from_thread(self._engine_failed, one_line(exc), model)
            return
        old, self.engine = self.engine, engine
        if given is None:
            self.current_model, self.current_quant = model, quant
        self.engine_error = None
        if old is not None and old is not engine:
            try:
                old.close()
            except Exception:  # closing the previous engine is best effort
                pass
        del old
        settle_heap()
        self._engine_ready.set()
        self._from_thread(self._engine_loaded, details, announce, time.monotonic() - started)

    def _engine_loaded(self, details: EngineDetails, announce: bool = True, seconds: float = 0.0) -> None:
        self.loading = False
        self.details = details
        self.conv.model = self.conv.model or details.model
        where = details.device or (details.url if details.kind == "http" else "")
        quant = (
            "server"
            if details.kind == "http"
            else (details.dtype if details.quant in (None, "none") and details.dtype else details.quant)
        )
        self.status.set(
            model=model_label(details.model),
            quant=quant or "",
            device=where or "",
            context=f"ctx {details.context}" if details.context else "",
            speed="",
            state="ready" if not self.busy else self.status.fields["state"],
        )
        if announce:
            self.call_later(
                self.say, f"now using {model_label(details.model)} ({quant}, {where}); loaded in {seconds:.1f}s"
            )

    async def _engine_failed(self, error: str, model: str | None) -> None:
        self.loading = False
        if self.engine is None:
            self.status.set(state="no model")
            await self.say(f"cannot load the model: {error}. Pick another with /model NAME (see /help).", "error")
        else:
            self.status.set(state="ready")
            await self.say(
                f"cannot switch to {model}: {error}. "
                f"Still using {self.details.model if self.details else 'the previous model'}.",
                "error",
            )

    def _wait_engine(self, job: Job) -> Any:
        """In a worker: the engine once it is loaded; None when loading failed or the job was stopped."""
        while not self._engine_ready.wait(0.05):
            if job.cancel.cancelled:
                return None
        return None if job.cancel.cancelled else self.engine

    # -- sending -----------------------------------------------------------------------------------

    @on(PromptInput.Hints)
    def _hints(self, event: PromptInput.Hints) -> None:
        hints = self.query_one("#hints", Static)
        shown = event.candidates[:60]
        hints.update(Text("  ".join(shown) + ("  …" if len(event.candidates) > 60 else "")))
        hints.set_class(bool(shown), "-shown")

    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return
        if self.busy and cmds.waits_for_answer(text):
            await self._enqueue(text)
            return
        await self._submit(text, event.at)

    async def _submit(self, text: str, at: float | None = None) -> None:
        """Enter's text: a command, or a message (`//x` sends "/x")."""
        parsed = cmds.parse(text)
        if parsed is not None:
            await self.run_command(parsed[0], parsed[1], text)
            return
        if text.lstrip().startswith("//"):
            text = text.lstrip()[1:]
        await self.send(text, at)

    def _accept(self, text: str) -> None:
        """The message is on its way: clear the box, remember it for Up."""
        self._accepted = True
        self.prompt.remember(text)
        self.prompt.load_text("")

    def _to_box(self, texts: list[str]) -> None:
        """Texts that were not sent go back into the box, above whatever is being typed there."""
        self.prompt.load_text(back_in_box(texts, self.prompt.text))
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()

    # -- the queue: Enter while an answer streams ----------------------------------------------------

    async def _enqueue(self, text: str) -> None:
        error = self._queue_check(text)
        if error is not None:
            await self.say(f"{error} (nothing was queued; your text stays in the box)", "error")
            return
        self.outbox.add(text)
        self._accept(text)
        self._show_queue()

    def _queue_check(self, text: str) -> str | None:
        """What would refuse `text` later, found now while the user is here: a bad @path, a missing
        file or symbol for /explain or /refactor, a command without its arguments."""
        parsed = cmds.parse(text)
        try:
            if parsed is None:
                body = text.lstrip()[1:] if text.lstrip().startswith("//") else text
                load_mentions(body, self.root, self.max_bytes)
            elif parsed[0] in ("explain", "refactor"):
                name, rest = parsed
                parts = rest.split(None, 1)
                if not parts or name == "refactor" and len(parts) < 2:
                    return "usage: " + cmds.BY_NAME[name].usage
                self._target(parts[0] if name == "refactor" else rest)
        except DemiUserError as exc:
            return one_line(exc)
        return None

    def _show_queue(self) -> None:
        strip = self.query_one("#queued", Static)
        strip.update(self.outbox.describe(max(20, self.log_view.size.width)))
        strip.set_class(bool(self.outbox), "-shown")

    async def _send_queued(self) -> None:
        """The answer ended: send the next queued text (what cannot be sent goes back to the box)."""
        if self.busy:
            return  # something else started first; the queue moves on when it ends
        text = self.outbox.pop()
        self._show_queue()
        if text is None:
            return
        self._accepted = False
        await self._submit(text)
        if not self._accepted:  # refused (a file gone since, a model still loading): nothing is lost
            self._to_box([text])
            await self.say("the queued message was not sent; it is back in the box", "warning")
        elif not self.busy and self.outbox:  # a command that started no answer (/new): the next one
            self.call_later(self._send_queued)

    def _unqueue(self, why: str) -> None:
        """Queued texts back into the box at once (the line saying so follows)."""
        texts = self.outbox.take_all()
        self._show_queue()
        if texts:
            self._to_box(texts)
            n = len(texts)
            self.call_later(
                self.say,
                f"{why}: {'your queued message is' if n == 1 else f'{n} queued messages are'}"
                " back in the box (Enter sends)",
                "warning",
            )

    async def _refuse_busy(self, then: str = "") -> bool:
        """While an answer streams, an action that needs the model or the session waits: say so."""
        if self.busy:
            await self.say(
                "Demi is still answering: Esc stops it"
                + (f", then {then}" if then else "; your text stays in the box"),
                "warning",
            )
            return True
        return False

    async def send(self, text: str, at: float | None = None) -> None:
        if await self._refuse_busy():
            return
        try:
            attachments = load_mentions(text, self.root, self.max_bytes)
        except DemiUserError as exc:
            await self.say(f"{one_line(exc)} (nothing was sent; your message stays in the box)", "error")
            return
        self._accept(text)
        if not self.conv.session_id and not self.conv.title:
            self.conv.title = session_title(text)
        job = await self._start_job("chat", UserMessage(text, [a.describe() for a in attachments]), self._who(), at)
        self._chat_worker(job, text, attachments, list(self.turns))

    def _who(self, what: str = "") -> str:
        name = model_label(self.details.model) if self.details else (self.current_model or "demi")
        return name + (f" · {what}" if what else "")

    async def _start_job(self, kind: str, request: Any, who: str, at: float | None) -> Job:
        widget = AssistantMessage(who, meta="waiting for the model…" if self.engine is None else "thinking…")
        await self._mount(request, widget)
        job = Job(kind, widget, self.conv, self, at or time.monotonic())
        widget.start()
        self.job = job
        self.status.set(state="answering… esc stops")
        return job

    async def on_flush(self, message: Flush) -> None:
        await self._drain(message.job)

    async def _drain(self, job: Job, final: bool = False) -> None:
        """Move the job's pending text onto the screen when the pacer allows (see `Pacer`): a fast
        model never keeps the screen so busy re-laying out the answer that a key press has to wait."""
        if job.done:
            return
        now = time.monotonic()
        wait = self.pacer.delay(job.last_write, now)
        if wait > 0 and not final:
            if not job.timer:  # keep `scheduled` set: the worker posts nothing until this fires
                job.timer = True
                self.set_timer(wait, lambda: self._flush_timer(job))
            return
        text = job.take()
        if not text:
            return
        job.last_write = now
        first = job.widget.first_write_at is None
        await job.widget.write(text)
        if first:
            job.widget.set_meta("writing… (esc stops)")
        self.call_after_refresh(self._painted, job, now, first)

    def _painted(self, job: Job, written: float, first: bool) -> None:
        now = time.monotonic()
        self.pacer.painted(now - written)
        if first:
            job.first_paint_at = now

    @on(TextArea.Changed, "#prompt")
    def _typed(self) -> None:
        self._typed_at = time.monotonic()

    async def _freeze_history(self) -> None:
        """One answer from history (the newest first) drawn into frozen lines, while nothing streams
        and the user is not typing: each costs a full draw of it once, then makes every later frame
        cheaper (Textual lays out hidden widgets too)."""
        if not self._unfrozen or self.job is not None or time.monotonic() - self._typed_at < 1.0:
            return
        message = self._unfrozen[-1]
        self._freeze_tries[message] = tries = self._freeze_tries.get(message, 0) + 1
        if not message.is_mounted or tries > 20 or await message.freeze_finished():
            self._unfrozen.pop()
            self._freeze_tries.pop(message, None)

    @on(Piece.Thawed)
    def _thawed(self, event: Piece.Thawed) -> None:
        message = next((a for a in event.piece.ancestors if isinstance(a, AssistantMessage)), None)
        if message is not None and message not in self._unfrozen:
            self._unfrozen.insert(0, message)  # after the ones already waiting (newest last)

    def _flush_timer(self, job: Job) -> None:
        job.timer = False
        self.post_message(Flush(job))

    async def _end_job(self, job: Job, meta: str, replace: str | None = None, ok: bool = True) -> None:
        """The answer is over: the last text, its line of timings, and the app ready for the next one
        (even if drawing the end fails: a stuck "answering…" would refuse everything after it)."""
        try:
            await self._drain(job, final=True)
            job.done = True
            await job.widget.finish(meta, replace)
        except Exception as exc:  # shown, and the answer's text is kept in the session all the same
            job.done = True
            await self.say(f"could not draw the end of the answer: {one_line(exc)}", "error")
        if self.job is job:
            self.job = None
        self.last_job = job
        self.status.set(state="ready")
        if self.outbox:
            if ok:  # finished or stopped: what was queued (after the Esc, if any) goes now
                self.call_later(self._send_queued)
            else:
                self._unqueue("not sent because the answer before it failed")

    def _save(self, conv: Conversation, role: str, content: str, **fields: Any) -> None:
        self.history.append(conv, role, content, **fields)

    @work(thread=True, group="engine", exit_on_error=False)
    def _chat_worker(self, job: Job, text: str, attachments: list[Attachment], history: list[Turn]) -> None:
        engine = self._wait_engine(job)
        if engine is None:
            self._from_thread(
                self._chat_failed, job, text, None, self.engine_error or "stopped before the model was ready"
            )
            return
        max_tokens = int(self.config["chat.max_tokens"])
        try:
            sampling = chat_sampling(self.config["chat.temperature"])
            built = prepare_chat(
                engine, history, text, attachments, max_tokens, int(self.config["chat.context_tokens"])
            )
        except DemiUserError as exc:
            self._from_thread(self._chat_failed, job, text, None, one_line(exc))
            return
        meta = {"attachments": [a.as_meta() for a in attachments]} if attachments else {}
        if built.turn.context:
            meta["context"] = built.turn.context
        self._save(job.conv, "user", text, meta=meta or None)
        try:
            result = answer(engine, built, max_tokens, on_text=job.push, cancel=job.cancel, sampling=sampling)
        except Exception as exc:  # a failure mid-answer keeps what arrived
            self._save_partial(job, engine)
            self._from_thread(self._chat_failed, job, text, built.turn, one_line(exc))
            return
        shown = job.text
        if shown.strip() or result.finish_reason != "cancelled":
            self._save(
                job.conv,
                "assistant",
                shown,
                model=result.model,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                seconds=round(result.seconds, 4),
                meta=result.as_meta(),
            )
        self._from_thread(self._chat_done, job, built.turn, result)

    def _save_partial(self, job: Job, engine: Any) -> None:
        if job.text.strip():
            self._save(
                job.conv, "assistant", job.text, model=getattr(engine, "name", None), meta={"finish_reason": "error"}
            )

    async def _chat_done(self, job: Job, turn: Turn, result: Any) -> None:
        if job.conv is self.conv:
            self.turns.append(turn)
            if job.text.strip():
                self.turns.append(Turn("assistant", job.text))
        tps = result.tokens_per_second
        stopped = result.finish_reason == "cancelled"
        parts = [("stopped · " if stopped else "") + fmt_speed(result.completion_tokens, tps)]
        if result.finish_reason == "length":
            parts.append("cut at chat.max_tokens")
        if result.dropped_turns:
            parts.append(f"{result.dropped_turns} earlier messages left out to fit the context")
        if not job.text.strip():
            parts.insert(0, "(the model wrote nothing)")
        await self._end_job(job, " · ".join(parts))
        self._show_speed(result.completion_tokens, tps, result.context_used, result.context)

    def _show_speed(self, tokens: int, tps: float | None, used: int | None, context: int | None) -> None:
        self.status.set(
            speed=f"{tps:.1f} tok/s" if tps else "",
            context=(f"ctx {used}/{context}" if context else f"ctx {used}") if used else "",
        )

    async def _chat_failed(self, job: Job, text: str, turn: Turn | None, error: str) -> None:
        got = bool(job.text.strip())
        if turn is not None and job.conv is self.conv:
            self.turns.append(turn)
            if got:
                self.turns.append(Turn("assistant", job.text))
        back = turn is None and bool(text.strip())  # never sent: the text goes back in the box
        queued = self.outbox.take_all()  # and what was queued after it, in the order it was typed
        self._show_queue()
        if back or queued:
            self._to_box(([text] if back else []) + queued)
        if back:
            error += " (your message is back in the box" + (", with the ones queued after it)" if queued else ")")
        elif queued:
            error += f" ({len(queued)} queued message{'s' if len(queued) > 1 else ''} back in the box, not sent)"
        await self.say(error, "error")
        await self._end_job(job, "failed" + (" (what arrived is kept)" if got else ""), ok=False)

    # -- commands ----------------------------------------------------------------------------------

    async def run_command(self, name: str, rest: str, raw: str) -> None:
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None or name not in cmds.BY_NAME:
            close = [c.name for c in cmds.COMMANDS if c.name.startswith(name[:2])] if name else []
            hint = f" (did you mean {', '.join('/' + c for c in close)}?)" if close else ""
            await self.say(
                f"unknown command /{name}{hint}; /help lists them. Start with // to send a message that begins with /.",
                "error",
            )
            return
        await handler(rest, raw)

    async def cmd_help(self, rest: str, raw: str) -> None:
        self._accept(raw)
        await self._mount(HelpNotice(cmds.help_markdown()))

    async def cmd_quit(self, rest: str, raw: str) -> None:
        await self.action_quit()

    async def cmd_new(self, rest: str, raw: str) -> None:
        if await self._refuse_busy():
            return
        self._accept(raw)
        await self.new_session()

    async def cmd_sessions(self, rest: str, raw: str) -> None:
        self._accept(raw)
        self.action_toggle_sidebar()

    async def cmd_copy(self, rest: str, raw: str) -> None:
        self._accept(raw)
        self.action_copy_code()

    async def cmd_search(self, rest: str, raw: str) -> None:
        self._accept(raw)
        self._show_sidebar(True)
        search = self.query_one("#search", Input)
        search.value = rest
        self._search_worker(rest)

    async def cmd_rename(self, rest: str, raw: str) -> None:
        if not rest:
            await self.say("usage: /rename TITLE", "error")
            return
        self._accept(raw)
        self.history.rename(self.conv, rest)
        await self.say(f"renamed this session to {rest!r}")
        self._refresh_sessions()

    async def cmd_delete(self, rest: str, raw: str) -> None:
        if await self._refuse_busy():
            return
        self._accept(raw)
        if self.conv.session_id is None:
            await self.new_session()
            return
        self._ask_delete(self.conv.session_id, self.conv.title)

    async def cmd_model(self, rest: str, raw: str) -> None:
        words = rest.split()
        if not words:
            self._accept(raw)
            d = self.details
            now = (
                (
                    f"using {d.model} ({d.kind}, {d.quant or 'server'}, {d.device or d.url or ''}, context "
                    f"{d.context or 'unknown'})"
                )
                if d
                else "no model loaded"
            )
            await self.say(f"{now}. Switch with /model NAME [none|int8|int4|nf4|auto] or /model QUANT.")
            self._models_worker()
            return
        if await self._refuse_busy():
            return
        if self.loading:
            await self.say("a model is still loading: switch when it is ready", "warning")
            return
        quant = words[-1].lower() if words[-1].lower() in cmds.QUANTS else None
        name = " ".join(words[:-1] if quant else words) or self.current_model
        quant = quant or self.current_quant
        if self.config["server"] and quant not in (None, "none"):
            await self.say("with a server the quantization is the server's choice; switching the model only", "warning")
            quant = None
        self._accept(raw)
        self._engine_ready.clear()
        self.loading = True
        self.status.set(state=f"loading {name or 'the default model'}…")
        await self.say(f"loading {name or 'the default model'}" + (f" ({quant})" if quant else "") + "…")
        self._load_worker(name, quant)

    @work(thread=True, group="models", exit_on_error=False)
    def _models_worker(self) -> None:
        try:
            from demi.assistant.catalog import list_models

            found = list_models()
        except Exception as exc:  # listing is a convenience
            self._from_thread(self.say, f"cannot list models: {one_line(exc)}", "warning")
            return
        names = [m["name"] for m in found.get("builtin", [])] + [m["name"] for m in found.get("hub_cache", [])]
        text = (
            ("models here: " + ", ".join(names))
            if names
            else "no built-in or cached models found; /model takes a model directory or a hub id too"
        )
        self._from_thread(self.say, text)

    # -- explain and refactor ------------------------------------------------------------------------

    def _target(self, spec_text: str) -> tuple[TargetSpec, Any, Any]:
        """(spec, document, target) for PATH[:SYMBOL|:A-B]; user errors raise."""
        from demi.assistant.document import Document
        from demi.assistant.target import resolve_target

        spec = parse_target(spec_text, self.root)
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else self.root / path
        try:
            doc = Document.load(path, max_bytes=self.max_bytes)
            target = resolve_target(doc, spec.symbol, spec.lines)
        except DemiUserError as exc:
            message = str(exc)
            if message.startswith(f"{path}: "):
                message = message[len(f"{path}: ") :]
            raise DemiUserError(f"{spec.label}: {message}") from None
        return spec, doc, target

    async def cmd_explain(self, rest: str, raw: str) -> None:
        if not rest:
            await self.say("usage: " + cmds.BY_NAME["explain"].usage, "error")
            return
        if await self._refuse_busy():
            return
        try:
            spec, doc, _ = self._target(rest)
        except DemiUserError as exc:
            await self.say(one_line(exc), "error")
            return
        doc.path = Path(spec.path)  # shown as typed (explain never writes, so the full path is not needed)
        self._accept(raw)
        if not self.conv.session_id and not self.conv.title:
            self.conv.title = session_title(f"explain {spec.label}")
        job = await self._start_job("explain", UserMessage(f"/explain {spec.label}"), self._who("explain"), None)
        self._explain_worker(job, spec, doc)

    @work(thread=True, group="engine", exit_on_error=False)
    def _explain_worker(self, job: Job, spec: TargetSpec, doc: Any) -> None:
        from demi.assistant.explain import explain

        engine = self._wait_engine(job)
        if engine is None:
            self._from_thread(self._task_failed, job, self.engine_error or "stopped before the model was ready")
            return
        cfg = self.config
        try:
            result = explain(
                engine,
                doc,
                spec.symbol,
                spec.lines,
                max_tokens=int(cfg["explain.max_tokens"]),
                budget=int(cfg["explain.context_tokens"]),
                lead=cfg["explain.lead"],
                on_text=job.push,
                cancel=job.cancel,
            )
        except Exception as exc:  # shown inline; what arrived stays
            self._from_thread(self._task_failed, job, one_line(exc))
            return
        meta = {"command": "explain", "path": spec.path, "symbol": result.symbol, "lines": list(result.lines)}
        try:
            att = load_attachment(spec, self.root, self.max_bytes)
            context = attachment_context([att], engine.count_tokens, int(cfg["chat.context_tokens"]) // 3)
        except DemiUserError:
            context = ""
        self._save(job.conv, "user", f"/explain {spec.label}", meta=dict(meta, context=context))
        self._save(
            job.conv,
            "assistant",
            result.markdown,
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            seconds=round(result.seconds, 4),
            meta=dict(meta, finish_reason=result.finish_reason),
        )
        turn = Turn(
            "user", f"Explain `{spec.path}`" + (f" › `{result.symbol}`" if result.symbol else "") + ".", context
        )
        self._from_thread(self._explain_done, job, turn, result)

    async def _explain_done(self, job: Job, turn: Turn, result: Any) -> None:
        if job.conv is self.conv:
            self.turns += [turn, Turn("assistant", result.markdown)]
        tps = result.completion_tokens / result.seconds if result.seconds > 0 and result.completion_tokens else None
        stopped = "stopped · " if result.finish_reason == "cancelled" else ""
        await self._end_job(job, stopped + fmt_speed(result.completion_tokens, tps), replace=result.markdown)
        self._show_speed(
            result.completion_tokens,
            tps,
            result.prompt_tokens + result.completion_tokens,
            self.details.context if self.details else None,
        )

    async def _task_failed(self, job: Job, error: str) -> None:
        await self.say(error, "error")
        await self._end_job(job, "failed" + (" (what arrived is kept)" if job.text.strip() else ""), ok=False)

    async def cmd_refactor(self, rest: str, raw: str) -> None:
        parts = rest.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            await self.say("usage: " + cmds.BY_NAME["refactor"].usage + " (say what to change)", "error")
            return
        if await self._refuse_busy():
            return
        try:
            spec, doc, target = self._target(parts[0])
        except DemiUserError as exc:
            await self.say(one_line(exc), "error")
            return
        instruction = parts[1].strip()
        self._accept(raw)
        if not self.conv.session_id and not self.conv.title:
            self.conv.title = session_title(f"refactor {spec.label}: {instruction}")
        job = await self._start_job(
            "refactor",
            UserMessage(f"/refactor {spec.label} {instruction}"),
            self._who(f"rewriting {target.label}"),
            None,
        )
        self._refactor_worker(job, spec, doc, instruction)

    @work(thread=True, group="engine", exit_on_error=False)
    def _refactor_worker(self, job: Job, spec: TargetSpec, doc: Any, instruction: str) -> None:
        from demi.assistant.refactor import propose

        engine = self._wait_engine(job)
        if engine is None:
            self._from_thread(self._task_failed, job, self.engine_error or "stopped before the model was ready")
            return
        cfg = self.config
        meta = {
            "command": "refactor",
            "path": spec.path,
            "symbol": spec.symbol,
            "lines": list(spec.lines) if spec.lines else None,
            "instruction": instruction,
        }
        self._save(job.conv, "user", f"/refactor {spec.label} {instruction}", meta=meta)
        try:
            result = propose(
                engine,
                doc,
                instruction,
                spec.symbol,
                spec.lines,
                max_tokens=int(cfg["refactor.max_tokens"]),
                budget=int(cfg["refactor.context_tokens"]),
                cancel=job.cancel,
                on_text=job.push,
            )
        except Exception as exc:  # a rejected rewrite: the reason, and the file untouched
            self._save(
                job.conv,
                "assistant",
                f"(no change: {one_line(exc)})",
                model=getattr(engine, "name", None),
                meta=dict(meta, rejected=True),
            )
            self._from_thread(self._task_failed, job, one_line(exc))
            return
        shown = self._display_diff(result)
        self._save(
            job.conv,
            "assistant",
            shown or "(no change)",
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            seconds=round(result.seconds, 4),
            meta=dict(meta, applied=False),
        )
        self._from_thread(self._refactor_done, job, result, shown)

    def shown_path(self, path: Path | str) -> str:
        """A path as the user would type it: relative to the working folder when inside it."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(p)

    def _display_diff(self, result: Any) -> str:
        from dataclasses import replace

        from demi.assistant.edits import unified_diff

        return unified_diff(replace(result.edit, path=Path(self.shown_path(result.path)))) if result.diff else ""

    async def _refactor_done(self, job: Job, result: Any, shown: str) -> None:
        tps = result.completion_tokens / result.seconds if result.seconds > 0 and result.completion_tokens else None
        await self._end_job(job, "rewrite: " + fmt_speed(result.completion_tokens, tps))
        job.widget.fold()  # the diff below shows what matters
        if job.conv is self.conv:
            self.turns += [
                Turn("user", f"Rewrite `{self.shown_path(result.path)}` ({result.target})."),
                Turn("assistant", shown or "(no change)"),
            ]
        card = DiffProposal(
            f"proposed change to {self.shown_path(result.path)} ({result.target})", shown, result.notes, result
        )
        if self.proposal is not None and self.proposal.resolved is None:
            self.proposal.resolve("superseded by a newer proposal")
        self.proposal = card if result.edit.changed else None
        await self._mount(card)
        self._show_speed(
            result.completion_tokens,
            tps,
            result.prompt_tokens + result.completion_tokens,
            self.details.context if self.details else None,
        )

    @on(DiffProposal.Decided)
    async def _decided(self, event: DiffProposal.Decided) -> None:
        self.prompt.focus()  # the buttons go away: typing goes on in the message box
        await self._decide(event.proposal, event.apply)

    async def cmd_apply(self, rest: str, raw: str) -> None:
        await self._decide_pending(raw, True)

    async def cmd_reject(self, rest: str, raw: str) -> None:
        await self._decide_pending(raw, False)

    async def _decide_pending(self, raw: str, apply: bool) -> None:
        if self.proposal is None or self.proposal.resolved is not None:
            await self.say("no proposed change is waiting (/refactor PATH[:SYMBOL] INSTRUCTION makes one)", "error")
            return
        self._accept(raw)
        await self._decide(self.proposal, apply)

    async def _decide(self, card: DiffProposal, apply: bool) -> None:
        if card.resolved is not None:
            return
        if not apply:
            card.resolve("rejected: nothing was written")
            self._save(self.conv, "note", f"rejected the change to {self.shown_path(card.result.path)}")
            if self.proposal is card:
                self.proposal = None
            return
        card.resolve("applying…")
        self._apply_worker(card)

    @work(thread=True, group="edits", exit_on_error=False)
    def _apply_worker(self, card: DiffProposal) -> None:
        from demi.assistant.refactor import apply

        try:
            result = apply(card.result, self.data_dir, root=self.root)
        except Exception as exc:  # a conflict or an unwritable file: shown, nothing half-written
            self._from_thread(self._apply_done, card, None, one_line(exc))
            return
        self._from_thread(self._apply_done, card, result, None)

    async def _apply_done(self, card: DiffProposal, result: Any, error: str | None) -> None:
        if self.proposal is card:
            self.proposal = None
        if error is not None:
            card.resolve("not applied")
            await self.say(f"not applied: {error}", "error")
            return
        self.applied.append(Path(result.path))
        where = self.shown_path(result.path)
        card.resolve(f"applied to {where} (backup kept; /undo restores it)")
        self._save(self.conv, "note", f"applied the change to {where} (backup {result.backup})")
        await self.say(f"applied to {where}; /undo restores the previous version")

    async def cmd_undo(self, rest: str, raw: str) -> None:
        words = rest.split()
        force = "--force" in words
        words = [w for w in words if w != "--force"]
        if words:
            path = Path(" ".join(words)).expanduser()
            path = path if path.is_absolute() else self.root / path
        elif self.applied:
            path = self.applied[-1]
        else:
            await self.say("nothing to undo in this session; /undo PATH restores a file Demi changed", "error")
            return
        self._accept(raw)
        self._undo_worker(path, force)

    @work(thread=True, group="edits", exit_on_error=False)
    def _undo_worker(self, path: Path, force: bool) -> None:
        from demi.assistant.edits import undo

        try:
            undo(path, self.data_dir, force=force, root=self.root)
        except Exception as exc:  # no backup, or the file changed since: say so, touch nothing
            self._from_thread(self._undo_done, path, one_line(exc))
            return
        self._from_thread(self._undo_done, path, None)

    async def _undo_done(self, path: Path, error: str | None) -> None:
        if error is not None:
            hint = " (/undo --force PATH restores it anyway)" if "changed since" in error else ""
            await self.say(error + hint, "error")
            return
        if path in self.applied:
            self.applied.reverse()
            self.applied.remove(path)
            self.applied.reverse()
        self._save(self.conv, "note", f"restored {self.shown_path(path)} from Demi's backup")
        await self.say(f"restored {self.shown_path(path)} from Demi's backup")

    # -- sessions ----------------------------------------------------------------------------------

    @work(thread=True, group="history", exit_on_error=False)
    def _open_history_worker(self) -> None:
        error = self.history.open()
        if error is not None:
            self._from_thread(self._history_off, error)
        else:
            self._from_thread(self._show_sessions, self.history.sessions())
        if self.resume_id:
            self._open_session_sync(self.resume_id, None)

    async def _history_off(self, error: str) -> None:
        self.query_one("#history-state", Static).update(Text(f"history is off: {error}"))
        self.status.set(state="history off")
        await self.say(
            f"history is off: {error}. This conversation is kept on screen and retried when the database is available.",
            "warning",
        )

    def _refresh_sessions(self) -> None:
        """The session list again (or the current search's hits)."""
        self._search_worker(self.query_one("#search", Input).value)

    def _show_sessions(self, sessions: list[Session]) -> None:
        box = self.query_one(SessionList)
        box.clear_options()
        self._titles.update({s.id: s.title for s in sessions})
        for s in sessions:
            label = Text(clip(s.title or "(untitled)", SIDEBAR_TEXT), style="bold")
            label.append(f"\n{s.kind} · {s.messages} msg · {_when(s.updated)}", style="dim")
            box.add_option(Option(label, id=s.id))
        if self.conv.session_id:
            self._highlight(self.conv.session_id)

    def _show_hits(self, query: str, hits: list[SearchHit]) -> None:
        box = self.query_one(SessionList)
        box.clear_options()
        if not hits:
            box.add_option(Option(Text(f"no matches for {query!r}", style="dim"), id="-none", disabled=True))
        self._titles.update({h.session_id: h.title for h in hits})
        for h in hits:
            label = Text(clip(h.title or h.session_id, SIDEBAR_TEXT), style="bold")
            label.append("\n")
            label.append_text(marked(f"{h.role}: {h.snippet}"))
            box.add_option(Option(label, id=f"{h.session_id}#{h.message_id}"))

    def _highlight(self, session_id: str) -> None:
        box = self.query_one(SessionList)
        for i in range(box.option_count):
            if box.get_option_at_index(i).id == session_id:
                box.highlighted = i
                return

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        value = event.value
        self._search_timer = self.set_timer(0.2, lambda: self._search_worker(value))

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_worker(event.value)
        self.query_one(SessionList).focus()

    @work(thread=True, group="search", exclusive=True, exit_on_error=False)
    def _search_worker(self, query: str) -> None:
        query = query.strip()
        found: Any = self.history.search(query) if query else self.history.sessions()
        if get_current_worker().is_cancelled:  # a newer search (or refresh) replaced this one
            return
        if query:
            self._from_thread(self._show_hits, query, found)
        else:
            self._from_thread(self._show_sessions, found)

    @on(OptionList.OptionSelected, "#sessions")
    async def _session_selected(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id or ""
        if oid.startswith("-"):
            return
        if await self._refuse_busy("open the session"):
            return
        sid, _, mid = oid.partition("#")
        self._open_session_worker(sid, int(mid) if mid else None)

    @work(thread=True, group="history", exit_on_error=False)
    def _open_session_worker(self, session_id: str, hit: int | None) -> None:
        self._open_session_sync(session_id, hit)

    def _open_session_sync(self, session_id: str, hit: int | None) -> None:
        try:
            session, messages = self.history.session(session_id)
        except StoreError as exc:
            self._from_thread(self.say, f"{one_line(exc)}; this is a new session", "error")
            return
        self._from_thread(self._show_session, session, messages, hit)

    async def _show_session(self, session: Session, messages: list[StoredMessage], hit: int | None) -> None:
        if self.busy:
            await self.say("an answer is streaming: Esc stops it, then open the session again", "warning")
            return
        await self.log_view.remove_children()
        self.proposal = None
        self.conv = Conversation(session.id, session.title, session.model, session.kind)
        self.turns = turns_from_messages(messages)
        widgets: list[Any] = [
            Notice(f"session {session.id}: {session.title or '(untitled)'} · {session.kind} · {len(messages)} messages")
        ]
        for m in messages:
            widgets.append(self._render_stored(m))
        await self.log_view.mount_all(widgets)
        self._unfrozen = [w for w in widgets if isinstance(w, AssistantMessage)]
        self._highlight(session.id)
        self.prompt.focus()
        target = self.query(f"#m{hit}").first() if hit is not None else None
        if target is not None:
            target.add_class("hit")
            self.call_after_refresh(self.log_view.scroll_to_widget, target, animate=False, top=True)
        else:
            self.call_after_refresh(self.log_view.scroll_end, animate=False)

    def _render_stored(self, m: StoredMessage) -> Any:
        meta = m.meta or {}
        wid = f"m{m.id}"
        if m.role == "user":
            attached = [a.get("label", "") for a in meta.get("attachments", [])] if meta.get("attachments") else None
            return UserMessage(m.content, attached, id=wid)
        if m.role == "assistant":
            if m.content.startswith("--- ") and "\n+++ " in m.content and not meta.get("rejected"):
                where = meta.get("path") or m.content.split("\n", 1)[0][4:].removeprefix("a/")
                return DiffProposal(
                    f"proposed change to {where}",
                    m.content,
                    [],
                    None,
                    resolved="applied (from the command line)"
                    if meta.get("applied")
                    else "proposed earlier (run /refactor again to apply a new one)",
                    id=wid,
                )
            info = []
            if m.completion_tokens:
                tps = m.completion_tokens / m.seconds if m.seconds else None
                info.append(fmt_speed(m.completion_tokens, tps))
            if meta.get("finish_reason") == "cancelled":
                info.insert(0, "stopped")
            return AssistantMessage(m.model or "demi", m.content, " · ".join(info), id=wid)
        return Notice(m.content, "info", id=wid)

    async def new_session(self) -> None:
        await self.log_view.remove_children()
        await self.log_view.mount(Static(Text(WELCOME), id="welcome"))
        self.conv = Conversation(model=self.details.model if self.details else self.current_model)
        self.turns = []
        self.proposal = None
        box = self.query_one(SessionList)
        box.highlighted = None
        self.prompt.focus()

    @on(SessionList.Act)
    def _session_act(self, event: SessionList.Act) -> None:
        sid = event.option_id.partition("#")[0]
        title = self._titles.get(sid, "")
        if event.action == "rename":

            def renamed(new: str | None) -> None:
                if new:
                    if self.conv.session_id == sid:
                        self.history.rename(self.conv, new)
                    else:
                        self.history.rename(sid, new)

            self.push_screen(RenameScreen(title), renamed)
        elif event.action == "delete":
            if self.busy and self.conv.session_id == sid:
                self.call_later(self.say, "an answer is streaming in this session: Esc stops it first", "warning")
                return
            self._ask_delete(sid, title)

    def _ask_delete(self, session_id: str, title: str) -> None:
        def answered(yes: bool | None) -> None:
            if not yes:
                return
            conv = self.conv if self.conv.session_id == session_id else None
            self.history.delete(session_id, conv)
            if conv is not None:
                self.call_later(self.new_session)

        self.push_screen(ConfirmScreen(f"Delete the session {title or session_id!r} and its messages?"), answered)

    async def on_history_event(self, message: HistoryEvent) -> None:
        if message.event == "error":
            self.query_one("#history-state", Static).update(Text(message.data))
            await self.say(message.data, "warning")
        elif message.event == "notice":  # e.g. a corrupt session database moved aside
            await self.say(message.data, "warning")
        elif message.event == "recovered":
            self.query_one("#history-state", Static).update("")
            await self.say("history is saving again (nothing was lost)")
        elif message.event in ("created", "renamed", "deleted", "saved"):
            self._refresh_sessions()

    # -- actions -----------------------------------------------------------------------------------

    def on_key(self, event: events.Key) -> None:
        """Typing is never lost: a character typed while the log, a button or the session list has the
        focus (after a click, say) and that nothing there used goes into the message box."""
        if not event.is_printable or not event.character or self.screen is not self.screen_stack[0]:
            return
        if isinstance(self.focused, (Input, TextArea)) or event.key in self.active_bindings:
            return  # typed into a field, or a key the focused widget uses (r and d in the session list)
        event.stop()
        self.prompt.focus()
        self.prompt.insert(event.character)

    def action_escape(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
            self.job.widget.set_meta("stopping…")
            self._unqueue("stopped")
            return
        hints = self.query_one("#hints", Static)
        if hints.has_class("-shown"):
            hints.set_class(False, "-shown")
        self.prompt.focus()

    async def action_new_session(self) -> None:
        if await self._refuse_busy("ctrl+n starts a new session (or type /new: it waits for the answer)"):
            return
        await self.new_session()

    def _show_sidebar(self, show: bool) -> None:
        self.query_one("#sidebar").set_class(not show, "-hidden")

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        hidden = sidebar.has_class("-hidden")
        self._show_sidebar(hidden)
        if hidden:
            self.query_one(SessionList).focus()
            self._refresh_sessions()
        else:
            self.prompt.focus()

    def action_search(self) -> None:
        self._show_sidebar(True)
        self.query_one("#search", Input).focus()

    def action_copy_code(self) -> None:
        texts = [w.text for w in self.query(AssistantMessage)]
        code = last_code_block(texts)
        if code is None:
            self.notify("no code block to copy yet", severity="warning")
            return
        self.copy_to_clipboard(code)
        n = code.count("\n")
        self.notify(
            f"copied {n} line{'s' if n != 1 else ''} (OSC 52: the terminal, or tmux with "
            "set-clipboard on, puts it on the clipboard)"
        )

    async def action_help(self) -> None:
        await self._mount(HelpNotice(cmds.help_markdown()))

    async def action_quit(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
        self.exit()

    def on_unmount(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
        self.unsaved_file = self.history.close(timeout=5.0)


# -- entry points ------------------------------------------------------------------------------------


def build_parser(prog: str = "demi-chat") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Demi's terminal chat: chat about code, explain files, "
        "apply refactors; sessions are kept in the session store.",
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser, model_flags: bool = True) -> None:
    p.add_argument("--session", "-S", metavar="ID", help="resume a session (an id or a unique prefix)")
    p.add_argument(
        "--server", metavar="URL", help="an OpenAI-compatible server (demi serve) instead of loading the model here"
    )
    if model_flags:
        p.add_argument(
            "--model", "-m", help="model name, directory or hub id (default: config, $DEMI_MODEL, demi-tiny)"
        )
        p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
        p.add_argument("--dtype", default=None, help="auto (fp32 on CPU), float32, bfloat16, float16")
        p.add_argument("--context", type=int, default=None, help="context window to allocate (tokens)")
        p.add_argument("--quant", choices=cmds.QUANTS, default=None, help="weight quantization")
        p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    p.add_argument(
        "--temperature",
        "-t",
        type=float,
        default=None,
        metavar="T",
        help="sampling temperature for chat answers (default: chat.temperature in the config, "
        "$DEMI_CHAT_TEMPERATURE, 0 = greedy)",
    )


def flags_from(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(args, "dtype", None)
    return {
        "model": getattr(args, "model", None),
        "server": getattr(args, "server", None),
        "device": getattr(args, "device", None),
        "context": getattr(args, "context", None),
        "dtype": None if dtype in (None, "auto") else dtype,
        "quant": getattr(args, "quant", None),
        "chat.temperature": getattr(args, "temperature", None),
    }


def run(args: argparse.Namespace) -> int:
    """Start the app for parsed arguments; a bad config is one line on stderr and exit 2."""
    from demi.assistant.config import load_config

    flags = flags_from(args)
    config = load_config(flags)
    chat_sampling(config["chat.temperature"])  # a bad temperature is a user error now, not at the first answer
    app = DemiChat(config, flags=flags, session=getattr(args, "session", None))
    app.run()
    if app.unsaved_file is not None:
        print(
            f"demi-chat: the session database could not be written; this session's messages are in {app.unsaved_file}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DemiUserError as exc:
        if args.debug:
            raise
        print(f"demi-chat: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except DemiError as exc:
        if args.debug:
            raise
        print(f"demi-chat: runtime error: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
