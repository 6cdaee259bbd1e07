"""Prompt lookup: draft tokens for speculative decoding from text the request already holds.

Code assistants copy a lot: a refactor rewrites most of the code it was given, an explanation
quotes names and lines from it, a loop repeats a line. `PromptLookup` finds the most recent
earlier place where the last `n` tokens (prompt and output together, `n` from `max_ngram` down to
`min_ngram`) occurred before, and proposes the tokens that followed it there. The model then
checks all of them in one forward pass (`generate.speculative_step`); a wrong draft costs only
the extra rows of that pass.

An index from each n-gram to the position after its latest occurrence is kept up to date as
tokens arrive, so a proposal costs a few dictionary look-ups however long the prompt is.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["PromptLookup"]


class PromptLookup:
    """Drafts from earlier occurrences of the text's last n-gram.

    `extend` appends tokens (the prompt, then each accepted output token); `propose(k)` returns up
    to `k` draft tokens (possibly none)."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}  # n-gram -> the position right after its latest occurrence
        self._indexed = 0  # n-grams ending at positions up to here are in the index
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        self.tokens.extend(tokens)

    def _catch_up(self, upto: int) -> None:
        """Index the n-grams that end at positions _indexed+1 .. upto (exclusive of the text's end,
        so the last n-gram never matches itself)."""
        toks, index = self.tokens, self._index
        for end in range(self._indexed + 1, upto + 1):
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                index[tuple(toks[end - n : end])] = end
        self._indexed = max(self._indexed, upto)

    def match(self) -> tuple[int, int] | None:
        """(position after the most recent earlier occurrence of the longest matching suffix n-gram,
        n), or None."""
        length = len(self.tokens)
        self._catch_up(length - 1)
        for n in range(min(self.max_ngram, length - 1), self.min_ngram - 1, -1):
            at = self._index.get(tuple(self.tokens[length - n :]))
            if at is not None:
                return at, n
        return None

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the text's last n-gram.

        A match that ends close to the text's end is a repetition with period `len - at`: the draft
        continues it (a line repeated in a loop drafts the whole next line, not one token)."""
        if k <= 0:
            return []
        found = self.match()
        if found is None:
            return []
        at, _ = found
        toks, length = self.tokens, len(self.tokens)
        draft: list[int] = []
        for i in range(k):
            j = at + i
            draft.append(toks[j] if j < length else draft[j - length])
        return draft
