"""Slash commands: their names, usage and help text (the words on screen, not prompts)."""

from __future__ import annotations

from dataclasses import dataclass

QUANTS = ("none", "int8", "int4", "nf4", "auto")


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    takes_path: bool = False
    waits: bool = False  # typed while an answer streams, it is queued until the answer ends


COMMANDS: tuple[Command, ...] = (
    Command("help", "/help", "commands and keys"),
    Command("new", "/new", "start a new session", waits=True),
    Command(
        "explain",
        "/explain PATH[:SYMBOL|:A-B]",
        "explain a file, a symbol or a line range (streamed)",
        True,
        waits=True,
    ),
    Command(
        "refactor",
        "/refactor PATH[:SYMBOL|:A-B] INSTRUCTION",
        "propose a rewrite as a diff; Apply writes it (with a backup), Reject drops it",
        True,
        waits=True,
    ),
    Command(
        "fix",
        "/fix PATH[:SYMBOL|:A-B] [ERROR]",
        "fix the code an error (a pasted traceback or message) points at; shown as a diff like a refactor",
        True,
        waits=True,
    ),
    Command("apply", "/apply", "apply the proposed refactor"),
    Command("reject", "/reject", "reject the proposed refactor"),
    Command("undo", "/undo [--force] [PATH]", "restore the file Demi last changed from its backup", True),
    Command(
        "model",
        "/model [NAME] [none|int8|int4|nf4|auto]",
        "show the model, or switch model and quantization",
        waits=True,
    ),
    Command("sessions", "/sessions", "show or hide the session list"),
    Command("search", "/search TEXT", "search all history (chat, explain and refactor from every front end)"),
    Command("rename", "/rename TITLE", "rename this session"),
    Command("delete", "/delete", "delete this session (asks first)", waits=True),
    Command("copy", "/copy", "copy the last code block to the clipboard (OSC 52)"),
    Command("quit", "/quit", "leave demi-chat"),
)
BY_NAME = {c.name: c for c in COMMANDS}

KEYS: tuple[tuple[str, str], ...] = (
    ("enter", "send (while Demi answers: queue it, sent when the answer ends)"),
    ("ctrl+j / alt+enter", "new line (shift+enter too where the terminal reports it)"),
    ("tab", "complete @path, @path:symbol and /commands"),
    ("up / down", "earlier messages, when the cursor is on the first / last line"),
    (
        "esc",
        "stop the answer (what arrived is kept; queued messages come back to the box); otherwise back "
        "to the message box",
    ),
    ("ctrl+n", "new session"),
    ("ctrl+s", "session list: enter opens, r renames, d deletes"),
    ("ctrl+f", "search history"),
    ("ctrl+o", "copy the last code block"),
    ("f1", "help"),
    ("ctrl+q", "quit"),
)


def parse(text: str) -> tuple[str, str] | None:
    """('name', 'rest') for a slash command; None for a message (`//x` sends '/x' as text)."""
    stripped = text.strip()
    if not stripped.startswith("/") or stripped.startswith("//"):
        return None
    head, _, rest = stripped[1:].partition(" ")
    return head.lower(), rest.strip()


def waits_for_answer(text: str) -> bool:
    """Whether `text`, sent while an answer streams, has to wait for it (a message, or a command that
    needs the model or changes the session); the others (/help, /copy, /search, ...) run at once."""
    parsed = parse(text)
    if parsed is None:
        return True
    name, rest = parsed
    command = BY_NAME.get(name)
    return command is not None and command.waits and (name != "model" or bool(rest))


def help_markdown() -> str:
    rows = [
        "## demi-chat",
        "",
        "Ask about code. `@path` attaches a file, `@path:symbol` one function or class, `@path:10-40` "
        "a line range. Start a line with `//` to send a message that begins with `/`.",
        "",
        "| command | does |",
        "| --- | --- |",
    ]
    rows += [f"| `{c.usage}` | {c.help} |" for c in COMMANDS]
    rows += ["", "| key | does |", "| --- | --- |"]
    rows += [f"| `{k}` | {v} |" for k, v in KEYS]
    return "\n".join(rows) + "\n"
