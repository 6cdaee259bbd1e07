"""`chat`: a conversation about code, with files and symbols attached by `@path` and `@path:symbol`.

Front ends hand over what the user typed and the turns so far; this module finds the
attachments, reads them with the same checks as every other task (missing, binary and huge
files are one-line user errors), builds the prompt within the model's context (the newest
turns are kept, the oldest dropped first, the current message and its files always), and
streams the answer. Stored messages of a session become turns again with `turns_from_messages`,
so a conversation resumed from the session store (including `explain` and `refactor` requests
made from the CLI or an editor) reads to the model as it read to the user.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demi.assistant.budget import keep_head
from demi.assistant.document import Document, parse_line_range
from demi.assistant.files import MAX_FILE_BYTES
from demi.assistant.loop_guard import AnswerLoopGuard
from demi.assistant.prompts import SYSTEM, ChatPrompt
from demi.assistant.target import resolve_target
from demi.model.errors import DemiUserError

if TYPE_CHECKING:  # torch loads only with the engine
    from demi.model.generate import CancelToken, Sampling

CHAT_SYSTEM = SYSTEM + (
    " When the user attaches files, they are shown before the question; refer to "
    "them by path. Put code in fenced blocks with a language."
)
PLAIN_HEAD = "A conversation between a programmer (User) and Demi, a coding assistant.\n\n"
PLAIN_USER, PLAIN_ASSISTANT = "User:", "Demi:"


class AttachmentError(DemiUserError):
    """An `@path` the user wrote cannot be attached (missing, binary, huge, unknown symbol...)."""


# -- targets and mentions ----------------------------------------------------------------------------


@dataclass
class TargetSpec:
    """`PATH`, `PATH:SYMBOL` or `PATH:A-B` as the user wrote it."""

    path: str
    symbol: str | None = None
    lines: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        if self.symbol:
            return f"{self.path}:{self.symbol}"
        if self.lines:
            return f"{self.path}:{self.lines[0]}-{self.lines[1]}"
        return self.path


_LINES = re.compile(r"^\d+(-\d+)?$")
_SYMBOL = re.compile(r"^[A-Za-z_~][\w.:~<>]*$")


def parse_target(spec: str, root: Path | None = None) -> TargetSpec:
    """Split `PATH[:SYMBOL|:A-B]`; a path that exists as written wins over a split at ':'."""
    spec = spec.strip()
    if not spec:
        raise AttachmentError("name a file: PATH, PATH:SYMBOL or PATH:A-B")
    base = root or Path.cwd()
    if ":" in spec and not _resolve(spec, base).exists():
        head, _, tail = spec.partition(":")  # the first ':' so C++ names (ns::f) stay whole
        if head and tail:
            if _LINES.match(tail):
                try:
                    return TargetSpec(head, None, parse_line_range(tail))
                except DemiUserError as exc:
                    raise AttachmentError(str(exc)) from None
            if _SYMBOL.match(tail):
                return TargetSpec(head, tail, None)
    return TargetSpec(spec)


@dataclass
class Mention:
    """One `@...` in a message: where it is and what it names."""

    start: int
    end: int
    raw: str
    target: TargetSpec


_MENTION = re.compile(r"(?<![\w@\\])@([^\s@`]+)")
_TRAILING = ".,;!?)]}'\""


def find_mentions(text: str, root: Path | None = None) -> list[Mention]:
    """`@path`, `@path:symbol` and `@path:A-B` in `text`. A bare `@word` that is no file and has no
    '/', '.' or ':' is left alone (a name, not a path); `\\@` is never a mention."""
    base = root or Path.cwd()
    out: list[Mention] = []
    for m in _MENTION.finditer(text):
        raw = m.group(1)
        while raw and raw[-1] in _TRAILING and not _resolve(raw, base).exists():
            raw = raw[:-1]
        if not raw:
            continue
        if not any(c in raw for c in "/.:~") and not _resolve(raw, base).exists():
            continue
        try:
            target = parse_target(raw, base)
        except AttachmentError:
            target = TargetSpec(raw)
        out.append(Mention(m.start(), m.start() + 1 + len(raw), "@" + raw, target))
    return out


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


# -- attachments -----------------------------------------------------------------------------------


@dataclass
class Attachment:
    """The code of one mention, read and checked; `text` is cut to the budget in `build_prompt`."""

    label: str  # as the user wrote it, e.g. src/app.py:Parser.parse
    path: str
    symbol: str | None
    lines: tuple[int, int]
    text: str
    language: str | None
    total_lines: int
    lossy: bool = False
    cut: bool = False

    def block(self, text: str | None = None) -> str:
        body = self.text if text is None else text
        ticks = "````" if "```" in body else "```"
        what = f"`{self.path}`" + (f" › `{self.symbol}`" if self.symbol else "")
        where = f"lines {self.lines[0]}-{self.lines[1]}"
        cut = " (cut to fit; the rest is not shown)" if self.cut else ""
        return f"File {what}, {where}{cut}:\n{ticks}{self.language or ''}\n{body.rstrip()}\n{ticks}"

    def describe(self) -> str:
        n = self.lines[1] - self.lines[0] + 1
        return f"{self.label} ({n} line{'s' if n != 1 else ''}" + (", cut" if self.cut else "") + ")"

    def as_meta(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "symbol": self.symbol,
            "lines": list(self.lines),
            "cut": self.cut,
        }


def load_attachment(
    target: TargetSpec, root: Path | None = None, max_bytes: int = MAX_FILE_BYTES, label: str | None = None
) -> Attachment:
    """Read a file, symbol or line range for the prompt; every problem is one `AttachmentError` line."""
    base = root or Path.cwd()
    path = _resolve(target.path, base)
    try:
        doc = Document.load(path, max_bytes=max_bytes)
        t = resolve_target(doc, target.symbol, target.lines)
    except DemiUserError as exc:
        message = str(exc)
        if message.startswith(f"{path}: "):
            message = message[len(f"{path}: ") :]
        message = message.replace("use --lines A-B instead", f"attach lines instead (@{target.path}:A-B)")
        raise AttachmentError(f"@{target.label}: {message}") from None
    start, end = doc.line_span(t.first, t.last)
    return Attachment(
        label or target.label,
        target.path,
        t.symbol.qualname if t.symbol else None,
        (t.first, t.last),
        doc.text[start:end],
        doc.lang.fence if doc.lang else None,
        doc.line_count,
        doc.lossy,
    )


def load_mentions(text: str, root: Path | None = None, max_bytes: int = MAX_FILE_BYTES) -> list[Attachment]:
    """Every mention in `text` read as an attachment (each file once); the first problem raises."""
    out, seen = [], set()
    for m in find_mentions(text, root):
        if m.target.label in seen:
            continue
        seen.add(m.target.label)
        out.append(load_attachment(m.target, root, max_bytes, m.target.label))
    return out


def symbol_names(path: str | Path, max_bytes: int = 512 * 1024) -> list[str]:
    """Qualified names of the definitions in a file, for completing `@path:` (empty when unreadable)."""
    try:
        from demi.assistant.syntax import parse

        return [s.qualname for s in parse(Document.load(path, max_bytes=max_bytes)).symbols()]
    except Exception:  # completion is a convenience: an unreadable file simply offers nothing
        return []


# -- turns and the prompt --------------------------------------------------------------------------


@dataclass
class Turn:
    """What the model sees of one message: `context` holds the attachment blocks of a user turn."""

    role: str  # user | assistant
    content: str
    context: str = ""
    _tokens: int | None = field(default=None, repr=False, compare=False)

    def text(self) -> str:
        return f"{self.context}\n\n{self.content}" if self.context else self.content

    def tokens(self, count: Callable[[str], int]) -> int:
        if self._tokens is None:
            self._tokens = count(self.text()) + 8  # chat markup around each message
        return self._tokens


def command_turn(meta: dict[str, Any] | None, content: str) -> str:
    """The request text a stored explain/refactor message stands for."""
    meta = meta or {}
    command = meta.get("command")
    where = f"`{meta.get('path', '')}`" + (f" › `{meta['symbol']}`" if meta.get("symbol") else "")
    if command == "explain":
        return f"Explain {where}."
    if command == "refactor":
        return f"Rewrite {where}: {meta.get('instruction', '')}".rstrip(": ")
    return content


def turns_from_messages(messages: Iterable[Any]) -> list[Turn]:
    """Stored messages (objects with role, content, meta) as turns for the next prompt."""
    turns = []
    for m in messages:
        meta = getattr(m, "meta", None) or {}
        if m.role == "user":
            content = command_turn(meta, m.content) if meta.get("command") else m.content
            turns.append(Turn("user", content, str(meta.get("context") or "")))
        elif m.role == "assistant":
            turns.append(Turn("assistant", m.content))
    return turns


@dataclass
class BuiltPrompt:
    prompt: ChatPrompt
    turn: Turn  # the new user turn as it went to the model (attachments cut to fit)
    kept: int  # earlier turns that fit
    dropped: int  # earlier turns left out (oldest first)
    tokens: int  # estimated prompt tokens
    max_tokens: int = 0  # new tokens allowed (set by prepare_chat: at most half a small context)


def attachment_context(attachments: list[Attachment], count: Callable[[str], int], budget: int) -> str:
    """The attachment blocks as one prompt section within `budget` tokens (each file gets an equal
    share of what is left; a file that does not fit at all is an error, not a silent drop)."""
    blocks = []
    for i, a in enumerate(attachments):
        share = max(0, budget // max(1, len(attachments) - i))
        kept = keep_head(a.text, max(0, share - count(a.block("")) - 4), count)
        a.cut = len(kept) < len(a.text)
        if not kept.strip():
            raise DemiUserError(f"@{a.label} does not fit in the model's context next to the message")
        block = a.block(kept)
        blocks.append(block)
        budget -= count(block) + 2
    return ("The user attached:\n\n" + "\n\n".join(blocks)) if blocks else ""


def build_prompt(
    history: list[Turn], text: str, attachments: list[Attachment], count: Callable[[str], int], budget: int
) -> BuiltPrompt:
    """Messages for the chat template (and plain text for base models) within `budget` tokens: the
    message and its files always (files get three quarters of the room when there is history), then
    as many earlier turns as fit, newest first."""
    overhead = count(CHAT_SYSTEM) + 16
    question = count(text) + 8
    if overhead + question > budget:
        raise DemiUserError(
            f"the message is about {question} tokens; with the model's context only "
            f"{max(0, budget - overhead)} fit (shorten it, or use a model with a longer context)"
        )
    room = budget - overhead - question
    context = attachment_context(attachments, count, room * 3 // 4 if history else room)
    turn = Turn("user", text, context)
    room -= count(context) + 2 if context else 0
    kept_turns: list[Turn] = []
    for t in reversed(history):
        need = t.tokens(count)
        if need > room:
            break
        kept_turns.append(t)
        room -= need
    kept_turns.reverse()
    while kept_turns and kept_turns[0].role != "user":  # start on a question, not half an exchange
        room += kept_turns.pop(0).tokens(count)
    messages = [{"role": "system", "content": CHAT_SYSTEM}]
    messages += [{"role": t.role, "content": t.text()} for t in kept_turns + [turn]]
    plain = (
        PLAIN_HEAD
        + "".join(
            f"{PLAIN_USER if t.role == 'user' else PLAIN_ASSISTANT} {t.text().strip()}\n\n" for t in kept_turns + [turn]
        )
        + PLAIN_ASSISTANT
        + " "
    )
    return BuiltPrompt(
        ChatPrompt(messages, plain, [f"\n{PLAIN_USER}"]),
        turn,
        len(kept_turns),
        len(history) - len(kept_turns),
        budget - room,
    )


# -- the answer ------------------------------------------------------------------------------------


@dataclass
class ChatAnswer:
    text: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    first_token_seconds: float | None
    turn: Turn
    dropped_turns: int = 0
    context: int | None = None

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first (all of it if unknown)."""
        if self.completion_tokens <= 0 or self.seconds <= 0:
            return None
        first = self.first_token_seconds
        if first is not None and self.completion_tokens > 1 and self.seconds > first:
            return (self.completion_tokens - 1) / (self.seconds - first)
        return self.completion_tokens / self.seconds

    @property
    def context_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_meta(self) -> dict[str, Any]:
        return {
            "finish_reason": self.finish_reason,
            "first_token_seconds": self.first_token_seconds,
            "dropped_turns": self.dropped_turns,
        }


