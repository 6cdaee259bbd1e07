"""Token n-gram statistics over chunks of token ids, for the workspace cache model.

`TokenNgrams` holds chunks of token ids (pieces of the user's files, in the model's vocabulary) and
an index from each bigram to the positions that follow it. A lookup finds the occurrences of the
longest suffix of a context (up to `max_order` tokens: the longest-match "∞-gram" of infini-gram,
capped) and what token followed each; `Matches.advance` carries the occurrences along as the model
writes one more token, so a generation pays one index scan at its start and then only for the
occurrences still matching (an occurrence that matches L+1 tokens after a step matched L before it).

Chunks come and go as files change (`add` / `remove`): a removed chunk's slot is dead, its postings
are dropped lazily (from a list when a scan finds it mostly dead, everywhere when dead postings
outnumber live ones). Memory: 12 bytes a token in arrays (4 for the token, 8 for its posting), plus
the bigram dictionary; with the chunks' text, about 70 bytes a token on the standard library.
Not thread-safe on its own: `WorkspaceCache` holds the lock.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

_POS_BITS = 32
_POS_MASK = (1 << _POS_BITS) - 1
_KEY_MULT = 1 << 24  # token ids below this (every vocabulary Demi loads)
DEFAULT_MAX_ORDER = 24  # match lengths are counted up to this many tokens
DEFAULT_SCAN_LIMIT = 384  # postings looked at per fresh lookup, newest first


def _key(a: int, b: int) -> int:
    return a * _KEY_MULT + b


@dataclass
class Matches:
    """The occurrences of a context's longest matching suffix (2 tokens at least): for each, the
    chunk slot, the position of the token that followed, and how many tokens matched (capped)."""

    context: list[int]
    slots: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def __len__(self) -> int:
        return len(self.slots)


@dataclass(frozen=True)
class Prediction:
    """What followed the longest match: counts per next token, the match length, and how many
    occurrences there were (the confidence of a cache model, Witten-Bell style: many occurrences
    that agree on few tokens)."""

    counts: dict[int, int]
    length: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def distinct(self) -> int:
        return len(self.counts)

    def probs(self) -> tuple[list[int], list[float]]:
        """(ids, probabilities) of the next token, most frequent first."""
        total = self.total
        ranked = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return [t for t, _ in ranked], [c / total for _, c in ranked]


class TokenNgrams:
    """Chunks of token ids and their bigram index (see the module's docstring)."""

    def __init__(self, max_order: int = DEFAULT_MAX_ORDER, scan_limit: int = DEFAULT_SCAN_LIMIT):
        if max_order < 2:
            raise ValueError("max_order must be at least 2")
        self.max_order, self.scan_limit = max_order, scan_limit
        self._chunks: dict[int, array] = {}  # slot -> token ids (live chunks only)
        self._postings: dict[int, array] = {}  # bigram key -> (slot << 32 | position after it)
        self._next_slot = 0
        self.tokens = 0  # tokens in live chunks
        self.live_postings = 0
        self.dead_postings = 0

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, ids: Sequence[int]) -> int:
        """Index a chunk of token ids; its slot (for `remove`)."""
        slot = self._next_slot
        self._next_slot += 1
        toks = array("i", ids)
        self._chunks[slot] = toks
        self.tokens += len(toks)
        self._index(slot, toks)
        return slot

    def _index(self, slot: int, toks: array) -> None:
        base, postings = slot << _POS_BITS, self._postings
        for pos in range(2, len(toks)):
            key = toks[pos - 2] * _KEY_MULT + toks[pos - 1]
            bucket = postings.get(key)
            if bucket is None:
                postings[key] = array("q", (base | pos,))
            else:
                bucket.append(base | pos)
        self.live_postings += max(0, len(toks) - 2)

    def remove(self, slot: int) -> None:
        """Forget a chunk (its postings are dropped lazily)."""
        toks = self._chunks.pop(slot, None)
        if toks is None:
            return
        self.tokens -= len(toks)
        gone = max(0, len(toks) - 2)
        self.live_postings -= gone
        self.dead_postings += gone
        if self.dead_postings > max(4096, self.live_postings):
            self.compact()

    def compact(self) -> None:
        """Drop every dead posting (rebuilds the index from the live chunks)."""
        self._postings = {}
        self.live_postings = self.dead_postings = 0
        for slot, toks in self._chunks.items():
            self._index(slot, toks)

    def chunk(self, slot: int) -> array | None:
        return self._chunks.get(slot)

    # -- lookups -------------------------------------------------------------------------------------

    def lookup(self, context: Sequence[int]) -> Matches:
        """The occurrences of the longest suffix of `context` (of at least 2 tokens) that the chunks
        hold with a token after it; at most `scan_limit` postings of the last bigram are looked at,
        newest first."""
        ctx = list(context[-self.max_order :])
        found = Matches(ctx)
        if len(ctx) < 2:
            return found
        key = _key(ctx[-2], ctx[-1])
        bucket = self._postings.get(key)
        if not bucket:
            return found
        chunks, limit, n = self._chunks, self.max_order, len(ctx)
        dead = 0
        start = max(0, len(bucket) - self.scan_limit)
        for i in range(len(bucket) - 1, start - 1, -1):
            entry = bucket[i]
            slot, pos = entry >> _POS_BITS, entry & _POS_MASK
            toks = chunks.get(slot)
            if toks is None:
                dead += 1
                continue
            length = 2
            while (
                length < limit and length < n and pos - length - 1 >= 0 and toks[pos - length - 1] == ctx[-length - 1]
            ):
                length += 1
            found.slots.append(slot)
            found.positions.append(pos)
            found.lengths.append(length)
        if dead * 4 > len(bucket) - start:  # mostly dead: drop them from this list now
            live = array("q", (e for e in bucket if (e >> _POS_BITS) in chunks))
            self.dead_postings -= len(bucket) - len(live)
            if live:
                self._postings[key] = live
            else:
                del self._postings[key]
        return _longest_only(found)

    def advance(self, matches: Matches, token: int) -> Matches:
        """`matches` after the context grew by `token`: the occurrences that continue with it, one
        token longer; a fresh `lookup` when none does (the longest match is then 2 tokens)."""
        ctx = [*matches.context, token][-self.max_order :]
        nxt = Matches(ctx)
        chunks, limit = self._chunks, self.max_order
        for slot, pos, length in zip(matches.slots, matches.positions, matches.lengths, strict=True):
            toks = chunks.get(slot)
            if toks is None or toks[pos] != token or pos + 1 >= len(toks):
                continue
            nxt.slots.append(slot)
            nxt.positions.append(pos + 1)
            nxt.lengths.append(min(limit, length + 1))
        return nxt if nxt.slots else self.lookup(ctx)

    def predict(self, matches: Matches) -> Prediction | None:
        """The next-token counts of the longest match among `matches`, or None without one."""
        if not matches.slots:
            return None
        longest = matches.longest
        counts: dict[int, int] = {}
        chunks = self._chunks
        for slot, pos, length in zip(matches.slots, matches.positions, matches.lengths, strict=True):
            toks = chunks.get(slot)
            if length != longest or toks is None:
                continue
            counts[toks[pos]] = counts.get(toks[pos], 0) + 1
        return Prediction(counts, longest) if counts else None


def _longest_only(found: Matches) -> Matches:
    """Keep the occurrences of the longest match only: a shorter one never outgrows a longest one
    that continues, and when none continues `advance` looks the context up afresh."""
    if not found.slots:
        return found
    top = found.longest
    keep = [i for i, n in enumerate(found.lengths) if n == top]
    if len(keep) == len(found.slots):
        return found
    return Matches(
        found.context,
        [found.slots[i] for i in keep],
        [found.positions[i] for i in keep],
        [found.lengths[i] for i in keep],
    )
