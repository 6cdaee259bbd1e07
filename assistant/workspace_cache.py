"""The workspace cache model: n-gram statistics of the user's own code, mixed into the model's
next-token distribution at inference.

Code repeats itself within a project far more than across projects: a name defined once is used
again, a call written once is written again with the same arguments. Cache n-gram models built from
the files at hand beat neural models on project-specific code (Hellendoorn and Devanbu, FSE 2017,
nested caches with dynamic mixing), and interpolating a model with a nearest-neighbour or
longest-match lookup over a datastore helps the same way (kNN-LM, Khandelwal et al., ICLR 2020;
infini-gram, Liu et al., 2024). Here:

- `WorkspaceCache` holds the token ids (the model's own vocabulary) of the current document (the
  text before and after the cursor, split at it), the other open documents and workspace files, in
  chunks cut where the content says (`chunk_spans`), so an edit re-tokenizes only the chunks it
  touched. The whole is bounded by a token budget: least recently used sources go first, workspace
  files before open documents. `token_ngrams.TokenNgrams` indexes the chunks.
- `WorkspacePrior` is one request's hook (`GenerationRequest.mix`): the context is the text before
  the cursor (less what token healing cuts off, as the engine does) and the tokens written so far;
  its prior is the next-token distribution of the longest match of that context (up to
  `DEFAULT_MAX_ORDER` tokens), mixed in with a weight that grows with the cache's confidence
  (`mix_weight`: how long the match is, and Witten-Bell's n / (n + distinct) of what followed it).
  Greedy decoding takes the argmax of the mixture.

Only an in-process model can be mixed with (`tokenizer_of` is None for a model server). Measured in
MODEL_CARD.md ("Workspace cache"); on by default only because it won there.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demi.assistant.token_ngrams import DEFAULT_MAX_ORDER, Matches, Prediction, TokenNgrams

Encoder = Callable[[list[str]], list[list[int]]]  # texts -> their token ids (no special tokens added)

DEFAULT_BUDGET_TOKENS = 400_000  # about 1.3 MB of code; about 28 MB of memory (measured on the stdlib)
# A chunk ends after a line whose hash says so once it has MIN_LINES lines (about 1 line in
# CUT_EVERY), and always at MAX_LINES or MAX_CHARS: an edit changes the one chunk it falls in.
MIN_LINES, CUT_EVERY, MAX_LINES, MAX_CHARS = 8, 8, 64, 4000
CONTEXT_CHARS = 800  # text before the cursor tokenized as the lookup's context
# The mixing weight: MAX_WEIGHT for a long match whose occurrences all agree (see `mix_weight`).
MAX_WEIGHT = 0.3
FULL_LENGTH = 8  # a match of this many tokens counts fully; shorter ones less (2 tokens: 1/7)
# Workspace files read from disk: the same language as the document, nearest folders first.
WORKSPACE_MAX_FILES = 400
WORKSPACE_SHARE = 0.5  # of the token budget
FOLDER_MAX_FILES, FOLDER_MAX_TOKENS = 8, 60_000  # `demi complete`: what it reads before answering
SKIPPED_DIRS = frozenset(
    {"node_modules", "__pycache__", "venv", "env", "build", "dist", "target", "site-packages", "out"}
)


def chunk_spans(text: str, cursor: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of the chunks of `text`: runs of whole lines ending where a line's hash says
    (content-defined, so an insertion moves no boundary but its own chunk's); with `cursor`, the
    chunk holding it is split there (nothing before the cursor sees what follows it as its next
    token, and the text being typed is its own small chunk)."""
    return split_at(_chunks_from(text, 0), cursor)


def _chunks_from(
    text: str, start: int, old_ends: dict[int, int] | None = None, delta: int = 0, same_after: int = 0
) -> list[tuple[int, int]]:
    """The chunks of `text` from `start` (a chunk boundary). With `old_ends` (the old text's chunk
    ends, each to its index) it stops at the first boundary at or after `same_after` (where the old
    and new texts agree to the end) that the old text also had, `delta` characters earlier, and
    returns what it found with (-1, old index) last: the caller takes the old chunks from there."""
    spans: list[tuple[int, int]] = []
    pos = start
    lines = 0
    n = len(text)
    while pos < n:
        end = text.find("\n", pos)
        end = n if end < 0 else end + 1
        lines += 1
        line = text[pos:end]
        pos = end
        cut = lines >= MIN_LINES and zlib.crc32(line.encode("utf-8", "surrogatepass")) % CUT_EVERY == 0
        if cut or lines >= MAX_LINES or pos - start >= MAX_CHARS:
            spans.append((start, pos))
            start, lines = pos, 0
            if old_ends is not None and pos >= same_after and (pos - delta) in old_ends:
                spans.append((-1, old_ends[pos - delta]))
                return spans
    if start < n:
        spans.append((start, n))
    return spans


