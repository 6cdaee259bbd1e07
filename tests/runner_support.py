"""Helpers the model runner's and the engine's tests share (tests/assistant/test_runner*.py,
tests/model/test_generation.py): draining a stream,
waiting for a condition, and a sink that records what `demi serve` would be sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any


def drain(it: Iterator[str]) -> tuple[list[str], Any]:
    """The pieces of a generator and its return value."""
    out = []
    while True:
        try:
            out.append(next(it))
        except StopIteration as stop:
            return out, stop.value


def wait_for(cond: Any, timeout: float = 10.0) -> Any:
    """`cond()`'s first truthy value, polled every 5 ms; AssertionError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := cond():
            return value
        time.sleep(0.005)
    raise AssertionError("timed out")


class Events:
    """A sink that records (kind, value) events, as `demi serve` forwards them."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.finished = threading.Event()

    def __call__(self, kind: str, value: Any) -> None:
        self.items.append((kind, value))
        if kind != "piece":
            self.finished.set()

    @property
    def pieces(self) -> list[str]:
        return [v for k, v in self.items if k == "piece"]
