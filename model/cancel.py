"""The cancellation token every engine reads; standard library only, so a screen thread or a
server's request handler can hold one without importing torch."""

from __future__ import annotations

import threading


class CancelToken:
    """Set from any thread; the decode loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
