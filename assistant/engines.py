"""Engine clients: the one way the session layer and the front ends reach a model.

`InProcessEngine` runs the model in this process (the default: nothing to start). An HTTP
client for OpenAI-compatible servers implements the same methods (see DESIGN.md).
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

from demi.model.engine import Completion, LocalModel
from demi.model.generate import CancelToken, Sampling

__all__ = ["CancelToken", "Completion", "Engine", "InProcessEngine", "Sampling", "open_engine"]


class Engine(Protocol):
    name: str

    def stream(self, prompt: str | list[int], **kwargs) -> Iterator[str]: ...

    def complete(self, prompt: str | list[int], on_text: Callable[[str], None] | None = None,
                 **kwargs) -> Completion: ...


class InProcessEngine:
    """A `LocalModel` behind the engine interface."""

    def __init__(self, local: LocalModel):
        self.local = local
        self.name = local.name

    def stream(self, prompt: str | list[int], **kwargs) -> Iterator[str]:
        return self.local.stream(prompt, **kwargs)

    def complete(self, prompt: str | list[int], on_text: Callable[[str], None] | None = None,
                 **kwargs) -> Completion:
        return self.local.complete(prompt, on_text=on_text, **kwargs)

    def perplexity(self, texts: list[str]) -> dict[str, float]:
        return self.local.perplexity(texts)

    def tokenize(self, text: str) -> list[int]:
        return self.local.encode(text)


def open_engine(model: str | None = None, device: str | None = "cpu", dtype: str | None = "auto",
                context: int | None = None) -> InProcessEngine:
    """Load `model` (a name, a directory or a hub id; None means config, DEMI_MODEL, demi-tiny)."""
    return InProcessEngine(LocalModel.load(model, device=device, dtype=dtype, context=context))
