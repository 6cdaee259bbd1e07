"""The pieces of the chat screen: messages, notices, the diff card, the status bar, the session
list and the modals. The two big widgets live in their own modules and are re-exported here, so
`from demi.tui.widgets import ...` names every widget: the message box (`prompt_input`) and the
streaming answer (`answer_widget`)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, OptionList, Static

from demi.tui.answer_widget import AssistantMessage, MoreMarkdown, Piece
from demi.tui.prompt_input import PromptInput

__all__ = [
    "AssistantMessage",
    "ConfirmScreen",
    "DiffProposal",
    "HelpNotice",
    "MoreMarkdown",
    "Notice",
    "Piece",
    "PromptInput",
    "RenameScreen",
    "SessionList",
    "Sidebar",
    "StatusBar",
    "UserMessage",
    "fence",
    "last_code_block",
]


def fence(code: str, language: str = "") -> str:
    """`code` as a fenced Markdown block whose fence cannot be closed by the code itself."""
    ticks = "```"
    while ticks in code:
        ticks += "`"
    return f"{ticks}{language}\n{code.rstrip(chr(10))}\n{ticks}\n"


class UserMessage(Static):
    """What the user sent (plain text: brackets are not markup), with what it attached."""

    def __init__(self, text: str, attached: list[str] | None = None, **kwargs: Any) -> None:
        body = Text(text)
        if attached:
            body.append("\nattached: " + ", ".join(attached), style="dim")
        super().__init__(body, **kwargs)
        self.text = text


class Notice(Static):
    """An inline line from demi-chat itself (errors, results of commands); never from the model."""

    def __init__(self, text: str, kind: str = "info", **kwargs: Any) -> None:
        super().__init__(Text(text), classes=f"notice -{kind}", **kwargs)
        self.text, self.kind = text, kind


class HelpNotice(Markdown):
    pass


class DiffProposal(Vertical):
    """A proposed refactor: the diff (highlighted), notes, and Apply / Reject."""

    class Decided(Message):
        def __init__(self, proposal: DiffProposal, apply: bool) -> None:
            super().__init__()
            self.proposal, self.apply = proposal, apply

    def __init__(
        self, title: str, diff: str, notes: list[str], result: Any = None, resolved: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.title, self.diff, self.notes, self.result = title, diff, notes, result
        self.resolved = resolved

    def compose(self) -> ComposeResult:
        yield Static(Text(self.title), classes="who")
        yield Markdown(fence(self.diff, "diff") if self.diff.strip() else "_(no change)_", classes="diff")
        if self.notes:
            yield Static(Text("\n".join(f"note: {n}" for n in self.notes)), classes="meta")
        yield Static(
            Text(
                "Apply writes it (atomically, with a backup: /undo restores it); Reject drops it. "
                "Or type /apply or /reject."
                if self.resolved is None
                else self.resolved
            ),
            classes="meta state",
        )
        with Horizontal(classes="buttons"):
            yield Button("Apply", id="apply", variant="success", compact=True)
            yield Button("Reject", id="reject", variant="error", compact=True)

    def on_mount(self) -> None:
        if self.resolved is not None or self.result is None or not self.diff.strip():
            self._close(self.resolved or "nothing to apply")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if self.resolved is None:
            self.post_message(self.Decided(self, event.button.id == "apply"))

    def _close(self, text: str) -> None:
        self.resolved = text
        self.query_one(".buttons").display = False
        self.query_one(".state", Static).update(Text(text))

    def resolve(self, text: str) -> None:
        self._close(text)


class StatusBar(Static):
    """model · quantization · device · tokens/s of the last answer · context used · state."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.fields: dict[str, str] = {
            "model": "no model yet",
            "quant": "",
            "device": "",
            "speed": "",
            "context": "",
            "state": "",
        }

    def set(self, **fields: str) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        parts = [self.fields[k] for k in ("model", "quant", "device", "speed", "context") if self.fields[k]]
        line = " · ".join(parts)
        if self.fields["state"]:
            line += "  │  " + self.fields["state"]
        self.update(Text(line))

    @property
    def line(self) -> str:
        return str(self.render())


class SessionList(OptionList):
    """Past sessions (or search hits); enter opens, r renames, d deletes."""

    BINDINGS = [
        Binding("r,f2", "rename", "rename"),
        Binding("d,delete", "delete", "delete"),
    ]

    class Act(Message):
        def __init__(self, action: str, option_id: str) -> None:
            super().__init__()
            self.action, self.option_id = action, option_id

    def _highlighted_id(self) -> str | None:
        if self.highlighted is None:
            return None
        return self.get_option_at_index(self.highlighted).id

    def action_rename(self) -> None:
        oid = self._highlighted_id()
        if oid:
            self.post_message(self.Act("rename", oid))

    def action_delete(self) -> None:
        oid = self._highlighted_id()
        if oid:
            self.post_message(self.Act("delete", oid))


class Sidebar(Vertical):
    def compose(self) -> ComposeResult:
        yield Input(placeholder="search history", id="search")
        yield SessionList(id="sessions")
        yield Static("", id="history-state")


class RenameScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.old = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Rename the session (enter saves, esc cancels)")
            yield Input(value=self.old, id="title")

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        event.stop()
        title = event.value.strip()
        self.dismiss(title or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape,n", "answer(False)", "no"), Binding("y", "answer(True)", "yes")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.question))
            with Horizontal(classes="buttons"):
                yield Button("Delete (y)", id="yes", variant="error", compact=True)
                yield Button("Keep (n)", id="no", compact=True)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def last_code_block(texts: list[str]) -> str | None:
    """The last fenced code block in the newest text that has one (for copying)."""
    for text in reversed(texts):
        blocks: list[str] = []
        current: list[str] | None = None
        opener = ""
        for line in text.splitlines():
            stripped = line.strip()
            if current is None:
                if stripped.startswith(("```", "~~~")):
                    opener = stripped[:3]
                    n = len(stripped) - len(stripped.lstrip(opener[0]))
                    opener = opener[0] * n
                    current = []
            elif stripped.startswith(opener) and stripped.strip(opener[0]) == "":
                blocks.append("\n".join(current))
                current = None
            else:
                current.append(line)
        if current:  # a block still open (a stopped answer): take what there is
            blocks.append("\n".join(current))
        if blocks:
            return blocks[-1] + "\n"
    return None
