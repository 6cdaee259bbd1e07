"""demi-chat: the terminal home of Demi (a Textual app on top of `demi.assistant`).

`DemiChat` builds the screen, owns the state its parts share (the conversation, the answer in
flight, the outbox) and receives every key, action and message; the work is done by plain
helper objects it composes (see `part.AppPart`; Textual finds handlers on the App and widgets
only, so the handlers stay here and forward):

    model_loading.ModelLoader   the engine, loaded and switched (/model) in a thread worker
    submit.Submitter            Enter: a command, a chat message, or the queue while an answer streams
    chat_task.ChatTask          chat answers
    code_tasks.CodeTasks        /explain, /refactor, apply or reject, /undo
    answer_flow.AnswerFlow      an answer's life on screen: started, paced (`jobs.Pacer`), ended
    answer_flow.IdleFreezer     answers from history drawn into frozen lines while the user is idle
    sessions.Sessions           the session list, search, open, new, rename, delete
    slash_commands.SlashCommands  what each /command does

Threads: the screen runs on Textual's event loop and never waits for a model or a database.
Each answer (chat, /explain, /refactor) runs in a thread worker of the group "engine"; it streams
its pieces into a buffer (`jobs.Job`) that the screen drains into the answer's widget (which
streams Markdown in pieces and freezes the finished ones, see `widgets.AssistantMessage`), and is
stopped with Esc through the engine's cancel token. Enter during an answer queues the message
(`outbox.Outbox`): one answer at a time is the app's rule for its own screen and session, not a
lock on the model. Session history goes through `History` (one writer thread, queued and retried
writes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Input, OptionList, Static, TextArea

from demi.assistant.chat import EngineDetails, Turn, chat_sampling, symbol_names
from demi.assistant.errors import DemiError, DemiUserError
from demi.assistant.store import DB_NAME
from demi.tui import commands as cmds
from demi.tui.answer_flow import AnswerFlow, IdleFreezer
from demi.tui.arguments import build_parser, flags_from
from demi.tui.chat_task import ChatTask
from demi.tui.code_tasks import CodeTasks
from demi.tui.completion import Completion, complete
from demi.tui.history import Conversation, History
from demi.tui.jobs import Flush, Job
from demi.tui.labels import one_line
from demi.tui.model_loading import EngineFactory, ModelLoader
from demi.tui.outbox import Outbox
from demi.tui.sessions import WELCOME, HistoryEvent, Sessions
from demi.tui.slash_commands import SlashCommands
from demi.tui.style import CSS as STYLE
from demi.tui.submit import Submitter
from demi.tui.widgets import (
    AssistantMessage,
    DiffProposal,
    HelpNotice,
    Notice,
    Piece,
    PromptInput,
    SessionList,
    Sidebar,
    StatusBar,
    last_code_block,
)

FREEZE_EVERY = 0.3  # an answer from history is frozen (see tui/frozen.py) at most this often, while idle


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
        engine_factory: EngineFactory | None = None,
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
        self.resume_id = session
        self.sidebar_wanted = sidebar
        self.history = History(self.data_dir / DB_NAME, float(self.config["db_timeout"]), notify=self._history_news)
        self.unsaved_file: Path | None = None  # where History kept what it could not save, at exit
        # the state the parts share
        self.loader = ModelLoader(self, engine, engine_factory)
        self.conv = Conversation(model=self.loader.current_model)
        self.turns: list[Turn] = []  # the conversation as the model sees it
        self.job: Job | None = None  # the answer in flight (one at a time)
        self.last_job: Job | None = None
        self.outbox = Outbox()  # texts sent while an answer streams
        # the parts
        self.submitter = Submitter(self)
        self.commands = SlashCommands(self)
        self.answers = AnswerFlow(self)
        self.freezer = IdleFreezer(self)
        self.chat = ChatTask(self)
        self.code_tasks = CodeTasks(self)
        self.sessions = Sessions(self)

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

    @property
    def search_box(self) -> Input:
        return self.query_one("#search", Input)

    def on_mount(self) -> None:
        self.prompt.focus()
        self.log_view.anchor()
        wanted = self.sidebar_wanted if self.sidebar_wanted is not None else self.size.width >= 100
        self.query_one("#sidebar").set_class(not wanted, "-hidden")
        where = self.config["server"] or self.loader.current_model or "the default model"
        self.status.set(model=str(where), state="starting…" if self.engine is not None else "loading the model…")
        self.loader.loading = True
        # an injected engine is described there
        self.loader.load(self.loader.current_model, self.loader.current_quant, False)
        self.set_interval(FREEZE_EVERY, self.freezer.freeze_one)
        self.sessions.open_store()

    # -- the shared state, read by tests and benchmarks ----------------------------------------------

    @property
    def engine(self) -> Any:
        return self.loader.engine

    @property
    def details(self) -> EngineDetails | None:
        return self.loader.details

    @property
    def applied(self) -> list[Path]:
        return self.code_tasks.applied

    @property
    def busy(self) -> bool:
        return self.job is not None

    # -- small helpers for the parts ---------------------------------------------------------------

    def from_thread(self, fn: Callable[..., Any], *args: Any) -> None:
        """From a worker: run `fn` on the screen's thread (nothing, if the app has gone)."""
        try:
            self.call_from_thread(fn, *args)
        except RuntimeError:  # the app has gone (exiting): nothing left to update
            pass

    async def say(self, text: str, kind: str = "info") -> Notice:
        """A line in the log: info, warning or error."""
        notice = Notice(text, kind)
        await self.mount_in_log(notice)
        return notice

    async def mount_in_log(self, *widgets: Any) -> None:
        """Widgets at the end of the log (the welcome text goes at the first)."""
        for w in self.query("#welcome"):
            await w.remove()
        await self.log_view.mount_all(widgets)
        self.log_view.scroll_end(animate=False)

    def show_sidebar(self, show: bool) -> None:
        self.query_one("#sidebar").set_class(not show, "-hidden")

    def _complete(self, text: str, cursor: int) -> Completion | None:
        return complete(text, cursor, self.root, symbols=symbol_names)

    def _history_news(self, event: str, data: Any) -> None:
        """From History's writer thread: news for the screen (see `Sessions.history_event`)."""
        self.post_message(HistoryEvent(event, data))

    # -- messages (Textual finds these handlers on the App only) -------------------------------------

    @on(PromptInput.Hints)
    def _hints(self, event: PromptInput.Hints) -> None:
        hints = self.query_one("#hints", Static)
        shown = event.candidates[:60]
        hints.update(Text("  ".join(shown) + ("  …" if len(event.candidates) > 60 else "")))
        hints.set_class(bool(shown), "-shown")

    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        await self.submitter.submitted(event.text, event.at)

    async def on_flush(self, message: Flush) -> None:
        await self.answers.drain(message.job)

    @on(TextArea.Changed, "#prompt")
    def _typed(self) -> None:
        self.freezer.typed()

    @on(Piece.Thawed)
    def _thawed(self, event: Piece.Thawed) -> None:
        self.freezer.thawed(event.piece)

    @on(DiffProposal.Decided)
    async def _decided(self, event: DiffProposal.Decided) -> None:
        self.prompt.focus()  # the buttons go away: typing goes on in the message box
        await self.code_tasks.decide(event.proposal, event.apply)

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.sessions.search_typed(event.value)

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        self.sessions.search_now(event.value)

    @on(OptionList.OptionSelected, "#sessions")
    async def _session_selected(self, event: OptionList.OptionSelected) -> None:
        await self.sessions.selected(event.option.id or "")

    @on(SessionList.Act)
    def _session_act(self, event: SessionList.Act) -> None:
        self.sessions.act(event.option_id, event.action)

    async def on_history_event(self, message: HistoryEvent) -> None:
        await self.sessions.history_event(message)

    # -- keys and actions --------------------------------------------------------------------------

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
            self.submitter.unqueue("stopped")
            return
        hints = self.query_one("#hints", Static)
        if hints.has_class("-shown"):
            hints.set_class(False, "-shown")
        self.prompt.focus()

    async def action_new_session(self) -> None:
        if await self.submitter.refuse_busy("ctrl+n starts a new session (or type /new: it waits for the answer)"):
            return
        await self.sessions.new_session()

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar")
        hidden = sidebar.has_class("-hidden")
        self.show_sidebar(hidden)
        if hidden:
            self.query_one(SessionList).focus()
            self.sessions.refresh()
        else:
            self.prompt.focus()

    def action_search(self) -> None:
        self.show_sidebar(True)
        self.search_box.focus()

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
        await self.mount_in_log(HelpNotice(cmds.help_markdown()))

    async def action_quit(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
        self.exit()

    def on_unmount(self) -> None:
        if self.job is not None:
            self.job.cancel.cancel()
        self.unsaved_file = self.history.close(timeout=5.0)


# -- entry points ------------------------------------------------------------------------------------


def app_from_args(args: argparse.Namespace, **parts: Any) -> DemiChat:
    """The app for parsed arguments (demi-chat's or `demi chat`'s): the flags over the environment over
    the config file, as every command reads them; `parts` are DemiChat's injectable ones (data_dir, root ...)."""
    from demi.assistant.config import load_config

    flags = flags_from(args)
    config = load_config(flags)
    chat_sampling(config["chat.temperature"])  # a bad temperature is a user error now, not at the first answer
    return DemiChat(config, flags=flags, session=getattr(args, "session", None), **parts)


def run(args: argparse.Namespace) -> int:
    """Start the app for parsed arguments; a bad config is one line on stderr and exit 2."""
    app = app_from_args(args)
    app.run()
    if app.unsaved_file is not None:
        print(
            f"demi-chat: the session database could not be written; this session's messages are in {app.unsaved_file}",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    from demi import __version__

    parser = build_parser()
    parser.add_argument("--version", action="version", version=f"demi-chat {__version__}")
    args = parser.parse_args(argv)
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
