"""Which engine the language server uses, loading it without blocking the editor, and its state.

In order: the server the settings name (`server`, `DEMI_SERVER`, config); else a `demi serve`
already running on this machine's default port (so the terminal UI and the editor share one
model in memory) when it serves the configured model or none is configured; else the model
in-process, loaded on the model runner's thread (`demi.assistant.runner`), which every model the
server loads shares. Loading runs in the background: requests that arrive
meanwhile wait for it (or are cancelled), and `demi/status` says "loading" then "ready" or
"error". A settings change that touches the engine (model, server, quantization...) loads the
new one and drops the old.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from demi.assistant.runner import ModelRunner, RunCancelled
from demi.lsp.prompt_budget import prompt_budget
from demi.lsp.settings import LspSettings

log = logging.getLogger("demi.lsp")

DEMI_SERVE_URL = "http://127.0.0.1:8642"  # `demi serve`'s default address


class EngineUnavailable(Exception):
    """No engine: loading failed (the message says why) or the server is shutting down."""


def probe_demi_serve(
    url: str = DEMI_SERVE_URL, timeout: float = 0.3, api_key: str | None = None
) -> dict[str, Any] | None:
    """`demi serve`'s /v1/demi/stats when one answers at `url`, else None (never raises)."""
    from demi.assistant.errors import DemiError
    from demi.assistant.http_client import HttpClient

    try:
        with HttpClient(url, api_key, timeout=timeout, connect_timeout=timeout) as client:
            data = client.probe("/v1/demi/stats", timeout=timeout)
    except DemiError:
        return None
    return data if isinstance(data, dict) and "model" in data else None


def _same_model(wanted: str | None, served: str | None) -> bool:
    if not wanted:
        return True
    if not served:
        return False
    return wanted == served or Path(wanted).name == Path(served).name


