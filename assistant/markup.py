"""Tags in HTML, Vue templates and JSX, read from plain text.

Completion post-processing works on text that does not parse yet (the model's output, a window
of the file cut anywhere), so tags are found here by a small scanner instead of a grammar: it
skips comments, quoted attribute values, JSX `{...}` expressions and the raw text of `<script>`
and `<style>`, and knows HTML's void elements (`<br>`, `<img>`), which never close.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

VOID = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
IMPLIED_END = frozenset({"li", "dt", "dd", "p", "option", "tr", "td", "th"})  # closed by a sibling
RAW_TEXT = frozenset({"script", "style", "textarea", "title"})
_NAME = re.compile(r"[A-Za-z][\w.:-]*")
_IDENT_BEFORE = re.compile(r"[\w$)\]]")


@dataclass(frozen=True)
class Tag:
    kind: str  # open | close | self (self-closing, or a void element)
    name: str  # "" for a JSX fragment (<> and </>)
    start: int  # index of "<"
    end: int  # index after ">"


def _skip_attributes(text: str, i: int, jsx: bool) -> tuple[int, bool] | None:
    """From inside a start tag: (index after its ">", self-closing?); None if the text ends first."""
    n, depth = len(text), 0
    while i < n:
        ch = text[i]
        if ch in "\"'" or (ch == "`" and depth):
            close = text.find(ch, i + 1)
            if close < 0:
                return None
            i = close + 1
            continue
        if jsx and ch == "{":
            depth += 1
        elif jsx and ch == "}" and depth:
            depth -= 1
        elif depth == 0 and ch == ">":
            return i + 1, text[i - 1] == "/"
        elif depth == 0 and ch == "<":
            return None  # a "<" inside a start tag: this was no tag
        i += 1
    return None


def scan_tags(text: str, jsx: bool = False) -> Iterator[Tag]:
    """Every whole tag in `text`, in order (an unfinished one at the end is left out).

    `jsx`: fragments count, `{...}` may hold ">", names keep their case, and a "<" right after a
    name or a closing bracket (`Array<string>`, `f()<x`) is a comparison or a generic, not the
    start of an element."""
    i, n = 0, len(text)
    while True:
        i = text.find("<", i)
        if i < 0 or i + 1 >= n:
            return
        if text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                return
            i = end + 3
            continue
        if text[i + 1] == "!" or text[i + 1] == "?":  # doctype, processing instruction
            end = text.find(">", i)
            if end < 0:
                return
            i = end + 1
            continue
        closing = text[i + 1] == "/"
        if jsx and not closing and i > 0 and _IDENT_BEFORE.match(text[i - 1]):
            i += 1
            continue
        at = i + 2 if closing else i + 1
        m = _NAME.match(text, at)
        if m is None and not (jsx and text.startswith(">", at)):
            i += 1
            continue
        name = m.group(0) if m else ""
        if not jsx:
            name = name.lower()
        after = m.end() if m else at
        if after < n and m is not None and not (text[after].isspace() or text[after] in "/>"):
            i += 1  # `<T,>`, `<a+b`: not a tag
            continue
        if closing:
            end = text.find(">", after)
            if end < 0:
                return
            yield Tag("close", name, i, end + 1)
            i = end + 1
            continue
        skipped = _skip_attributes(text, after, jsx)
        if skipped is None:
            return
        end, self_closing = skipped
        void = not jsx and name in VOID
        yield Tag("self" if self_closing or void else "open", name, i, end)
        i = end
        if not jsx and not self_closing and name in RAW_TEXT:  # its content is not markup
            close = text.lower().find(f"</{name}", end)
            if close < 0:
                return
            i = close


def open_tags(text: str, jsx: bool = False) -> list[Tag]:
    """The tags `text` leaves open, outermost first. A closing tag pops back to its opener (HTML's
    implied ends: `<li>a<li>b</ul>`), as does a list item or paragraph its next sibling; a closing
    tag without an opener is ignored."""
    stack: list[Tag] = []
    for tag in scan_tags(text, jsx):
        if tag.kind == "open":
            if not jsx and stack and stack[-1].name == tag.name and tag.name in IMPLIED_END:
                stack.pop()  # `<li>a<li>b`: the second item ends the first
            stack.append(tag)
        elif tag.kind == "close":
            for k in range(len(stack) - 1, -1, -1):
                if stack[k].name == tag.name:
                    del stack[k:]
                    break
    return stack


def unmatched_closers(text: str, jsx: bool = False) -> list[Tag]:
    """Closing tags in `text` whose openers come before it (they close what is open at its start),
    in order: the suffix's view of which elements it ends."""
    stack: list[str] = []
    out: list[Tag] = []
    for tag in scan_tags(text, jsx):
        if tag.kind == "open":
            stack.append(tag.name)
        elif tag.kind == "close":
            if tag.name in stack:
                while stack and stack.pop() != tag.name:
                    pass
            else:
                out.append(tag)
    return out


def closer(name: str) -> str:
    return f"</{name}>"
