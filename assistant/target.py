"""What a request is about: a whole file, one symbol, or a line range, with its static facts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from demi.assistant.document import Document
from demi.assistant.facts import Facts, file_facts, range_facts, symbol_facts
from demi.assistant.syntax import Symbol, Syntax, parse
from demi.model.errors import DemiUserError

if TYPE_CHECKING:
    from demi.assistant.context import CodeContext
    from demi.assistant.prompts import ChatPrompt

CONTEXT_MARGIN = 64  # tokens kept free in the model's context besides the prompt and the answer
MESSAGE_MARKUP = 8  # a server's chat markup around one message, at most (role, start and end tokens)
MIN_CODE_BUDGET = 64  # the code gets at least this much, even when the prompt's own text is long


@dataclass
class Target:
    doc: Document
    syntax: Syntax
    kind: str  # file | symbol | lines
    first: int  # 1-based inclusive line range
    last: int
    facts: Facts
    symbol: Symbol | None = None

    @property
    def label(self) -> str:
        if self.symbol is not None:
            return self.symbol.qualname
        return f"lines {self.first}-{self.last}" if self.kind == "lines" else self.doc.name


def resolve_target(
    doc: Document, symbol: str | None = None, lines: tuple[int, int] | None = None, syntax: Syntax | None = None
) -> Target:
    """The target of explain/refactor; errors name what exists (symbols) or the file's length."""
    if symbol and lines:
        raise DemiUserError("give --symbol or --lines, not both")
    syntax = syntax or parse(doc)
    if symbol:
        sym = syntax.find(symbol)
        return Target(doc, syntax, "symbol", sym.start_line, sym.end_line, symbol_facts(syntax, sym), sym)
    if lines:
        first, last = doc.check_lines(*lines)
        return Target(doc, syntax, "lines", first, last, range_facts(syntax, first, last))
    facts = file_facts(syntax)
    return Target(doc, syntax, "file", 1, max(1, facts.end_line), facts)


def prompt_tokens(engine: Any, prompt: ChatPrompt) -> int:
    """How many tokens `prompt` takes in `engine`'s context: exact for an in-process model (the
    prompt built as its `chat` builds it, chat template included); for a server, whose template is
    its own, the messages' tokens plus a generous allowance per message for the markup around them."""
    tokenizer = getattr(getattr(engine, "local", None), "tokenizer", None)
    if tokenizer is not None:
        from demi.assistant.generation import build_chat

        return len(build_chat(tokenizer, prompt).prompt)
    messages = sum(engine.count_tokens(m.get("content") or "") + MESSAGE_MARKUP for m in prompt.messages)
    return max(messages + MESSAGE_MARKUP, engine.count_tokens(prompt.plain))


def target_context(
    engine: Any,
    doc: Document,
    symbol: str | None,
    lines: tuple[int, int] | None,
    max_tokens: int,
    budget: int,
    frame: Callable[[Facts, CodeContext], ChatPrompt] | None = None,
    target: Target | None = None,
) -> tuple[Target, Any, CodeContext, int]:
    """The target, the engine's info, and the code around the target cut to what is left of
    `budget` once the answer (`max_tokens`) and the prompt around the code fit.

    `frame(facts, ctx)` is the task's prompt builder. The prompt's own text (instructions, facts,
    chat markup) is measured by building it around empty code, since a fixed estimate undercounts
    with small vocabularies and long chat templates; if the whole prompt still comes out over the
    model's context (the outline and definitions count differently than estimated), the code is cut
    once more by the excess. `target`: the request's target when the caller resolved it already."""
    from demi.assistant.context import CodeContext, code_context
    from demi.assistant.prompts import PROMPT_OVERHEAD, facts_lines

    target = target or resolve_target(doc, symbol, lines)
    info = engine.info()
    room = info.context - max_tokens - CONTEXT_MARGIN if info.context else None
    if room is not None:
        budget = min(budget, room)
    if frame is not None:
        overhead = prompt_tokens(engine, frame(target.facts, CodeContext([], [], [], "", False)))
    else:
        overhead = engine.count_tokens("\n".join(facts_lines(target.facts))) + PROMPT_OVERHEAD
    budget = max(MIN_CODE_BUDGET, budget - overhead)
    ctx = code_context(doc, target.syntax, target.first, target.last, engine.count_tokens, budget, target.symbol)
    if frame is not None and room is not None:
        excess = prompt_tokens(engine, frame(target.facts, ctx)) - (room + CONTEXT_MARGIN // 2)
        if excess > 0:
            budget = max(MIN_CODE_BUDGET, budget - excess - CONTEXT_MARGIN // 2)
            ctx = code_context(
                doc, target.syntax, target.first, target.last, engine.count_tokens, budget, target.symbol
            )
    return target, info, ctx, budget