class _Counted:
    """An engine that does not run on the model runner (HTTP, or a test's), with runs counted."""

    def __init__(self, engine: Any, host: EngineHost):
        self._engine, self._host = engine, host

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        cancel = kwargs.get("cancel")
        if cancel is not None and cancel.cancelled:
            self._host.count_run(skipped=True)
            raise RunCancelled("cancelled before it started")
        self._host.count_run()
        return getattr(self._engine, method)(*args, **kwargs)

    def infill(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("infill", *args, **kwargs)

    def chat(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("chat", *args, **kwargs)

    def complete(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("complete", *args, **kwargs)


# Seconds after a speed measurement that other processes disturbed (they took over BUSY_SHARE of
# the CPU meanwhile) to measure again (lsp/prompt_budget.py): the first runs right after loading,
# often beside the editor's own start-up, which measured demi-tiny's prefill at half its speed (two
# servers loading at once: 0.20 against 0.10 ms a token). The best figures so far are kept.
REMEASURE_AFTER_S = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
BUSY_SHARE = 0.25  # as the kernel plan's (model/kernel_plan.py)


class EngineHost:
    """Holds the current engine and its state; thread-safe."""

    def __init__(
        self,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        factory: Callable[[LspSettings], Any] | None = None,
        probe: bool = True,
    ):
        self.runner = ModelRunner(name="demi-model")
        self.on_status = on_status
        self.factory = factory
        self.probe = probe
        self.state = "starting"
        self.message = ""
        self.kind: str | None = None  # in-process | http
        self.url: str | None = None
        self.name: str | None = None
        self.load_seconds: float | None = None
        self.server_report: dict[str, Any] | None = None  # an HTTP engine's check(): kind, model, round trip
        self.speed: dict[str, float] | None = None  # an in-process model's measured speed (prompt_budget.py)
        self._counted_runs = 0
        self._counted_skips = 0
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._ready: Future = Future()
        self._generation = 0

    # -- counters -----------------------------------------------------------------------------------

    def count_run(self, skipped: bool = False) -> None:
        with self._lock:
            if skipped:
                self._counted_skips += 1
            else:
                self._counted_runs += 1

    @property
    def runs_started(self) -> int:
        return self.runner.runs_started + self._counted_runs

    @property
    def runs_skipped(self) -> int:
        return self.runner.runs_skipped + self._counted_skips

    @property
    def steps(self) -> int:
        """Model steps the runner took (generation steps of every in-process model)."""
        return self.runner.steps

    # -- loading ------------------------------------------------------------------------------------

    def configure(self, settings: LspSettings, force: bool = False) -> Future:
        """Start using the engine `settings` ask for (a no-op when it is the current one)."""
        key = settings.engine_key()
        with self._lock:
            if key == self._key and not force and not (self._ready.done() and self._ready.exception()):
                return self._ready
            self._key = key
            self.speed = None
            self._generation += 1
            generation = self._generation
            old = self._ready
            self._ready = Future()
            ready = self._ready
        if old.done() and not old.exception():
            try:
                old.result().close()
            except Exception:  # noqa: BLE001 - the old engine is going away anyway
                pass
        elif not old.done():
            old.set_exception(EngineUnavailable("the settings changed while the engine was loading"))
        self._set_state("loading", "")
        threading.Thread(target=self._load, args=(settings, ready, generation), name="demi-load", daemon=True).start()
        return ready

    def _load(self, s: LspSettings, ready: Future, generation: int) -> None:
        started = time.monotonic()
        try:
            engine = self._open(s)
        except BaseException as exc:  # noqa: BLE001 - reported through the state, never raised here
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if generation == self._generation:
                self._set_state("error", text)
            if not ready.done():
                ready.set_exception(EngineUnavailable(text))
            return
        if generation != self._generation:  # superseded while loading
            try:
                engine.close()
            except Exception:  # noqa: BLE001
                pass
            return
        self.load_seconds = time.monotonic() - started
        if not ready.done():
            ready.set_result(engine)
        self._set_state("ready", "")

    def _open(self, s: LspSettings) -> Any:
        from demi.assistant.engines import HttpEngine, InProcessEngine, open_engine

        if self.factory is not None:
            engine = self.factory(s)
            self.kind, self.url = "in-process" if not isinstance(engine, HttpEngine) else "http", None
            self.name = getattr(engine, "name", "engine")
            return _Counted(engine, self)
        url = s.server
        if not url and s.detect_server and (self.probe or isinstance(s.detect_server, str)):
            where = s.detect_server if isinstance(s.detect_server, str) else DEMI_SERVE_URL
            found = probe_demi_serve(where, api_key=s.api_key)
            if found is not None and _same_model(s.model, str(found.get("model"))):
                url = where
                log.info("using the demi serve running at %s (model %s)", url, found.get("model"))
        if url:
            engine = open_engine(
                s.model,
                server=url,
                api_key=s.api_key,
                server_fim=s.server_model_family or s.server_fim,
                server_kind=s.server_kind,
            )
            assert isinstance(engine, HttpEngine)
            self.kind, self.url = "http", engine.url
            report = engine.check()  # the kind, the model and a round trip: fails fast when unusable
            self.server_report = report
            if not report["ok"]:
                engine.close()
                raise EngineUnavailable(report.get("problem") or f"the server at {engine.url} is unusable")
            self.name = engine.name
            return _Counted(engine, self)
        self.kind, self.url, self.server_report = "in-process", None, None
        self.name = s.model or "(default model)"

        def load() -> InProcessEngine:
            if s.threads:  # the engine reads DEMI_THREADS when it loads (small models decode faster on fewer)
                os.environ["DEMI_THREADS"] = str(s.threads)
            engine = open_engine(
                s.model,
                device=s.device or "cpu",
                dtype=s.dtype or "auto",
                context=s.context,
                quant=s.quant,
                runner=self.runner,
                speculate=s.speculate,
                cache_reuse=s.cache_reuse,
            )
            assert isinstance(engine, InProcessEngine)
            return engine

        engine = self.runner.call(load).result()
        self.name = engine.name
        self.runner.call(engine.info).result()  # parameter count and FIM template, once, off the hot path
        # Measure the model's speed here (a few prefills and steps: the prompt budget follows it), then
        # build the kernels of the prompt sizes completions will have (a prompt fills most of the
        # budget unless the file is short), queued behind loading: the first completions then run as
        # fast as later ones. About 0.2 s for demi-tiny; no warm-up for models that do not pad.
        generation = self._generation
        engine.measure_speed(s.context_tokens).add_done_callback(lambda f: self._measured(engine, s, f, generation))
        return engine

    def _measured(self, engine: Any, s: LspSettings, done: Future, generation: int, again: int = 0) -> None:
        """Keep the measured speed (for the engine still current), the best figures of every
        measurement so far: one taken while the editor or another server was starting reads slow,
        so while other processes took much of the CPU the speed is measured again, later and later
        (REMEASURE_AFTER_S), until a quiet reading. The first also warms up the sizes around the budget."""
        if generation != self._generation:
            return
        busy = True
        if done.exception() is None:
            got = done.result()
            busy = got.get("others_share", -1.0) > BUSY_SHARE
            old = self.speed
            self.speed = got if old is None else {k: min(v, old.get(k, v)) for k, v in got.items()}
            log.info("measured speed %s: prompt budget %d tokens", self.speed, self.prompt_budget(s))
        else:
            log.debug("speed measurement failed: %s", done.exception())
        if busy and again < len(REMEASURE_AFTER_S):
            timer = threading.Timer(REMEASURE_AFTER_S[again], self._measure_again, (engine, s, generation, again + 1))
            timer.daemon = True
            timer.start()
        if again:
            return
        budget = max(1, self.prompt_budget(s))
        try:
            warm = engine.warm_up(range(budget * 7 // 10, budget * 21 // 20 + 1))
        except Exception as exc:  # noqa: BLE001 - a closed engine (settings changed meanwhile)
            log.debug("warm-up not queued: %s", exc)
            return
        warm.add_done_callback(
            lambda f: (
                log.info("warmed up prefill sizes %s", f.result())
                if not f.exception()
                else log.debug("warm-up failed: %s", f.exception())
            )
        )

    def _measure_again(self, engine: Any, s: LspSettings, generation: int, again: int) -> None:
        if generation != self._generation:
            return
        started = self.runs_started
        if started != getattr(self, "_runs_at_last_check", None):  # requests came in: not now
            self._runs_at_last_check = started
            timer = threading.Timer(1.0, self._measure_again, (engine, s, generation, again))
            timer.daemon = True
            timer.start()
            return
        try:
            future = engine.measure_speed(s.context_tokens, warm=False)
        except Exception as exc:  # noqa: BLE001 - the engine closed meanwhile
            log.debug("speed not measured again: %s", exc)
            return
        future.add_done_callback(lambda f: self._measured(engine, s, f, generation, again))

    def prompt_budget(self, s: LspSettings) -> int:
        """The FIM prompt tokens a completion gets now (lsp/prompt_budget.py): contextTokens, or fewer
        to meet targetLatencyMs with an in-process model once its speed is measured."""
        speed = self.speed if self.kind == "in-process" else None
        return prompt_budget(s.context_tokens, s.target_latency_ms, s.max_tokens, speed)

    def engine(self, timeout: float | None = None) -> Any:
        """The ready engine (blocks while it loads); EngineUnavailable when there is none."""
        with self._lock:
            ready = self._ready
        try:
            return ready.result(timeout)
        except (EngineUnavailable, TimeoutError, FutureTimeout):
            raise
        except Exception as exc:  # noqa: BLE001
            raise EngineUnavailable(str(exc) or type(exc).__name__) from None

    @property
    def ready_future(self) -> Future:
        with self._lock:
            return self._ready

    # -- state --------------------------------------------------------------------------------------

    def _set_state(self, state: str, message: str) -> None:
        self.state, self.message = state, message
        if self.on_status is not None:
            try:
                self.on_status(self.status())
            except Exception:  # noqa: BLE001 - a closed connection must not break loading
                log.debug("status callback failed", exc_info=True)

    def status(self) -> dict[str, Any]:
        report = self.server_report if self.kind == "http" else None
        return {
            "state": self.state,
            "model": self.name,
            "engine": self.kind,
            "server": self.url,
            "message": self.message or None,
            "loadSeconds": round(self.load_seconds, 3) if self.load_seconds is not None else None,
            # with a server: what kind it is, the model it serves, a round trip, and how FIM is sent
            "serverKind": report.get("kind") if report else None,
            "serverModel": report.get("model") if report else None,
            "roundTripMs": report.get("round_trip_ms") if report else None,
            "serverFim": report.get("fim") if report else None,
            # FIM prompt budget from the measured speed (None until measured; contextTokens then)
            "prefillMsPerToken": round(self.speed["prefill_ms_per_token"], 4) if self.speed else None,
        }

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            ready = self._ready
        if not ready.done():
            ready.set_exception(EngineUnavailable("the server is shutting down"))
        self.runner.stop(timeout=None)  # live runs close at their next step; `wait_stopped` waits

    def wait_stopped(self, timeout: float) -> bool:
        """After `close`: wait for the model thread's current work (a step, a speed measurement, a
        warm-up) to end; False when it is still running after `timeout` seconds."""
        return self.runner.join(timeout)