def chat_budget(engine: Any, max_tokens: int, budget: int) -> int:
    context = engine.info().context
    if context:
        budget = min(budget, context - max_tokens - 16)
    if budget < 64:
        raise DemiUserError(
            f"the model's context ({context} tokens) leaves no room for a message next to "
            f"{max_tokens} new tokens; lower chat.max_tokens"
        )
    return budget


def prepare_chat(
    engine: Any,
    history: list[Turn],
    text: str,
    attachments: list[Attachment] | None = None,
    max_tokens: int = 512,
    budget: int = 3072,
) -> BuiltPrompt:
    """The prompt for `text` after `history` (no model call yet: a front end can store the turn first)."""
    if not text.strip():
        raise DemiUserError("the message is empty")
    context = engine.info().context
    if context:
        max_tokens = max(1, min(max_tokens, context // 2))  # a small context: room for the question too
    built = build_prompt(
        history, text, list(attachments or []), engine.count_tokens, chat_budget(engine, max_tokens, budget)
    )
    built.max_tokens = max_tokens
    return built


def chat_sampling(temperature: float) -> Sampling | None:
    """Sampling for a chat answer at `temperature` (the `chat.temperature` setting): None is greedy,
    the engines' default; above 0, nucleus 0.95 as the command line samples; a negative or
    non-finite value is a user error naming the setting."""
    t = float(temperature)
    if not 0.0 <= t < float("inf"):
        raise DemiUserError(f"chat.temperature must be 0 (greedy) or more, not {temperature!r}")
    if t == 0.0:
        return None
    from demi.model.generate import Sampling

    return Sampling(temperature=t, top_p=0.95)


def answer(
    engine: Any,
    built: BuiltPrompt,
    max_tokens: int = 512,
    on_text: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
    sampling: Sampling | None = None,
    time_budget: float | None = None,
) -> ChatAnswer:
    """Stream the model's answer to a prepared prompt; `on_text` gets it piece by piece. An answer
    that falls into a loop is stopped and ends before the repeats (finish_reason "loop")."""
    began = False

    def emit(piece: str) -> None:  # leading blank lines would only push the answer down
        nonlocal began
        if not began:
            piece = piece.lstrip()
            began = bool(piece)
        if piece and on_text:
            on_text(piece)

    if built.max_tokens:
        max_tokens = min(max_tokens, built.max_tokens)
    guard = AnswerLoopGuard(emit, cancel)
    result = engine.chat(
        built.prompt,
        on_text=guard.push,
        max_new_tokens=max_tokens,
        sampling=sampling,
        cancel=guard.token,
        time_budget=time_budget,
    )
    text = guard.finish(result.text)
    info = engine.info()
    return ChatAnswer(
        text.strip(),
        info.name,
        guard.finish_reason(result.finish_reason),
        result.prompt_tokens or built.tokens,
        int(result.extra.get("completion_tokens", result.completion_tokens)),
        result.seconds,
        result.first_token_seconds,
        built.turn,
        built.dropped,
        info.context,
    )


def chat(
    engine: Any,
    history: list[Turn],
    text: str,
    attachments: list[Attachment] | None = None,
    max_tokens: int = 512,
    budget: int = 3072,
    on_text: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
    sampling: Sampling | None = None,
    time_budget: float | None = None,
) -> ChatAnswer:
    """Answer `text` after `history` in one call (`prepare_chat` then `answer`)."""
    built = prepare_chat(engine, history, text, attachments, max_tokens, budget)
    return answer(engine, built, max_tokens, on_text, cancel, sampling, time_budget)


# -- the engine, described for a status line ----------------------------------------------------------


@dataclass
class EngineDetails:
    model: str
    kind: str  # in-process | http
    quant: str | None
    device: str | None
    context: int | None
    url: str | None = None
    dtype: str | None = None  # of the unquantized weights (float32 on CPU)


def engine_details(engine: Any) -> EngineDetails:
    """Model, quantization, device and context of an engine, as far as it knows them."""
    info = engine.info()
    local = getattr(engine, "local", None)
    quant = device = dtype = None
    if local is not None:
        quant = str(getattr(local, "quantization", None) or "none")
        device = str(getattr(local, "device", None) or "") or None
        dtype = str(getattr(getattr(local, "model", None), "dtype", "") or "").replace("torch.", "") or None
    return EngineDetails(info.name, info.kind, quant, device, info.context, info.url, dtype)


def session_title(text: str, limit: int = 60) -> str:
    """A session's title from its first message: the first non-empty line, shortened."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
