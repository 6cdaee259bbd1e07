"""`Sessions`: the session list, search, and opening, starting, renaming and deleting sessions.

Why it never waits on the screen's thread: the session store is SQLite, possibly locked by the
language server or another demi-chat, so every read runs in a thread worker and every write goes
through `History`'s writer thread; the store's news comes back as `HistoryEvent` messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from demi.assistant.chat import turns_from_messages
from demi.assistant.store import Message as StoredMessage
from demi.assistant.store import Session, StoreError
from demi.tui.history import Conversation, SearchHit
from demi.tui.labels import clip, day_label, fmt_speed, marked, one_line
from demi.tui.part import AppPart
from demi.tui.widgets import (
    AssistantMessage,
    ConfirmScreen,
    DiffProposal,
    Notice,
    RenameScreen,
    SessionList,
    UserMessage,
)

if TYPE_CHECKING:
    from demi.tui.app import DemiChat

SIDEBAR_TEXT = 30  # characters of a title or snippet in the session list
WELCOME = (
    "Ask about your code.  @path attaches a file, @path:symbol one definition, @path:10-40 lines.\n"
    "/explain PATH[:SYMBOL]  ·  /refactor PATH[:SYMBOL] INSTRUCTION  ·  /model  ·  /help\n"
    "Enter sends · ctrl+j new line · Tab completes · Esc stops the answer · ctrl+q quits"
)


class HistoryEvent(Message):
    """News from `History`'s writer thread: "error", "notice", "recovered", or a session changed."""

    def __init__(self, event: str, data: Any) -> None:
        super().__init__()
        self.event, self.data = event, data


