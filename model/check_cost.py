"""What a speculative check costs against a decode step, measured as the model runs.

Prompt lookup proposes drafts; checking them costs a pass of 1 + d rows instead of a decode step of
one. How much more depends on the model and the machine: on demi-tiny a lone step is bound by
reading its weights and an extra row by arithmetic (a third of a step on Zen 4's int8 dot products,
half on its AVX2 path; on a 0.5B model about a quarter, benchmarks/RESULTS-speculation.md), and a
check pays a fixed price on top (it runs the verification path: each row's own attention mask and
head). Rather than a table of guesses, the decode loop times its own passes (`lone`, `check`; in
batch mode the driver times a run's plain steps that run alone, `LocalModel.decode_batch`), and
`price` is a straight-line fit of a check's seconds over the lone step's against its drafts: a fixed
part and a part per draft, both in decode steps, which the lookup weighs drafts with
(`lookup.PromptLookup.price`). One estimate per model in memory, so it carries over from one
request to the next.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

__all__ = ["CheckCost", "Price", "check_cost"]

SMOOTHING = 0.2  # weight of the newest lone step in its running mean
FORGET = 0.9  # each check's weight in the fit decays by this per newer check (about the last ten count)
# Bounds of the per-draft price: a timing disturbed by another process must not stop drafting for
# good (an estimate is only updated by the checks it lets through, and above MAX_ROW even a
# three-token match's prior acceptance is not worth a row).
MIN_ROW, MAX_ROW = 0.02, 0.6
MAX_FIXED = 1.0


@dataclass(frozen=True)
class Price:
    """A check of d drafts costs `fixed + d * row` decode steps more than a lone step."""

    fixed: float
    row: float


PRIOR = Price(fixed=0.1, row=1 / 3)  # before anything is measured: demi-tiny's on this project's Zen 4


class CheckCost:
    """A running mean of a lone decode step's seconds, and a decaying least-squares line of a check's
    extra seconds (over a lone step's) against its number of drafts."""

    def __init__(self) -> None:
        self.step: float | None = None
        self._sums = [0.0] * 5  # weights, x, y, x*x, x*y of (drafts, extra seconds)
        self.pinned: Price | None = None  # a fixed price instead of the measured one (see `pin`)

    def pin(self, price: Price | None) -> None:
        """Use `price` whatever the timings say (None: the measured price again): for tests that
        must exercise drafting on a model where checks do not pay, and for comparisons."""
        self.pinned = price

    def lone(self, seconds: float) -> None:
        self.step = seconds if self.step is None else self.step + SMOOTHING * (seconds - self.step)

    def check(self, rows: int, seconds: float) -> None:
        """A pass of `rows` rows (the fed token and rows - 1 drafts) took `seconds`."""
        if rows < 2 or self.step is None:
            return
        x, y = float(rows - 1), seconds - self.step
        self._sums = [FORGET * s + v for s, v in zip(self._sums, (1.0, x, y, x * x, x * y), strict=True)]

    @property
    def price(self) -> Price:
        """The check's price in decode steps (PRIOR until a lone step and a check are measured)."""
        if self.pinned is not None:
            return self.pinned
        w, sx, sy, sxx, sxy = self._sums
        if not self.step or w == 0.0:
            return PRIOR
        spread = w * sxx - sx * sx
        if spread > 1e-9 * w * w:  # checks of different sizes: a line through them
            row = (w * sxy - sx * sy) / spread
            fixed = (sy - row * sx) / w
        else:  # one size so far: all of it per draft
            row, fixed = sy / sx, 0.0
        step = self.step
        return Price(fixed=min(MAX_FIXED, max(0.0, fixed / step)), row=min(MAX_ROW, max(MIN_ROW, row / step)))


_COSTS: weakref.WeakKeyDictionary[torch.nn.Module, CheckCost] = weakref.WeakKeyDictionary()


def check_cost(model: torch.nn.Module) -> CheckCost:
    """The model's estimate (made on first use)."""
    cost = _COSTS.get(model)
    if cost is None:
        cost = _COSTS[model] = CheckCost()
    return cost