def rechunk(old: str, spans: list[tuple[int, int]], new: str) -> list[tuple[int, int]]:
    """The chunks of `new` (`chunk_spans` without a cursor), from the chunks of `old`: the lines
    before the first change keep their chunks, chunking starts again there and stops as soon as it
    meets a boundary the old text had in the part both end with. An edit costs its own chunks,
    not the file's length."""
    if not spans:
        return _chunks_from(new, 0)
    lo = _common_prefix(old, new)
    hi = min(_common_suffix(old, new), len(old) - lo, len(new) - lo)
    delta = len(new) - len(old)
    keep = 0
    while keep < len(spans) - 1 and spans[keep][1] <= lo:  # the last one ended with the text: not a boundary
        keep += 1
    restart = spans[keep - 1][1] if keep else 0
    ends = {b: i for i, (_, b) in enumerate(spans[keep:], start=keep)}
    found = _chunks_from(new, restart, ends, delta, len(new) - hi)
    if found and found[-1][0] == -1:
        after = found.pop()[1] + 1
        found += [(a + delta, b + delta) for a, b in spans[after:]]
    return spans[:keep] + found


def split_at(spans: list[tuple[int, int]], cursor: int | None) -> list[tuple[int, int]]:
    """`spans` with the one holding `cursor` split there."""
    if cursor is None:
        return spans
    i = bisect.bisect_right(spans, (cursor, sys.maxsize)) - 1
    if 0 <= i < len(spans) and spans[i][0] < cursor < spans[i][1]:
        a, b = spans[i]
        return [*spans[:i], (a, cursor), (cursor, b), *spans[i + 1 :]]
    return spans


def _common_prefix(a: str, b: str, block: int = 4096) -> int:
    """Length of the longest common prefix (compared a block at a time, then halved)."""
    n, i = min(len(a), len(b)), 0
    while i < n and a[i : i + block] == b[i : i + block]:
        i += block
    if i >= n:
        return n
    lo, hi = i, min(i + block, n)  # the mismatch is in [lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[lo : mid + 1] == b[lo : mid + 1]:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _common_suffix(a: str, b: str, block: int = 4096) -> int:
    """Length of the longest common suffix."""
    n, i = min(len(a), len(b)), 0
    la, lb = len(a), len(b)
    while (
        i < n
        and a[la - i - block if i + block <= la else 0 : la - i] == b[lb - i - block if i + block <= lb else 0 : lb - i]
    ):
        i += block
    if i >= n:
        return n
    lo, hi = i, min(i + block, n)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[la - mid - 1 : la - lo] == b[lb - mid - 1 : lb - lo]:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class _Source:
    chunks: list[tuple[str, int]] = field(default_factory=list)  # (text, slot in the index)
    tokens: int = 0
    text: str | None = None  # what was fed last (an unchanged text is not chunked again)
    spans: list[tuple[int, int]] = field(default_factory=list)  # its chunks, not split at the cursor
    cursor: int | None = None
    workspace: bool = False  # read from disk, not open in the editor


