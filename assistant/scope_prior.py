"""Identifiers in scope at the cursor, as a prior the model's next token is mixed with where it
hesitates (an experiment of issue 21, measured against the workspace cache alone in MODEL_CARD.md).

`scope_names` reads them from the syntax tree (tree-sitter, `demi.assistant.syntax`): the
parameters, locals and names used so far in the enclosing function, the attributes of `self` (or
`this`) and the methods of the enclosing class, the names that imports bind, and the file's
top-level definitions. `ScopePrior`, at each generated token, finds the identifier being written
(the word before the cursor plus what was generated), the in-scope names that extend it, and the
vocabulary token each of them would continue with (the longest token its remaining text starts
with); the prior spreads evenly over those names and applies only where the model's top choice is
below `HESITATES` (`Prior.below`).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence
from typing import Any

from demi.assistant.document import Document
from demi.assistant.syntax import Syntax

HESITATES = 0.5  # mix only where the model's most likely token is below this probability
WEIGHT = 0.5
MAX_NAMES = 400
_WORD_END = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SELF_ATTR = re.compile(r"\b(?:self|this)\.([A-Za-z_][A-Za-z0-9_]*)")
_SELF_DOT = re.compile(r"\b(?:self|this)\.\Z")
# top-level assignments (`LIMIT = 3`, `name: str = ""`, `const x =`), which are no symbols
_TOP_ASSIGN = re.compile(
    r"^(?:(?:export\s+)?(?:const|let|var)\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?::[^=\n]*)?=(?!=)", re.MULTILINE
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION_KINDS = ("function", "method")
_AFTER_SPACE = set(",=:+-*/%<>&|^!~")  # a name after these is written after a space


def scope_names(syntax: Syntax, doc: Document, offset: int) -> tuple[list[str], list[str]]:
    """(names, attributes) in scope at `offset`: the enclosing function's parameters, locals and
    names used before the cursor, imported names and top-level definitions, nearest scope first;
    and the attributes of `self` / `this` and the methods of the enclosing class."""
    line = doc.line_of(offset)
    syms = syntax.symbols()
    names: dict[str, None] = {}
    attrs: dict[str, None] = {}
    funcs = [s for s in syms if s.kind in _FUNCTION_KINDS and s.start_line <= line <= s.end_line + 2]
    func = max(funcs, key=lambda s: s.start_line, default=None)
    if func is not None:
        names.update(dict.fromkeys(syntax.identifiers(func.start_line, line)))
    classes = [s for s in syms if s.kind == "class" and s.start_line <= line <= s.end_line + 2]
    cls = max(classes, key=lambda s: s.start_line, default=None)
    if cls is not None:
        text = "\n".join(doc.line(i) for i in range(cls.start_line, min(cls.end_line, doc.line_count) + 1))
        attrs.update(dict.fromkeys(_SELF_ATTR.findall(text)))
        inside = (s.name for s in syms if s.depth == cls.depth + 1 and cls.start_line < s.start_line <= cls.end_line)
        attrs.update(dict.fromkeys(inside))
    for imp in syntax.imports():
        names.update(dict.fromkeys(w for w in _NAME.findall(imp) if w not in ("import", "from", "as")))
    names.update(dict.fromkeys(s.name for s in syms if s.depth == 0))
    names.update(dict.fromkeys(_TOP_ASSIGN.findall(doc.text[:offset])))
    keep = [n for n in names if not keyword.iskeyword(n) and n not in ("self", "this")]
    return keep[:MAX_NAMES], [a for a in attrs if not keyword.iskeyword(a)][:MAX_NAMES]


class ScopePrior:
    """One generation's scope prior (see the module); `prefix` is the prompt's text before the
    cursor less `heal`, the text token healing cut off (the first tokens spell it)."""

    def __init__(self, tokenizer: Any, names: Sequence[str], attributes: Sequence[str], prefix: str, heal: str):
        from demi.model.generate import Prior

        self.tokenizer, self.prefix, self.heal = tokenizer, prefix, heal
        self.names, self.attributes = list(names), list(attributes)
        self._prior = Prior
        self._first: dict[str, int | None] = {}  # text -> its first token
        self.steps = self.mixed = 0

    def __call__(self, tokens: Sequence[int]) -> Sequence[Any]:
        self.steps += 1
        written = self.tokenizer.decode(list(tokens)) if tokens else ""
        if len(written) < len(self.heal):  # healing still spells the prompt's cut-off end
            pending = self.heal[len(written) :]
            if not self.heal.startswith(written) or not pending.strip():
                return ()  # blanks to spell (a line's start, after a space): the model's own choice
            text = self.prefix + self.heal
        else:
            pending, text = "", self.prefix + written[len(self.heal) :]
        m = _WORD_END.search(text)
        word = m.group() if m is not None else ""
        lead, pool = "", self.names
        if word and keyword.iskeyword(word):
            word, lead = "", " "
        elif not word:
            last = text[-1:]
            if last in _AFTER_SPACE:
                lead = " "
            elif last == ".":
                if not _SELF_DOT.search(text):
                    return ()  # an attribute of something else: its names are not known here
                pool = self.attributes
            elif last not in "([{":
                return ()  # not where a name starts
        elif _SELF_DOT.search(text[: len(text) - len(word)]):
            pool = self.attributes
        counts: dict[int, int] = {}
        for name in pool:
            if len(name) <= len(word) or not name.startswith(word):
                continue
            token = self._first_token(pending + lead + name[len(word) :])
            if token is not None:
                counts[token] = counts.get(token, 0) + 1
        if not counts:
            return ()
        total = sum(counts.values())
        self.mixed += 1
        ids = list(counts)
        return (self._prior(ids, [counts[i] / total for i in ids], WEIGHT, HESITATES),)

    def _first_token(self, text: str) -> int | None:
        """The first token of `text` as the tokenizer writes it (memoized)."""
        if text not in self._first:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._first[text] = ids[0] if ids else None
        return self._first[text]


def scope_hook(engine: Any, syntax: Syntax, doc: Document, offset: int, prefix: str) -> ScopePrior | None:
    """The scope prior for one FIM request (None for a model server or where nothing is in scope)."""
    from demi.assistant.workspace_cache import tokenizer_of
    from demi.model.healing import split_heal

    tokenizer = tokenizer_of(engine)
    if tokenizer is None:
        return None
    names, attributes = scope_names(syntax, doc, offset)
    if not names and not attributes:
        return None
    text, heal = split_heal(prefix, tokenizer)
    return ScopePrior(tokenizer, names, attributes, text, heal)
