"""What a suggestion does to the text right of the cursor: insert before it, replace it, or nothing.

In the middle of a line the cursor has text after it (`    |for it in items:`). A model, above all
one that sees only the text before the cursor, often writes that text again, changed or not.
Inserted as it is, the line gets it twice (`return sreturn `). After post-processing, one
decision is taken here, on the cursor's line only (`right`: the text after the cursor up to the
line break, `\\r` and `\\n` both ending it, as in LSP):

- the suggestion only repeats `right` (it is `right`, or the start of it, on one line): dropped;
- the suggestion contains all of `right` with text added at one place (`right` is a prefix of
  it, a suffix of it, or both split around an insertion: `for it in items:` in
  `for item in items:`): it *replaces* `right`, and the answer says how many characters after
  the cursor it replaces (an editor's range from the cursor to there, as Copilot and Tabby
  answer). The editor then shows only the added text as ghost text, and accepting leaves the
  line as the suggestion wrote it;
- anything else (including a `right` of only blanks, which is left alone): inserted at the cursor.

Brackets and quotes decide the doubtful cases. An editor auto-closes `(` and `"`, so `right` is
often just `)` or `"]`, and a suggestion ending in `)` may close its own call (`foo(x)` at
`bar(|)`: the line should read `bar(foo(x))`) or the existing one (`x)` at `foo(|)`). So a
replacement must leave the brackets opened before the cursor closed exactly as inserting would,
and it is taken for a `right` of only punctuation when it makes the line better balanced (fewer
stray closers, unclosed own openers or open quotes); for a `right` with words in it, when it
makes it no worse. So `foo(x)` at `bar(|)` is inserted and keeps the `)`, and `x)` at `foo(|)`
replaces the `)`, leaving the cursor after it once accepted.

Pure functions on strings; positions are Python characters (code points): the LSP layer turns
them into its own units.
"""

from __future__ import annotations

from dataclasses import dataclass

from demi.assistant.languages import LangSpec
from demi.assistant.postprocess import CLOSERS, OPENERS, BracketScanner

BRACKET_CONTEXT = 4000  # characters before the cursor scanned for brackets still open there


@dataclass(frozen=True)
class Overlap:
    """The suggestion to show and how many characters right of the cursor it replaces."""

    text: str
    replace: int = 0
    action: str = "insert"  # insert | replace | drop


def right_of_cursor(suffix: str) -> str:
    """The text after the cursor on its own line: up to the first `\\r` or `\\n`."""
    ends = [i for i in (suffix.find("\r"), suffix.find("\n")) if i >= 0]
    return suffix[: min(ends)] if ends else suffix


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


def covers(text: str, right: str) -> bool:
    """Whether `text` is `right` with something inserted at one place (or appended, or prepended):
    a start of `text` and an end of `text`, not overlapping, together spell `right`."""
    if not right or len(text) < len(right):
        return False
    return _common_prefix(text, right) + _common_suffix(text, right) >= len(right)


def repeats(text: str, right: str) -> bool:
    """Whether a one-line `text` only writes again what `right` already has (`right` or its start)."""
    body = text.rstrip("\r\n")
    if not body.strip() or "\n" in body or "\r" in body:
        return False
    return right.rstrip().startswith(body.rstrip())


@dataclass
class _Brackets:
    """Scanner state at the cursor: openers still open there (innermost last), quote, comment."""

    stack: list[str]
    quote: str | None
    in_comment: bool


def _state_before(prefix: str, comment: str) -> _Brackets:
    head = prefix[-BRACKET_CONTEXT:]
    if len(head) < len(prefix):  # start at a line, not in the middle of one
        head = head[head.find("\n") + 1 :]
    scanner = BracketScanner(comment)
    stack: list[str] = []
    for _, ch in scanner.scan(head):
        if ch in OPENERS:
            stack.append(ch)
        elif stack and stack[-1] == CLOSERS[ch]:
            stack.pop()
    return _Brackets(stack, scanner.quote, scanner.in_comment)


def _effect(state: _Brackets, text: str, comment: str) -> tuple[int, int]:
    """(openers from before the cursor that `text` closes, how unbalanced `text` leaves the line):
    stray closers, plus its own openers left open, plus one for a quote left open."""
    scanner = BracketScanner(comment)
    scanner.quote, scanner.in_comment = state.quote, state.in_comment
    outer, own = list(state.stack), 0
    closed, stray = 0, 0
    for _, ch in scanner.scan(text):
        if ch in OPENERS:
            own += 1
            outer.append(ch)
        elif outer and outer[-1] == CLOSERS[ch]:
            outer.pop()
            if own:
                own -= 1
            else:
                closed += 1
        else:
            stray += 1
    return closed, stray + own + (1 if scanner.quote is not None else 0)


def resolve_overlap(prefix: str, completion: str, suffix: str, spec: LangSpec | None = None) -> Overlap:
    """How `completion` (post-processed) goes in at the cursor between `prefix` and `suffix`:
    dropped, inserted, or replacing the first `replace` characters of `suffix` (see the module)."""
    right = right_of_cursor(suffix)
    if not completion or not right.strip():
        return Overlap(completion)
    if repeats(completion, right):
        return Overlap("", 0, "drop")
    body = right.rstrip()
    if not covers(completion, body):
        return Overlap(completion)
    comment = spec.line_comment if spec is not None else "#"
    state = _state_before(prefix, comment)
    closed_ins, bad_ins = _effect(state, completion + right, comment)
    closed_rep, bad_rep = _effect(state, completion, comment)  # blanks after `body` go too
    if closed_rep != closed_ins:
        return Overlap(completion)  # the text after the cursor closes something the suggestion does not
    wordy = any(c.isalnum() or c == "_" for c in body)
    if bad_rep < bad_ins or (wordy and bad_rep <= bad_ins):
        return Overlap(completion, len(right), "replace")
    return Overlap(completion)