class Sessions(AppPart):
    """The sidebar's sessions and the conversation shown in the log."""

    def __init__(self, app: DemiChat) -> None:
        super().__init__(app)
        self._search_timer: Timer | None = None
        self._titles: dict[str, str] = {}  # session id -> title, for rename and delete

    # -- the store ---------------------------------------------------------------------------------

    def open_store(self) -> None:
        """Open the session store in a thread worker; then the list, and the session to resume."""
        self.thread_worker("history", self._open_store_in_thread)

    def _open_store_in_thread(self) -> None:
        app = self.app
        error = app.history.open()
        if error is not None:
            app.from_thread(self._history_off, error)
        else:
            app.from_thread(self._show_sessions, app.history.sessions())
        if app.resume_id:
            self._open_in_thread(app.resume_id, None)

    async def _history_off(self, error: str) -> None:
        app = self.app
        app.query_one("#history-state", Static).update(Text(f"history is off: {error}"))
        app.status.set(state="history off")
        await app.say(
            f"history is off: {error}. This conversation is kept on screen and retried when the database is available.",
            "warning",
        )

    async def history_event(self, message: HistoryEvent) -> None:
        """The store's news: a warning, a recovery, or a change that the list should show."""
        app = self.app
        if message.event == "error":
            app.query_one("#history-state", Static).update(Text(message.data))
            await app.say(message.data, "warning")
        elif message.event == "notice":  # e.g. a corrupt session database moved aside
            await app.say(message.data, "warning")
        elif message.event == "recovered":
            app.query_one("#history-state", Static).update("")
            await app.say("history is saving again (nothing was lost)")
        elif message.event in ("created", "renamed", "deleted", "saved"):
            self.refresh()

    # -- the list and search -----------------------------------------------------------------------

    def refresh(self) -> None:
        """The session list again (or the current search's hits)."""
        self.search(self.app.query_one("#search", Input).value)

    def search(self, query: str) -> None:
        """Search the sessions (an empty query lists them); a newer search cancels this one."""
        self.thread_worker("search", self._search_in_thread, query, exclusive=True)

    def search_typed(self, value: str) -> None:
        """The search box changed: search once typing pauses."""
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.app.set_timer(0.2, lambda: self.search(value))

    def search_now(self, value: str) -> None:
        """Enter in the search box: search at once and go to the hits."""
        if self._search_timer is not None:
            self._search_timer.stop()
        self.search(value)
        self.app.query_one(SessionList).focus()

    def _search_in_thread(self, query: str) -> None:
        app = self.app
        query = query.strip()
        found: Any = app.history.search(query) if query else app.history.sessions()
        if get_current_worker().is_cancelled:  # a newer search (or refresh) replaced this one
            return
        if query:
            app.from_thread(self._show_hits, query, found)
        else:
            app.from_thread(self._show_sessions, found)

    def _show_sessions(self, sessions: list[Session]) -> None:
        box = self.app.query_one(SessionList)
        box.clear_options()
        self._titles.update({s.id: s.title for s in sessions})
        for s in sessions:
            label = Text(clip(s.title or "(untitled)", SIDEBAR_TEXT), style="bold")
            label.append(f"\n{s.kind} · {s.messages} msg · {day_label(s.updated)}", style="dim")
            box.add_option(Option(label, id=s.id))
        if self.app.conv.session_id:
            self._highlight(self.app.conv.session_id)

    def _show_hits(self, query: str, hits: list[SearchHit]) -> None:
        box = self.app.query_one(SessionList)
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
        box = self.app.query_one(SessionList)
        for i in range(box.option_count):
            if box.get_option_at_index(i).id == session_id:
                box.highlighted = i
                return

    # -- opening and starting ----------------------------------------------------------------------

    async def selected(self, option_id: str) -> None:
        """A session (or a search hit: "session#message") picked in the list: open it."""
        if option_id.startswith("-"):
            return
        if await self.app.submitter.refuse_busy("open the session"):
            return
        sid, _, mid = option_id.partition("#")
        self.thread_worker("history", self._open_in_thread, sid, int(mid) if mid else None)

    def _open_in_thread(self, session_id: str, hit: int | None) -> None:
        app = self.app
        try:
            session, messages = app.history.session(session_id)
        except StoreError as exc:
            app.from_thread(app.say, f"{one_line(exc)}; this is a new session", "error")
            return
        app.from_thread(self._show_session, session, messages, hit)

    async def _show_session(self, session: Session, messages: list[StoredMessage], hit: int | None) -> None:
        app = self.app
        if app.busy:
            await app.say("an answer is streaming: Esc stops it, then open the session again", "warning")
            return
        await app.log_view.remove_children()
        app.code_tasks.proposal = None
        app.conv = Conversation(session.id, session.title, session.model, session.kind)
        app.turns = turns_from_messages(messages)
        widgets: list[Any] = [
            Notice(f"session {session.id}: {session.title or '(untitled)'} · {session.kind} · {len(messages)} messages")
        ]
        for m in messages:
            widgets.append(self._render_stored(m))
        await app.log_view.mount_all(widgets)
        app.freezer.unfrozen = [w for w in widgets if isinstance(w, AssistantMessage)]
        self._highlight(session.id)
        app.prompt.focus()
        target = app.query(f"#m{hit}").first() if hit is not None else None
        if target is not None:
            target.add_class("hit")
            app.call_after_refresh(app.log_view.scroll_to_widget, target, animate=False, top=True)
        else:
            app.call_after_refresh(app.log_view.scroll_end, animate=False)

    def _render_stored(self, m: StoredMessage) -> Any:
        """The widget for a stored message: a user message, an answer, a diff, or a note."""
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
        """An empty log and a new conversation (stored when its first message is saved)."""
        app = self.app
        await app.log_view.remove_children()
        await app.log_view.mount(Static(Text(WELCOME), id="welcome"))
        app.conv = Conversation(model=app.loader.details.model if app.loader.details else app.loader.current_model)
        app.turns = []
        app.code_tasks.proposal = None
        box = app.query_one(SessionList)
        box.highlighted = None
        app.prompt.focus()

    # -- rename and delete -------------------------------------------------------------------------

    def act(self, option_id: str, action: str) -> None:
        """r or d on a session in the list: rename it, or delete it after asking."""
        app = self.app
        sid = option_id.partition("#")[0]
        title = self._titles.get(sid, "")
        if action == "rename":

            def renamed(new: str | None) -> None:
                if new:
                    if app.conv.session_id == sid:
                        app.history.rename(app.conv, new)
                    else:
                        app.history.rename(sid, new)

            app.push_screen(RenameScreen(title), renamed)
        elif action == "delete":
            if app.busy and app.conv.session_id == sid:
                app.call_later(app.say, "an answer is streaming in this session: Esc stops it first", "warning")
                return
            self.ask_delete(sid, title)

    def ask_delete(self, session_id: str, title: str) -> None:
        """Ask, then delete the session (and start a new one if it was the one shown)."""
        app = self.app

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            conv = app.conv if app.conv.session_id == session_id else None
            app.history.delete(session_id, conv)
            if conv is not None:
                app.call_later(self.new_session)

        app.push_screen(ConfirmScreen(f"Delete the session {title or session_id!r} and its messages?"), answered)
