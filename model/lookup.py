"""Prompt lookup: draft tokens for speculative decoding from text the request already holds.

Code assistants copy a lot: a refactor rewrites most of the code it was given, an explanation
quotes names and lines from it, a loop repeats a line. `PromptLookup` finds the most recent
earlier place where the last `n` tokens (prompt and output together, `n` from `max_ngram` down to
`min_ngram`) occurred before, and proposes the tokens that followed it there. The model then
checks all of them in one forward pass (`generate._decode_speculative`); a wrong draft costs the
extra rows of that pass.

For each length n, an index from each n-gram to the position after its latest occurrence is kept
up to date as tokens arrive, so a proposal costs a few dictionary look-ups however long the prompt
is. A length's index is built on its first look-up in one pass of C-level iteration (a 700-token
prompt's three lengths in 0.16 ms, where a token-by-token loop took 0.46 ms: a decode step and a
half of a small model, paid before the answer's second token), and a length whose drafts are not
worth checking is never indexed.

How many of those tokens are worth checking (`price`): a check of d drafts costs a fixed share of a
decode step plus a share per draft (`check_cost.Price`, measured as the model runs), and a draft's
j-th token saves a step only if it and every draft before it is kept. With a per-token acceptance
p, that happens with probability p^j: drafts are proposed while p^j is above a draft's price, and
none when what they would save in all (p + p^2 + ...) does not pay for the check. p is estimated
per match length n (a one-token match is a weak guess, a three-token one rarely wrong), from a
prior and what this request's checks kept so far.
"""

from __future__ import annotations

from collections.abc import Iterable

from demi.model.check_cost import Price

__all__ = ["PromptLookup", "ACCEPTANCE_PRIOR"]

# Per-token acceptance of drafts by the length of the match they came from, before a request has
# checked any (a draft token counts as checked when all before it were kept). Measured with demi-tiny
# (`benchmarks/speculation.py` cases and explanations and rewrites of held-out functions, 4 drafts a
# check): of the drafts after a one-token match 6-15% were kept, after a two-token match 6-25%,
# after a three-token match 74-94%; on such a model only the last pay for a check. The priors count
# per checked token (a little above those shares, which include drafts after a rejection). Worth
# PRIOR_WEIGHT checked tokens against what the request then sees.
ACCEPTANCE_PRIOR = {1: 0.15, 2: 0.3, 3: 0.85}
PRIOR_WEIGHT = 4.0


class PromptLookup:
    """Drafts from earlier occurrences of the text's last n-gram.

    `extend` appends tokens (the prompt, then each accepted output token); `propose(k)` returns up
    to `k` draft tokens (possibly none). With a `price` (what a check costs, in decode steps),
    proposals are cut to the tokens worth checking, match lengths whose drafts are not worth a check
    are not looked up (nor indexed), and `settle` tells the lookup how many of the last proposal the
    model kept."""

    def __init__(self, tokens: Iterable[int] = (), max_ngram: int = 3, min_ngram: int = 1, price: Price | None = None):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.price = price
        self.tokens: list[int] = list(tokens)
        # per length n: n-gram -> the position right after its latest occurrence, built on first use;
        # n-grams ending at positions up to _indexed[n] are in it (never the text's last one)
        self._index: dict[int, dict[tuple[int, ...], int]] = {}
        self._indexed: dict[int, int] = {}
        prior = {n: ACCEPTANCE_PRIOR.get(n, ACCEPTANCE_PRIOR[3]) for n in range(min_ngram, max_ngram + 1)}
        self._kept = {n: p * PRIOR_WEIGHT for n, p in prior.items()}  # per match length: kept, checked
        self._checked = dict.fromkeys(prior, PRIOR_WEIGHT)
        self._last_n = 0  # the match length of the last proposal (0: none)

    def extend(self, tokens: Iterable[int]) -> None:
        self.tokens.extend(tokens)

    def _lookup(self, n: int) -> int | None:
        """The position after the latest earlier occurrence of the text's last n tokens, or None."""
        toks, length = self.tokens, len(self.tokens)
        if length <= n:
            return None
        index = self._index.get(n)
        if index is None:  # the whole text so far in one pass; later occurrences overwrite earlier ones
            index = self._index[n] = dict(zip(zip(*(toks[i:] for i in range(n))), range(n, length)))
        else:
            for end in range(self._indexed[n] + 1, length):
                index[tuple(toks[end - n : end])] = end
        self._indexed[n] = length - 1
        return index.get(tuple(toks[length - n :]))

    def match(self) -> tuple[int, int] | None:
        """(position after the most recent earlier occurrence of the longest matching suffix n-gram,
        n), or None."""
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            at = self._lookup(n)
            if at is not None:
                return at, n
        return None

    def acceptance(self, n: int) -> float:
        """The estimated chance that a draft token from a match of length n is kept."""
        return self._kept[n] / self._checked[n]

    def worth_checking(self, n: int, k: int) -> int:
        """How many of k drafts from a match of length n to check: the j-th while the chance that it
        and all before it are kept (p^j) is above a draft's price, and none when the tokens they
        are expected to save do not pay for the check; all k without a price."""
        if self.price is None:
            return k
        p, chance, saved, j = self.acceptance(n), 1.0, 0.0, 0
        while j < k and chance * p > self.price.row:
            chance *= p
            saved += chance
            j += 1
        return j if saved > self.price.fixed + j * self.price.row else 0

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the latest earlier occurrence of the text's last n-gram
        (the longest whose drafts are worth checking).

        A match that ends close to the text's end is a repetition with period `len - at`: the draft
        continues it (a line repeated in a loop drafts the whole next line, not one token)."""
        self._last_n = 0
        if k <= 0:
            return []
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            wanted = self.worth_checking(n, k)
            at = self._lookup(n) if wanted else None
            if at is not None:
                break
        else:
            return []
        toks, length = self.tokens, len(self.tokens)
        draft: list[int] = []
        for i in range(wanted):
            j = at + i
            draft.append(toks[j] if j < length else draft[j - length])
        self._last_n = n
        return draft

    def settle(self, drafted: int, kept: int) -> None:
        """The model kept `kept` of the last proposal's `drafted` tokens: each kept one and the first
        rejected one were checked on their own merit (the ones after a rejection never were)."""
        if self._last_n and drafted:
            self._kept[self._last_n] += kept
            self._checked[self._last_n] += min(drafted, kept + 1)
        self._last_n = 0
