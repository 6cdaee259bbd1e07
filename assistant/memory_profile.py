"""`demi models memory`: a model's memory, estimated and measured in a fresh process, per component.

A preset is measured on the cached random-weight copy `demi bench` uses (its real shape); the
estimate and the measurement are `demi.model.memory`'s."""

from __future__ import annotations

from typing import Any

from demi.assistant.benchmark import model_dir_for_bench
from demi.model.memory import profile

DEFAULT_CONTEXT = 1024


def memory_profile(name: str | None, quant: str = "none", context: int | None = None) -> dict[str, Any]:
    """The estimate for `name` at `quant` and `context` beside what a fresh process measures."""
    return profile(model_dir_for_bench(name), quant or "none", context or DEFAULT_CONTEXT)
