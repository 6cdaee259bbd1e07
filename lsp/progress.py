"""`$/progress` for work over half a second, cancellable from the editor's progress UI.

Nothing is shown for work that ends quickly: the progress begins only once `delay` has passed.
It uses the request's own `workDoneToken` when the client sent one, else creates a token
(`window/workDoneProgress/create`) when the client supports that. Cancelling it in the editor
(`window/workDoneProgress/cancel`) sets the work's `CancelToken`. `report` may be called from
any thread and is throttled.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from lsprotocol import types as t

log = logging.getLogger("demi.lsp")

DELAY_S = 0.5
REPORT_EVERY_S = 0.1


def client_supports_progress(ls: Any) -> bool:
    caps = getattr(ls.protocol, "client_capabilities", None)
    window = getattr(caps, "window", None) if caps is not None else None
    return bool(window is not None and window.work_done_progress)


class Progress:
    def __init__(
        self,
        ls: Any,
        title: str,
        cancel: Any = None,
        client_token: Any = None,
        delay: float = DELAY_S,
        cancellable: bool = True,
    ):
        self.ls, self.title, self.cancel = ls, title, cancel
        self.client_token, self.delay, self.cancellable = client_token, delay, cancellable
        self.token: Any = None
        self.begun = False
        self.ended = False
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_report = 0.0
        self._message = ""

    async def __aenter__(self) -> Progress:
        self._loop = asyncio.get_running_loop()
        if self.client_token is not None or client_supports_progress(self.ls):
            self._task = asyncio.ensure_future(self._begin_later())
        return self

    async def _begin_later(self) -> None:
        await asyncio.sleep(self.delay)
        token = self.client_token
        if token is None:
            token = f"demi-{uuid.uuid4().hex[:12]}"
            try:
                await self.ls.work_done_progress.create_async(token)
            except Exception:  # noqa: BLE001 - the client refused: work on without a progress bar
                log.debug("work done progress refused", exc_info=True)
                return
        if self.ended:
            return
        self.token = token
        self.ls.work_done_progress.begin(
            token,
            t.WorkDoneProgressBegin(
                title=self.title,
                cancellable=self.cancellable and self.cancel is not None,
                message=self._message or None,
            ),
        )
        self.begun = True
        fut = self.ls.work_done_progress.tokens.get(token)
        if fut is not None and self.cancel is not None:
            cancel = self.cancel
            fut.add_done_callback(lambda f: cancel.cancel() if f.cancelled() else None)

    def report(self, message: str, percentage: int | None = None, force: bool = False) -> None:
        """Thread-safe; only the latest message within REPORT_EVERY_S is sent."""
        self._message = message
        now = time.monotonic()
        if not force and now - self._last_report < REPORT_EVERY_S:
            return
        self._last_report = now
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._report, message, percentage)

    def _report(self, message: str, percentage: int | None) -> None:
        if self.begun and not self.ended:
            self.ls.work_done_progress.report(
                self.token,
                t.WorkDoneProgressReport(
                    message=message, percentage=percentage, cancellable=self.cancellable and self.cancel is not None
                ),
            )

    async def __aexit__(self, *exc: Any) -> None:
        self.ended = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.begun:
            cancelled = self.cancel is not None and self.cancel.cancelled
            self.ls.work_done_progress.end(
                self.token, t.WorkDoneProgressEnd(message="cancelled" if cancelled else "done")
            )
            self.ls.work_done_progress.tokens.pop(self.token, None)
