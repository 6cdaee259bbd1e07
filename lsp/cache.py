"""Completions already computed, served again while the user types through them.

An entry remembers the text before and after the cursor it was computed for and the
suggestion. A later request matches it when the text before the cursor is the entry's plus
characters that begin the suggestion, and the text after the cursor is unchanged: the answer
is the rest of the suggestion, with no model run. Brackets and quotes an editor auto-closes
while the user types (`(` brings a `)` after the cursor) are accepted when the rest of the
suggestion's line ends with them; the answer then replaces them, so nothing is doubled.
A suggestion that replaces text right of the cursor (`demi.assistant.overlap`) keeps replacing
the same text while the user types into it, as long as that text is unchanged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Entry:
    before: str
    after: str
    text: str
    replace: int = 0  # characters of `after` the suggestion replaces


@dataclass
class Hit:
    text: str  # what to insert at the cursor
    replace: int  # characters after the cursor the insertion replaces (auto-closed brackets)
    typed: int  # characters of the suggestion the user had typed already


class CompletionCache:
    def __init__(self, per_document: int = 8, documents: int = 16):
        self.per_document, self.documents = per_document, documents
        self._docs: OrderedDict[str, list[Entry]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def put(self, uri: str, before: str, after: str, text: str, replace: int = 0) -> None:
        with self._lock:
            entries = self._docs.pop(uri, [])
            entries = [e for e in entries if not (e.before == before and e.after == after)]
            entries.append(Entry(before, after, text, replace))
            self._docs[uri] = entries[-self.per_document :]
            while len(self._docs) > self.documents:
                self._docs.popitem(last=False)

    def get(self, uri: str, before: str, after: str) -> Hit | None:
        with self._lock:
            entries = list(self._docs.get(uri, ()))
        for e in reversed(entries):  # newest first
            hit = _match(e, before, after)
            if hit is not None:
                with self._lock:
                    self.hits += 1
                return hit
        with self._lock:
            self.misses += 1
        return None

    def forget(self, uri: str) -> None:
        with self._lock:
            self._docs.pop(uri, None)

    def clear(self) -> None:
        with self._lock:
            self._docs.clear()


def _match(e: Entry, before: str, after: str) -> Hit | None:
    if len(before) < len(e.before) or not before.startswith(e.before):
        return None
    typed = before[len(e.before) :]
    if typed and (len(typed) >= len(e.text) or not e.text.startswith(typed)):
        return None  # typed past the suggestion, or something else
    rest = e.text[len(typed) :]
    if after == e.after:
        return Hit(rest, e.replace, len(typed))
    if e.replace or not typed or len(after) <= len(e.after) or not after.endswith(e.after):
        return None
    extra = after[: len(after) - len(e.after)]  # what the editor inserted after the cursor meanwhile
    first_line = rest.split("\n", 1)[0]
    if "\n" in extra or not first_line.endswith(extra) or len(first_line) <= len(extra):
        return None
    if any(c.isalnum() or c == "_" for c in extra):  # only auto-closed brackets and quotes
        return None
    return Hit(rest, len(extra), len(typed))
