"""Completions for the editor: debounce, the type-through cache, one job per document, cancellation.

A request is served, in order:

1. from the cache, when the user typed into a suggestion already shown (no model run);
2. for an automatic trigger, after the debounce wait (a newer request for the same document
   cancels this one meanwhile, so mid-word requests never reach the model);
3. by joining the job already computing this exact document state, or by a new job.

A job runs `demi.assistant.complete` on a task thread; its model steps run on the model
thread. Each document has at most one request in flight: a new one cancels the previous
(which is answered with RequestCancelled), and a job nobody waits for any more has its
`CancelToken` set, which stops decoding at the next step. Every answer is checked against the
document's version: a result for text that has changed since is not shown (it goes to the
cache, where typing through it still finds it).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demi.assistant.runner import RunCancelled, set_priority
from demi.lsp.cache import CompletionCache
from demi.lsp.debounce import Debouncer
from demi.lsp.engine_host import EngineHost
from demi.lsp.settings import LspSettings

log = logging.getLogger("demi.lsp")

PARSE_DELAY_S = 0.03  # parse a changed document once typing has paused this long (at least)
# A document longer than this is completed from a window around the cursor: a prompt uses a few
# thousand characters of it, and parsing all of a 10 MB file (tree-sitter, then its outline) takes
# seconds on every version. The window's edges fall on fixed blocks, so typing keeps it steady
# (the type-through cache compares the text before and after the cursor).
HUGE_CHARS = 1_000_000
WINDOW_BEFORE, WINDOW_AFTER, WINDOW_BLOCK = 200_000, 50_000, 65_536


@dataclass
class Snapshot:
    """One document state at one cursor: what a completion is computed for."""

    uri: str
    version: int | None
    text: str
    offset: int
    language_id: str | None
    name: str  # the path the prompt shows (workspace-relative where possible)

    @property
    def before(self) -> str:
        return self.text[: self.offset]

    @property
    def after(self) -> str:
        return self.text[self.offset :]


def windowed(snap: Snapshot) -> Snapshot:
    """`snap` itself, or for a huge document the lines around the cursor (WINDOW_BEFORE and
    WINDOW_AFTER characters, rounded out to blocks and then to whole lines)."""
    text = snap.text
    if len(text) <= HUGE_CHARS:
        return snap
    start = max(0, (snap.offset - WINDOW_BEFORE) // WINDOW_BLOCK * WINDOW_BLOCK)
    if start > 0:
        start = text.find("\n", start, snap.offset) + 1 or start  # a whole first line where there is one
    end = min(len(text), (snap.offset + WINDOW_AFTER) // WINDOW_BLOCK * WINDOW_BLOCK + WINDOW_BLOCK)
    if end < len(text):
        cut = text.rfind("\n", snap.offset, end)
        end = cut + 1 if cut >= 0 else end
    return Snapshot(snap.uri, snap.version, text[start:end], snap.offset - start, snap.language_id, snap.name)


@dataclass
class Outcome:
    text: str  # to insert at the cursor
    replace: int = 0  # characters after the cursor it replaces (on the cursor's line)
    source: str = "model"  # model | cache | stale | disabled
    seconds: float = 0.0
    result: Any = None  # the CompletionResult, for a model answer


@dataclass
class Stats:
    requests: int = 0
    invoked: int = 0
    automatic: int = 0
    cancelled: int = 0
    stale: int = 0
    cache_hits: int = 0
    jobs: int = 0
    joined: int = 0
    errors: int = 0
    last_prompt_tokens: int = 0
    last_completion_tokens: int = 0
    last_mode: str = ""
    last_delay_ms: float = 0.0  # the debounce wait of the last automatic request that ran
    last_job_ms: float = 0.0  # context, model and post-processing of the last job
    # the workspace cache model: tokens of the last answer it mixed into; the cache, whose contents
    # `as_dict` reports as `workspace_cache` (sources, workspaceFiles, chunks, tokens, evicted)
    last_cache_mixed: int = 0
    workspace: Any = None
    latencies: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("latencies", "workspace")}
        d["workspace_cache"] = self.workspace.stats() if self.workspace is not None else {}
        recent = sorted(self.latencies[-200:])
        d["p50Ms"] = round(recent[len(recent) // 2] * 1000, 1) if recent else None
        return d


class _Job:
    def __init__(self, key: tuple[str, str, str], token: Any):
        self.key, self.token = key, token
        self.future: asyncio.Future | None = None
        self.waiters = 0
        self.started = time.monotonic()


class CompletionService:
    def __init__(
        self,
        host: EngineHost,
        pool: ThreadPoolExecutor,
        settings: Callable[[], LspSettings],
        recent: Any = None,
        on_result: Callable[[float], None] | None = None,
    ):
        self.host, self.pool, self.settings, self.recent = host, pool, settings, recent
        self.cache = CompletionCache()
        self.debouncer = Debouncer()
        self.stats = Stats()
        self.on_result = on_result
        self._current: dict[str, asyncio.Task] = {}
        self._jobs: dict[str, _Job] = {}
        self._parsed: dict[str, tuple[int | None, Any, Any]] = {}  # uri -> (version, Document, Syntax)
        self._parse_timers: dict[str, asyncio.TimerHandle] = {}
        self._parsing: dict[str, tuple[Any, Any, Any, threading.Event]] = {}  # uri -> in flight
        self._parse_lock = threading.Lock()
        self.workspace_cache: Any = None  # the WorkspaceCache of the engine's tokenizer, once a job needs it
        self._workspace_lock = threading.Lock()
        self._scanned: set[str] = set()  # workspace roots whose files were read into it
        self._syncing = False  # the open documents are being fed to it

    # -- the request path -----------------------------------------------------------------------------

    async def complete(self, snap: Snapshot, invoked: bool, version_now: Callable[[], int | None]) -> Outcome:
        """The suggestion for `snap`; raises CancelledError when superseded or cancelled."""
        self.stats.requests += 1
        if invoked:
            self.stats.invoked += 1
        else:
            self.stats.automatic += 1
        started = time.monotonic()
        task = asyncio.current_task()
        previous = self._current.get(snap.uri)
        if task is not None:
            self._current[snap.uri] = task
        try:
            hit = self.cache.get(snap.uri, snap.before, snap.after)
            if hit is not None:
                if previous is not None and not previous.done():
                    previous.cancel()
                self.stats.cache_hits += 1
                return Outcome(hit.text, hit.replace, "cache", time.monotonic() - started)
            job = self._job_for(snap)  # joins a job for this very state, or starts one (after the wait)
            if previous is not None and not previous.done():
                previous.cancel()  # after joining, so a job shared with it is not dropped
            if job is None:
                if not invoked:
                    delay = self.debouncer.delay()
                    await asyncio.sleep(delay)
                    self.stats.last_delay_ms = round(delay * 1000, 1)
                    if version_now() != snap.version:  # edited meanwhile, and no newer request came
                        self.stats.stale += 1
                        return Outcome("", 0, "stale", time.monotonic() - started)
                job = self._start(snap)
            return await self._wait(job, snap, version_now, started)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        finally:
            if self._current.get(snap.uri) is task:
                del self._current[snap.uri]

    def _job_for(self, snap: Snapshot) -> _Job | None:
        job = self._jobs.get(snap.uri)
        if (
            job is not None
            and job.key == (snap.uri, snap.before, snap.after)
            and job.future is not None
            and not job.token.cancelled
        ):
            job.waiters += 1  # held for the caller until it awaits the job
            self.stats.joined += 1
            return job
        return None

    def _start(self, snap: Snapshot) -> _Job:
        from demi.assistant.engines import CancelToken

        old = self._jobs.get(snap.uri)
        if old is not None and old.waiters == 0:
            old.token.cancel()
        job = _Job((snap.uri, snap.before, snap.after), CancelToken())
        job.waiters = 1
        loop = asyncio.get_running_loop()
        job.future = loop.run_in_executor(self.pool, self._run, snap, job.token, self.settings())
        job.future.add_done_callback(_consume)  # a job nobody waits for may end in an error: not worth a log
        self._jobs[snap.uri] = job
        self.stats.jobs += 1
        return job

    async def _wait(self, job: _Job, snap: Snapshot, version_now: Callable[[], int | None], started: float) -> Outcome:
        assert job.future is not None
        try:
            result = await asyncio.shield(job.future)
        finally:
            job.waiters -= 1
            if job.waiters <= 0 and not job.future.done():
                job.token.cancel()  # nobody wants it any more: stop decoding
            if self._jobs.get(snap.uri) is job and job.future.done():
                del self._jobs[snap.uri]
        seconds = time.monotonic() - job.started
        self.stats.last_prompt_tokens, self.stats.last_completion_tokens = (
            result.prompt_tokens,
            result.completion_tokens,
        )
        self.stats.last_mode = result.mode
        mixed = getattr(result, "workspace_cache", None)
        self.stats.last_cache_mixed = mixed["mixed"] if mixed else 0
        self.stats.last_job_ms = round(seconds * 1000, 1)
        if result.finish_reason in ("stop", "length"):  # not a cut-short answer
            self.cache.put(snap.uri, snap.before, snap.after, result.completion, result.replace)
        self.debouncer.observed(seconds)
        self.stats.latencies.append(time.monotonic() - started)
        if len(self.stats.latencies) > 1000:
            del self.stats.latencies[:500]
        if self.on_result is not None:
            self.on_result(seconds)
        if version_now() != snap.version:
            self.stats.stale += 1
            return Outcome("", 0, "stale", time.monotonic() - started, result)
        return Outcome(result.completion, result.replace, "model", time.monotonic() - started, result)

    # -- the job (a task thread) -----------------------------------------------------------------------

    def _run(self, snap: Snapshot, token: Any, s: LspSettings) -> Any:
        from demi.assistant.complete import complete
        from demi.assistant.engines import Sampling

        set_priority(0)
        engine = None
        while engine is None:  # wait for a loading engine, but not past a cancellation
            if token.cancelled:
                raise RunCancelled("cancelled while the engine loaded")
            try:
                engine = self.host.engine(timeout=0.1)
            except (TimeoutError, FutureTimeout):  # still loading
                continue
        doc, syntax = self.parsed(snap)
        sampling = Sampling(temperature=s.temperature, top_p=0.95 if s.temperature else 1.0)
        budget = s.latency_budget_ms / 1000 if s.latency_budget_ms else None
        return complete(
            engine,
            doc,
            snap.offset,
            max_tokens=s.max_tokens,
            budget=self.host.prompt_budget(s),
            recent=self.recent,
            sampling=sampling,
            cancel=token,
            time_budget=budget,
            syntax=syntax,
            workspace_cache=self._workspace_for(engine, snap) if s.workspace_cache else None,
        )

    # -- the workspace cache model ---------------------------------------------------------------------

    def _workspace_for(self, engine: Any, snap: Snapshot) -> Any:
        """The workspace cache for `engine`, or None (a model server, or the document not in it yet).

        What a request would wait for is done in the background instead: the other open documents
        (only what changed is tokenized again), once per workspace folder its files, and a document
        the cache does not hold yet (that request goes without; the next ones find it and feed only
        the chunks their edit touched, through `complete`, split at their cursor)."""
        from demi.assistant.workspace_cache import cache_for

        with self._workspace_lock:
            cache = cache_for(engine, self.workspace_cache)
            if cache is not self.workspace_cache:
                self.workspace_cache, self._scanned, self._syncing = cache, set(), False
                self.stats.workspace = cache
            if cache is None:
                return None
            sync, self._syncing = not self._syncing, True
        held = cache.holds(snap.name)
        if sync:
            first = None if held else snap
            self.pool.submit(self._sync_documents, cache, snap.name, first).add_done_callback(_log_failure)
        root = workspace_root(snap)
        if root is not None:
            with self._workspace_lock:
                fresh = str(root) not in self._scanned
                self._scanned.add(str(root))
            if fresh:
                self.pool.submit(self._read_workspace, cache, root, snap.name).add_done_callback(_log_failure)
        return cache if held else None

    def _sync_documents(self, cache: Any, current: str, first: Snapshot | None) -> None:
        """Feed `cache` the open documents other than `current`, and `first` (a task thread)."""
        try:
            if first is not None:
                cache.update(first.name, first.text, cursor=first.offset)
            for name, text in self.recent.items() if self.recent is not None else ():
                if name != current:
                    cache.update(name, text, keep_cursor=True)
        finally:
            with self._workspace_lock:
                self._syncing = False

    def _read_workspace(self, cache: Any, root: Path, name: str) -> int:
        """Read the workspace's files of the document's language into `cache` (a task thread)."""
        from demi.assistant.languages import language_for
        from demi.assistant.workspace_cache import feed_workspace

        spec = language_for(name)
        suffixes = spec.extensions if spec is not None else (Path(name).suffix,) if Path(name).suffix else ()
        near = (root / name).parent
        return feed_workspace(cache, root, near, suffixes, lambda p: p.relative_to(root).as_posix(), pause=0.002)

    # -- parsed documents ------------------------------------------------------------------------------
    #
    # Parsing (tree-sitter, then the symbol outline the context needs) costs ~25 ms on a 2,500-line
    # file: it is done once per document version, on a task thread, and shared by every request at
    # that version. After an edit it starts once typing pauses: at 80% of the debounce wait, so it
    # is ready when the automatic request's job starts, but does not run (and hold the GIL the
    # protocol needs) between the keystrokes of a burst.

    def parsed(self, snap: Snapshot) -> tuple[Any, Any]:
        """(Document, Syntax with its symbols) for `snap`'s text: reused when already built, and
        waited for when another thread is building it."""
        from demi.assistant.document import Document
        from demi.assistant.syntax import parse

        def usable(entry: Any) -> bool:
            return (
                entry is not None
                and entry[0] == snap.version
                and entry[1] == snap.name
                and (entry[2] is snap.text or entry[2] == snap.text)
            )

        with self._parse_lock:
            hit = self._parsed.get(snap.uri)
            if hit is not None and usable((hit[0], hit[1].name, hit[1].text)):
                return hit[1], hit[2]
            pending = self._parsing.get(snap.uri)
            mine = pending is None or not usable(pending)
            if pending is not None and not mine:
                done = pending[3]
            else:
                done = threading.Event()
                self._parsing[snap.uri] = (snap.version, snap.name, snap.text, done)
        if not mine:
            done.wait(2.0)
            with self._parse_lock:
                hit = self._parsed.get(snap.uri)
            if hit is not None and usable((hit[0], hit[1].name, hit[1].text)):
                return hit[1], hit[2]
        try:
            doc = Document.from_text(snap.text, snap.name)
            syntax = parse(doc)
            syntax.symbols()
            with self._parse_lock:
                if snap.uri in self._parsed or len(self._parsed) < 64:
                    self._parsed[snap.uri] = (snap.version, doc, syntax)
            return doc, syntax
        finally:
            if mine:
                with self._parse_lock:
                    if self._parsing.get(snap.uri, (None, None, None, None))[3] is done:
                        del self._parsing[snap.uri]
                done.set()

    def parse_soon(self, snap: Snapshot) -> None:
        """Parse `snap` once no edit has come for PARSE_DELAY_S (call on the event loop)."""
        old = self._parse_timers.pop(snap.uri, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()

        def go() -> None:
            self._parse_timers.pop(snap.uri, None)
            fut = loop.run_in_executor(self.pool, self.parsed, snap)
            fut.add_done_callback(_consume)

        self._parse_timers[snap.uri] = loop.call_later(max(PARSE_DELAY_S, 0.8 * self.debouncer.delay()), go)

    # -- bookkeeping -----------------------------------------------------------------------------------

    def edited(self, uri: str) -> None:
        self.debouncer.edited(uri)

    def closed(self, uri: str) -> None:
        task = self._current.pop(uri, None)
        if task is not None and not task.done():
            task.cancel()
        job = self._jobs.pop(uri, None)
        if job is not None:
            job.token.cancel()
        self.cache.forget(uri)
        self.debouncer.forget(uri)
        timer = self._parse_timers.pop(uri, None)
        if timer is not None:
            timer.cancel()
        with self._parse_lock:
            self._parsed.pop(uri, None)

    def cancel_all(self) -> None:
        for task in list(self._current.values()):
            if not task.done():
                task.cancel()
        for job in list(self._jobs.values()):
            job.token.cancel()
        self._jobs.clear()


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _log_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("reading the workspace for the workspace cache failed: %s", fut.exception())


def workspace_root(snap: Snapshot) -> Path | None:
    """The workspace folder of a `file:` document whose prompt name is workspace-relative (see
    `display_name`): its path less that name; None otherwise."""
    if not snap.uri.startswith("file:") or Path(snap.name).is_absolute():
        return None
    from pygls.uris import to_fs_path

    path = to_fs_path(snap.uri)
    if not path:
        return None
    parts, rel = Path(path).parts, Path(snap.name).parts
    if len(rel) >= len(parts) or tuple(parts[-len(rel) :]) != rel:
        return None
    return Path(*parts[: -len(rel)])


def display_name(uri: str, path: str | None, root: str | None, language_id: str | None) -> str:
    """The file name a prompt shows: workspace-relative when inside it; an untitled buffer gets
    a name with its language's extension, so the right grammar and comment style apply."""
    if path:
        p = Path(path)
        if root:
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                pass
        return str(p)
    from demi.assistant.languages import by_name

    spec = by_name(language_id) if language_id else None
    stem = uri.rsplit("/", 1)[-1].split(":")[-1] or "untitled"
    if spec is not None and spec.extensions and not stem.endswith(tuple(spec.extensions)):
        stem += spec.extensions[0]
    return stem
