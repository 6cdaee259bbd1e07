"""What a request is about: a whole file, one symbol, or a line range, with its static facts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from demi.assistant.document import Document
from demi.assistant.facts import Facts, file_facts, range_facts, symbol_facts
from demi.assistant.syntax import Symbol, Syntax, parse
from demi.model.errors import DemiUserError

if TYPE_CHECKING:
    from demi.assistant.context import CodeContext


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


def target_context(
    engine: Any, doc: Document, symbol: str | None, lines: tuple[int, int] | None, max_tokens: int, budget: int
) -> tuple[Target, Any, CodeContext, int]:
    """The target, the engine's info, and the code around the target cut to what is left of
    `budget` once the answer (`max_tokens`), the static facts and the prompt's own text fit."""
    from demi.assistant.context import code_context
    from demi.assistant.prompts import PROMPT_OVERHEAD, facts_lines

    target = resolve_target(doc, symbol, lines)
    info = engine.info()
    if info.context:
        budget = min(budget, info.context - max_tokens - 64)
    budget = max(64, budget - engine.count_tokens("\n".join(facts_lines(target.facts))) - PROMPT_OVERHEAD)
    ctx = code_context(doc, target.syntax, target.first, target.last, engine.count_tokens, budget, target.symbol)
    return target, info, ctx, budget