class WorkspaceCache:
    """Token n-gram statistics of the user's files, bounded by `budget` tokens (see the module).

    Thread-safe: updates (task threads) are serialized and tokenize outside the index's lock; the
    lookups of a generation (the model thread) hold it only while they read."""

    def __init__(
        self,
        encode: Encoder,
        budget: int = DEFAULT_BUDGET_TOKENS,
        max_order: int = DEFAULT_MAX_ORDER,
        owner: Any = None,
    ):
        self.encode, self.budget = encode, max(1, int(budget))
        self.max_weight, self.full_length = MAX_WEIGHT, FULL_LENGTH  # the mixing (`mix_weight`)
        self.owner = owner  # what the token ids belong to (a tokenizer): another one needs another cache
        self.index = TokenNgrams(max_order)
        self._sources: OrderedDict[str, _Source] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # the index and the sources
        self._updating = threading.Lock()  # one update at a time
        self.evicted = 0

    # -- feeding -------------------------------------------------------------------------------------

    def update(
        self, name: str, text: str, cursor: int | None = None, workspace: bool = False, keep_cursor: bool = False
    ) -> bool:
        """Feed a source's current text (`cursor`: split there, for the document being completed).
        Only chunks not already held are tokenized. A workspace file never replaces an open
        document's text, and enters as the least recently used. With `keep_cursor`, a source split
        at a cursor stays split there (a completion of it may be running). Returns whether anything
        changed."""
        if keep_cursor and cursor is None:
            with self._lock:
                src = self._sources.get(name)
                if src is not None and src.cursor is not None:
                    cursor = min(src.cursor, len(text))
        max_chars = self.budget * 3
        if len(text) > max_chars:  # keep what is around the cursor (or the start)
            lo = max(0, min(len(text) - max_chars, (cursor or 0) - max_chars // 2))
            text = text[lo : lo + max_chars]
            cursor = None if cursor is None else cursor - lo
        with self._updating:
            with self._lock:
                src = self._sources.get(name)
                if src is not None and workspace and not src.workspace:
                    return False  # the editor's copy wins over the disk's
                if src is not None and src.cursor == cursor and (src.text is text or src.text == text):
                    if not workspace:
                        self._sources.move_to_end(name)
                    return False
                held: dict[str, list[int]] = {}
                for chunk_text, slot in src.chunks if src is not None else ():
                    held.setdefault(chunk_text, []).append(slot)
                old_text, old_spans = (src.text or "", src.spans) if src is not None else ("", [])
            spans = rechunk(old_text, old_spans, text)
            pieces = [text[a:b] for a, b in split_at(spans, cursor)]
            counts: dict[str, int] = {}
            fresh: dict[str, None] = {}  # pieces to tokenize, in order, once each
            for piece in pieces:
                counts[piece] = counts.get(piece, 0) + 1
                if counts[piece] > len(held.get(piece, ())):
                    fresh[piece] = None
            ids = dict(zip(fresh, self.encode(list(fresh)), strict=True)) if fresh else {}
            with self._lock:
                kept = self._within_budget(pieces, held, ids, text, cursor)
            chunks: list[tuple[str, int]] = []
            tokens = 0
            for piece in (p for p, keep in zip(pieces, kept, strict=True) if keep):
                with self._lock:  # a chunk at a time: a generation's lookups wait for one chunk at most
                    reuse = held.get(piece)
                    if reuse:
                        slot = reuse.pop()
                        toks = self.index.chunk(slot)
                        tokens += len(toks) if toks is not None else 0
                    else:
                        slot = self.index.add(ids[piece])
                        tokens += len(ids[piece])
                chunks.append((piece, slot))
            with self._lock:
                for slots in held.values():
                    for slot in slots:
                        self.index.remove(slot)
                self._sources[name] = _Source(chunks, tokens, text, spans, cursor, workspace)
                if workspace and src is None:
                    self._sources.move_to_end(name, last=False)
                elif not workspace:
                    self._sources.move_to_end(name)
                self._evict(keep=name)
        return True

    def _within_budget(
        self, pieces: list[str], held: dict[str, list[int]], ids: dict[str, list[int]], text: str, cursor: int | None
    ) -> list[bool]:
        """Which of a source's pieces to keep: all of them, or for a source over the whole budget
        those nearest the cursor (the start without one) that fit."""
        sizes = []
        for piece in pieces:
            if piece in ids:
                sizes.append(len(ids[piece]))
            else:
                toks = self.index.chunk(held[piece][0])
                sizes.append(len(toks) if toks is not None else 0)
        if sum(sizes) <= self.budget:
            return [True] * len(pieces)
        focus, at = 0, 0
        for i, piece in enumerate(pieces):
            if cursor is not None and at <= cursor:
                focus = i
            at += len(piece)
        keep, room = [False] * len(pieces), self.budget
        for i in sorted(range(len(pieces)), key=lambda i: abs(i - focus)):
            if sizes[i] <= room:
                keep[i], room = True, room - sizes[i]
        return keep

    def forget(self, name: str) -> None:
        with self._updating, self._lock:
            src = self._sources.pop(name, None)
            for _, slot in src.chunks if src is not None else ():
                self.index.remove(slot)

    def _evict(self, keep: str) -> None:
        """Drop least recently used sources (workspace files first) until the budget holds."""
        while self.index.tokens > self.budget:
            victim = next((n for n, s in self._sources.items() if s.workspace and n != keep), None)
            if victim is None:
                victim = next((n for n in self._sources if n != keep), None)
            if victim is None:
                return
            for _, slot in self._sources.pop(victim).chunks:
                self.index.remove(slot)
            self.evicted += 1

    # -- reading -------------------------------------------------------------------------------------

    def holds(self, name: str) -> bool:
        with self._lock:
            return name in self._sources

    def names(self) -> list[str]:
        """The sources held, least recently used first."""
        with self._lock:
            return list(self._sources)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "sources": len(self._sources),
                "workspaceFiles": sum(s.workspace for s in self._sources.values()),
                "chunks": len(self.index),
                "tokens": self.index.tokens,
                "evicted": self.evicted,
            }

    def lookup(self, context: Sequence[int]) -> Matches:
        with self._lock:
            return self.index.lookup(context)

    def advance(self, matches: Matches, token: int) -> Matches:
        with self._lock:
            return self.index.advance(matches, token)

    def predict(self, matches: Matches) -> Prediction | None:
        with self._lock:
            return self.index.predict(matches)


def mix_weight(pred: Prediction, max_weight: float, full: int) -> float:
    """How much of the cache's distribution goes into the mixture: `max_weight`, times Witten-Bell's
    confidence n / (n + distinct) (one occurrence: 1/2; ten that agree: 10/11), times the match's
    length against `full` tokens (a 2-token match says little, a whole statement a lot)."""
    agree = pred.total / (pred.total + pred.distinct)
    reach = min(1.0, (pred.length - 1) / max(1, full - 1))
    return max_weight * agree * reach


class WorkspacePrior:
    """One generation's hook (`GenerationRequest.mix`): the cache's prior for the next token, from
    the context before the cursor and the tokens written so far. Called once per token on the model
    thread; each call advances the previous one's matches by the one new token."""

    def __init__(self, cache: WorkspaceCache, context: list[int]):
        from demi.model.generate import Prior  # the engine's type; torch is loaded with the engine

        self.cache, self.context = cache, context
        self._prior = Prior
        self._matches: Matches | None = None
        self._seen = -1
        self.steps = self.mixed = 0  # tokens asked about, and those given a prior

    def __call__(self, tokens: Sequence[int]) -> Sequence[Any]:
        n = len(tokens)
        if self._matches is not None and n == self._seen + 1 and n > 0:
            self._matches = self.cache.advance(self._matches, tokens[-1])
        else:
            self._matches = self.cache.lookup([*self.context, *tokens])
        self._seen = n
        self.steps += 1
        pred = self.cache.predict(self._matches)
        if pred is None:
            return ()
        weight = mix_weight(pred, self.cache.max_weight, self.cache.full_length)
        if weight <= 0.0:
            return ()
        ids, probs = pred.probs()
        self.mixed += 1
        return (self._prior(ids, probs, weight),)


# -- the engine's side ---------------------------------------------------------------------------------


def tokenizer_of(engine: Any) -> Any | None:
    """The in-process model's tokenizer (None for a model server: its decoding cannot be mixed with)."""
    local = getattr(engine, "local", None)
    return getattr(local, "tokenizer", None)


def encoder_for(tokenizer: Any) -> Encoder:
    """Texts to token ids with `tokenizer`, in one batch, no special tokens added."""
    backend = tokenizer.backend

    def encode(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    return encode


def context_ids(tokenizer: Any, prefix: str) -> tuple[list[int], int]:
    """The lookup's context: the end of `prefix` less the text token healing cuts off (the
    generated tokens spell that text first, as the engine builds the prompt), from a line start;
    and how many characters healing cuts."""
    from demi.model.healing import split_heal

    text, heal = split_heal(prefix, tokenizer)
    tail = text[-CONTEXT_CHARS:]
    if len(tail) < len(text):
        cut = tail.find("\n")
        tail = tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail
    return (list(tokenizer.encode(tail, add_special_tokens=False)) if tail else []), len(heal)


def request_hook(
    engine: Any, cache: WorkspaceCache | None, name: str, text: str, offset: int, prefix: str
) -> WorkspacePrior | None:
    """Feed the document being completed (`text`, the cursor at `offset`, `prefix` the FIM prompt's
    text before it) to `cache` and return the request's prior; None without a cache, with a cache
    of another tokenizer, or for a model server.

    The document is split where token healing cuts the prefix (the cursor less its trailing blanks
    or word piece): the prompt's end as one stored chunk would end in a token the model avoids
    there ("\n" plus all the indentation as one token), and the prior would copy it."""
    tokenizer = tokenizer_of(engine)
    if cache is None or tokenizer is None or cache.owner is not tokenizer:
        return None
    ids, healed = context_ids(tokenizer, prefix)
    cache.update(name, text, cursor=max(0, offset - healed))
    return WorkspacePrior(cache, ids)


def cache_for(
    engine: Any, current: WorkspaceCache | None, budget: int = DEFAULT_BUDGET_TOKENS
) -> WorkspaceCache | None:
    """`current` when it belongs to `engine`'s tokenizer, else a new empty cache for it (None for a
    model server)."""
    tokenizer = tokenizer_of(engine)
    if tokenizer is None:
        return None
    if current is not None and current.owner is tokenizer:
        return current
    return WorkspaceCache(encoder_for(tokenizer), budget, owner=tokenizer)


# -- workspace files -----------------------------------------------------------------------------------


def workspace_files(
    root: Path, near: Path | None, suffixes: Sequence[str], limit: int = WORKSPACE_MAX_FILES
) -> list[Path]:
    """Files under `root` ending in one of `suffixes`, nearest to `near` (a folder) first, newest first
    among equals; hidden folders, dependencies and build output are skipped."""
    if not suffixes:
        return []
    found: list[tuple[int, float, Path]] = []
    here = near.resolve().parts if near is not None else ()
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for name in files:
            if not name.endswith(tuple(suffixes)):
                continue
            path = Path(folder) / name
            parts = path.parent.resolve().parts
            common = next((i for i, (a, b) in enumerate(zip(parts, here)) if a != b), min(len(parts), len(here)))
            distance = len(parts) - common + len(here) - common
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            found.append((distance, -mtime, path))
            seen += 1
        if seen > limit * 20:  # a huge tree: enough to choose from
            break
    return [p for _, _, p in sorted(found)[:limit]]


def feed_workspace(
    cache: WorkspaceCache,
    root: Path,
    near: Path | None,
    suffixes: Sequence[str],
    name_of: Callable[[Path], str],
    pause: float = 0.0,
    max_files: int = WORKSPACE_MAX_FILES,
    max_tokens: int | None = None,
    exclude: Path | None = None,
) -> int:
    """Read workspace files into `cache` as workspace sources, up to `max_tokens` (WORKSPACE_SHARE
    of its budget) and `max_files` files, `exclude` left out; the files added. Files already held
    (open in the editor) are left as they are. `pause` seconds between files leave the CPU to
    completions meanwhile."""
    from demi.assistant.files import FileInputError, read_text_file

    added = 0
    room = int(cache.budget * WORKSPACE_SHARE) if max_tokens is None else max_tokens
    skip = exclude.resolve() if exclude is not None else None
    for path in workspace_files(root, near, suffixes, max_files + (skip is not None)):
        if room <= 0:
            break
        if skip is not None and path.resolve() == skip:
            continue
        try:
            text = read_text_file(path, max_bytes=512 * 1024)
        except (FileInputError, OSError):
            continue
        before = cache.index.tokens
        if cache.update(name_of(path), text, workspace=True):
            added += 1
            room -= max(0, cache.index.tokens - before)
        if pause:
            time.sleep(pause)
    return added


def folder_cache(
    engine: Any,
    path: Path | None,
    others: Sequence[tuple[str, str]] = (),
    max_files: int = FOLDER_MAX_FILES,
    max_tokens: int = FOLDER_MAX_TOKENS,
) -> WorkspaceCache | None:
    """A cache for one `demi complete`: the `others` (name, text) given as context, then up to
    `max_files` files (`max_tokens` tokens) of the same language from `path`'s folder and below,
    nearest first (None for a model server). The document itself is fed by `complete`."""
    cache = cache_for(engine, None)
    if cache is None:
        return None
    for name, text in others:
        cache.update(name, text)
    if path is not None and path.suffix:
        from demi.assistant.languages import language_for

        spec = language_for(path)
        suffixes = spec.extensions if spec is not None else (path.suffix,)
        folder = path.resolve().parent
        feed_workspace(cache, folder, folder, suffixes, str, max_files=max_files, max_tokens=max_tokens, exclude=path)
    return cache
