"""`ModelLoader`: the app's engine, loaded (or switched with /model) off the screen's thread.

Why its own part: loading takes seconds to minutes and may fail; the screen must stay live,
an answer asked for meanwhile must wait for it (`wait_for_engine`), and a failed switch must
keep the previous engine. The TUI only holds the engine `demi.assistant` builds; it never
touches the model itself.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from demi.assistant.chat import EngineDetails, engine_details
from demi.tui.jobs import Job
from demi.tui.labels import model_label, one_line
from demi.tui.part import AppPart

if TYPE_CHECKING:
    from demi.tui.app import DemiChat

EngineFactory = Callable[[str | None, str | None], Any]


def settle_heap() -> None:
    """Collect once, then freeze what is alive (the model, the widgets) out of the collector's way:
    a full collection over a loaded model takes 100 ms and more, which would freeze the screen in
    the middle of an answer. Unfrozen first, so a replaced model's cycles can still be freed."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelLoader(AppPart):
    """The engine, what it is (`details`) and why there is none (`engine_error`)."""

    def __init__(self, app: DemiChat, engine: Any = None, engine_factory: EngineFactory | None = None) -> None:
        super().__init__(app)
        self.engine = engine
        self.engine_factory: EngineFactory = engine_factory or self.default_factory
        self.current_model: str | None = app.flags.get("model") or app.config["model"]
        self.current_quant: str | None = app.flags.get("quant") or app.config["quant"]
        self.details: EngineDetails | None = None
        self.engine_error: str | None = None
        self.ready = threading.Event()  # set once a load ended, loaded or not
        self.loading = False

    def default_factory(self, model: str | None, quant: str | None) -> Any:
        """An engine from the config with the model and quantization overridden (`/model`)."""
        from demi.assistant.config import load_config
        from demi.assistant.engines import engine_from_config

        flags = dict(self.app.flags)
        flags.update({"model": model, "quant": quant})
        return engine_from_config(load_config(flags))

    def load(self, model: str | None, quant: str | None, announce: bool = True) -> None:
        """Start loading in a thread worker (group "load"); the screen hears back when it is done."""
        self.thread_worker("load", self._load_in_thread, model, quant, announce)

    def _load_in_thread(self, model: str | None, quant: str | None, announce: bool = True) -> None:
        """Load (or, for an injected engine, describe) the engine; the previous one stays on failure."""
        app = self.app
        started = time.monotonic()
        given = self.engine if self.details is None else None  # injected: describe it, load nothing
        try:
            engine = given if given is not None else self.engine_factory(model, quant)
            details = engine_details(engine)  # for a server: the first request, so a dead one shows here
        except Exception as exc:  # any failure to load is shown on screen
            if given is not None:
                self.engine = None
            if self.engine is None:
                self.engine_error = f"no model: {one_line(exc)}"
            self.ready.set()
            app.from_thread(self._failed, one_line(exc), model)
            return
        old, self.engine = self.engine, engine
        if given is None:
            self.current_model, self.current_quant = model, quant
        self.engine_error = None
        if old is not None and old is not engine:
            try:
                old.close()
            except Exception:  # closing the previous engine is best effort
                pass
        del old
        settle_heap()
        self.ready.set()
        app.from_thread(self._loaded, details, announce, time.monotonic() - started)

    def _loaded(self, details: EngineDetails, announce: bool = True, seconds: float = 0.0) -> None:
        app = self.app
        self.loading = False
        self.details = details
        app.conv.model = app.conv.model or details.model
        where = details.device or (details.url if details.kind == "http" else "")
        quant = (
            "server"
            if details.kind == "http"
            else (details.dtype if details.quant in (None, "none") and details.dtype else details.quant)
        )
        app.status.set(
            model=model_label(details.model),
            quant=quant or "",
            device=where or "",
            context=f"ctx {details.context}" if details.context else "",
            speed="",
            state="ready" if not app.busy else app.status.fields["state"],
        )
        if announce:
            app.call_later(
                app.say, f"now using {model_label(details.model)} ({quant}, {where}); loaded in {seconds:.1f}s"
            )

    async def _failed(self, error: str, model: str | None) -> None:
        app = self.app
        self.loading = False
        if self.engine is None:
            app.status.set(state="no model")
            await app.say(f"cannot load the model: {error}. Pick another with /model NAME (see /help).", "error")
        else:
            app.status.set(state="ready")
            await app.say(
                f"cannot switch to {model}: {error}. "
                f"Still using {self.details.model if self.details else 'the previous model'}.",
                "error",
            )

    def wait_for_engine(self, job: Job) -> Any:
        """In a worker: the engine once it is loaded; None when loading failed or the job was stopped."""
        while not self.ready.wait(0.05):
            if job.cancel.cancelled:
                return None
        return None if job.cancel.cancelled else self.engine

    def who(self, what: str = "") -> str:
        """The name an answer is signed with: the model, and what it is doing."""
        name = model_label(self.details.model) if self.details else (self.current_model or "demi")
        return name + (f" · {what}" if what else "")
