"""Context for prompts: what around the cursor, in the file and in other files helps the model.

For FIM: the prefix and suffix around the cursor (cut about 3:1 to the token budget), the
definitions of names used near the cursor that the cut left out, and the best-matching
snippets from recently seen files (a ring buffer the language server and the TUI feed as the
user moves between files). For explain and refactor: the file's outline and imports and the
same-file definitions the target uses. In a file that embeds other languages (HTML, Vue, MDX)
the definitions come from every region: a template's `@click="save"` brings the script's `save`.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from demi.assistant.budget import Counter, keep_head, keep_tail, split_budget
from demi.assistant.document import Document
from demi.assistant.syntax import Symbol, Syntax

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")


@dataclass
class Snippet:
    path: str
    text: str
    score: float = 0.0


class RecentFiles:
    """A thread-safe ring buffer of the last `capacity` files seen, newest last."""

    def __init__(self, capacity: int = 8, max_chars: int = 400_000):
        self.capacity, self.max_chars = capacity, max_chars
        self._files: OrderedDict[str, str] = OrderedDict()
        self._chunks: dict[str, tuple[str, int, list[tuple[str, set[str]]]]] = {}  # path -> (text, window, chunks)
        self._lock = threading.Lock()

    def add(self, path: str | Path, text: str) -> None:
        key = str(path)
        with self._lock:
            self._files.pop(key, None)
            self._files[key] = text[: self.max_chars]
            while len(self._files) > self.capacity:
                gone, _ = self._files.popitem(last=False)
                self._chunks.pop(gone, None)

    def _windows(self, path: str, text: str, window: int) -> list[tuple[str, set[str]]]:
        """The file's overlapping chunks with their identifiers, computed once per text (a language
        server asks on every keystroke, and other files rarely change meanwhile)."""
        with self._lock:
            hit = self._chunks.get(path)
        if hit is not None and hit[0] is text and hit[1] == window:
            return hit[2]
        lines = text.splitlines(keepends=True)
        out = []
        for start in range(0, max(1, len(lines)), max(1, window // 2)):
            chunk = "".join(lines[start : start + window])
            words = set(_WORD.findall(chunk))
            if words:
                out.append((chunk, words))
        with self._lock:
            if self._files.get(path) is text:
                self._chunks[path] = (text, window, out)
        return out

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def items(self) -> list[tuple[str, str]]:
        """(path, text) of the files held, oldest first (the workspace cache reads them)."""
        with self._lock:
            return list(self._files.items())

    def snippets(
        self, query: str, exclude: str | Path | None = None, window: int = 30, limit: int = 3
    ) -> list[Snippet]:
        """Chunks of other files sharing the most identifiers with `query` (Jaccard similarity)."""
        want = set(_WORD.findall(query))
        if not want:
            return []
        with self._lock:
            files = [(p, t) for p, t in self._files.items() if p != (str(exclude) if exclude else None)]
        best: list[Snippet] = []
        for path, text in files:
            top: Snippet | None = None
            for chunk, words in self._windows(path, text, window):
                score = len(want & words) / len(want | words)
                if top is None or score > top.score:
                    top = Snippet(path, chunk, score)
            if top is not None and top.score > 0.05:
                best.append(top)
        return sorted(best, key=lambda s: -s.score)[:limit]


@dataclass
class FimContext:
    """Everything a FIM prompt is built from, already cut to the budget."""

    prefix: str
    suffix: str
    path: str | None = None
    language: str | None = None
    other_files: list[tuple[str, str]] = field(default_factory=list)  # (path, text), oldest first
    notes: list[str] = field(default_factory=list)
    prefix_cut: bool = False
    suffix_cut: bool = False


def _definition_text(doc: Document, sym: Symbol, max_lines: int = 12) -> str:
    """The whole definition when short, else its header lines up to the body."""
    lines = [doc.line(i) for i in range(sym.start_line, min(sym.end_line, doc.line_count) + 1)]
    if len(lines) <= max_lines:
        return "\n".join(lines) + "\n"
    body = sym.node.child_by_field_name("body") if sym.node is not None else None
    body_line = body.start_point[0] + 1 if body is not None else sym.start_line  # 1-based
    head = lines[: max(1, body_line - sym.start_line + 1)]
    return "\n".join(head[:max_lines]) + "\n"


def used_definitions(
    syntax: Syntax,
    first_line: int,
    last_line: int,
    visible: tuple[int, int] | None = None,
    exclude: Symbol | None = None,
    cursor_line: int | None = None,
) -> list[Symbol]:
    """Same-file definitions of names used in first..last (1-based), skipping those wholly
    inside the `visible` line window, the `exclude` symbol itself and any that holds `cursor_line`
    (its text is the code being typed: copied ahead of the prefix it would change the prompt's start
    at every keystroke, and the prefix cache could not reuse it)."""
    names = set(syntax.identifiers(first_line, last_line))
    out = []
    for sym in syntax.symbols():
        if sym.name not in names or (exclude is not None and sym.qualname == exclude.qualname):
            continue
        if sym.start_line <= first_line and sym.end_line >= last_line:
            continue  # the enclosing definition itself
        if cursor_line is not None and sym.start_line <= cursor_line <= sym.end_line:
            continue
        if visible and visible[0] <= sym.start_line and sym.end_line <= visible[1]:
            continue
        out.append(sym)
    return out


def snap_lines(budget: int) -> int:
    """How many lines the prefix and suffix cuts move by at once (see budget.py): about one line
    per 96 tokens of budget, so typing leaves the prompt's start as it was and the engine's prefix
    cache can reuse it, at the cost of about 5% of the budget on average (10% at most)."""
    return max(1, budget // 96)


def fim_context(
    doc: Document,
    offset: int,
    count: Counter,
    budget: int,
    syntax: Syntax | None = None,
    recent: RecentFiles | None = None,
) -> FimContext:
    """Prefix and suffix around `offset`, other files and definitions, within `budget` tokens."""
    prefix_all, suffix_all = doc.text[:offset], doc.text[offset:]
    ctx = FimContext("", "", doc.name if doc.path else None, doc.lang.name if doc.lang else None)
    cursor_line = doc.line_of(offset)
    if syntax is not None and doc.lang is not None and doc.lang.embeds:
        here = syntax.language_at(offset)  # a page's <script>, a component's <style>, MDX's JSX
        if here is not None and here is not doc.lang:
            ctx.language = here.name
            ctx.notes.append(f"the cursor is in {doc.lang.name}'s embedded {here.name}")

    others: list[tuple[str, str]] = []
    others_used = 0
    if recent is not None:
        near = doc.text[max(0, offset - 1500) : offset + 300]
        for snip in reversed(recent.snippets(near, exclude=doc.name)):  # best one nearest the cursor
            text = keep_head(snip.text, budget // 4 - others_used, count)
            if text.strip():
                others.append((snip.path, text))
                others_used += count(text)
        if others:
            ctx.notes.append(f"{len(others)} snippet(s) from other files")

    def cut(room: int) -> tuple[str, str]:
        p_need, s_need = _need(prefix_all, room, count, tail=True), _need(suffix_all, room, count, tail=False)
        pb, sb = split_budget(room, p_need, s_need)
        return keep_tail(prefix_all, pb, count, snap_lines(pb)), keep_head(suffix_all, sb, count, snap_lines(sb))

    room = max(0, budget - others_used)
    prefix, suffix = cut(room)
    if syntax is not None and syntax.parsed and (len(prefix) < len(prefix_all) or len(suffix) < len(suffix_all)):
        first_visible = doc.line_of(offset - len(prefix))
        last_visible = doc.line_of(min(len(doc.text), offset + len(suffix)))
        near_first, near_last = max(1, cursor_line - 15), min(doc.line_count, cursor_line + 3)
        syms = used_definitions(syntax, near_first, near_last, (first_visible, last_visible), cursor_line=cursor_line)
        defs, used = [], 0
        for sym in syms:
            for text in (_definition_text(doc, sym), _definition_text(doc, sym, max_lines=1)):
                c = count(text)
                if used + c <= budget // 5:
                    defs.append(text)
                    used += c
                    break
        if defs:
            others.append((ctx.path or "definitions", "".join(defs)))
            ctx.notes.append(f"{len(defs)} definition(s) from elsewhere in the file")
            prefix, suffix = cut(max(0, room - used))
    ctx.prefix, ctx.suffix, ctx.other_files = prefix, suffix, others
    ctx.prefix_cut, ctx.suffix_cut = len(prefix) < len(prefix_all), len(suffix) < len(suffix_all)
    if ctx.prefix_cut:
        ctx.notes.append(f"prefix cut to the last {prefix.count(chr(10))} lines")
    if ctx.suffix_cut:
        ctx.notes.append(f"suffix cut to the next {suffix.count(chr(10))} lines")
    return ctx


def _need(text: str, room: int, count: Counter, tail: bool) -> int:
    """Tokens `text` needs, counted on at most what could fit in `room` (big files stay cheap)."""
    limit = room * 12
    sample = text[-limit:] if tail else text[:limit]
    return count(sample) if len(sample) == len(text) else room + 1


@dataclass
class CodeContext:
    """What explain and refactor show the model besides the target code."""

    outline: list[str]
    imports: list[str]
    definitions: list[str]
    code: str
    code_cut: bool = False


def code_context(
    doc: Document, syntax: Syntax, first: int, last: int, count: Counter, budget: int, target: Symbol | None = None
) -> CodeContext:
    """The target lines (cut from the end to fit), then the outline, imports and definitions."""
    start, end = doc.line_span(first, last)
    code = doc.text[start:end]
    code_budget = budget * 3 // 4
    kept = keep_head(code, code_budget, count)
    ctx = CodeContext([], [], [], kept, len(kept) < len(code))
    room = budget - count(kept)
    for sym in syntax.symbols():
        if sym.depth > 1:
            continue
        line = ("    " * sym.depth) + f"{sym.signature}  # lines {sym.start_line}-{sym.end_line}"
        c = count(line)
        if c > room // 2:
            break
        ctx.outline.append(line)
        room -= c
    for imp in syntax.imports():
        c = count(imp)
        if c > room // 2:
            break
        ctx.imports.append(imp)
        room -= c
    if syntax.parsed:
        for sym in used_definitions(syntax, first, last, (first, last), exclude=target):
            text = _definition_text(doc, sym, max_lines=6)
            c = count(text)
            if c > room:
                continue
            ctx.definitions.append(text)
            room -= c
    return ctx
