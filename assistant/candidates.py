"""How the tasks that try several model replies (refactor, fix, the docstring summary, a type
hint) sample them: the first as asked (greedy by default), the others with temperature, each
with its own seed, so a run is reproducible and every try is a different draw."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only with the engine
    from demi.model.generate import Sampling

CANDIDATE_TEMPERATURE = 0.8
CANDIDATE_TOP_P = 0.95


def candidate_sampling(sampling: Sampling | None, i: int) -> Sampling | None:
    """The sampling of the `i`-th reply (0: `sampling` itself)."""
    if i == 0:
        return sampling
    from demi.assistant.engines import Sampling

    temperature = max(CANDIDATE_TEMPERATURE, sampling.temperature if sampling else 0.0)
    return Sampling(temperature=temperature, top_p=CANDIDATE_TOP_P, seed=i)
