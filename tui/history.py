"""The session store as the chat screen uses it: never in the way, never losing a message.

Writes go, in order, through one writer thread, so a slow or locked database never holds up
the screen or an answer. A message that cannot be written yet (locked, corrupt, unwritable)
stays queued in memory and is written with the next attempt; the reason is reported once.
Reads (the session list, search, opening a session) run on the caller's thread, which is a
worker thread in the app, over a second connection. A database that cannot be opened turns
history off with its reason: the conversation goes on in memory and the file is left alone.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demi.assistant.store import Message, Session, Store, StoreError


@dataclass
class Conversation:
    """The chat on screen: its session id appears once the first message is written."""

    session_id: str | None = None
    title: str = ""
    model: str | None = None
    kind: str = "chat"
    deleted: bool = False


@dataclass
class SearchHit:
    session_id: str
    message_id: int
    role: str
    snippet: str
    title: str


@dataclass
class _Write:
    conv: Conversation
    fields: dict[str, Any] = field(default_factory=dict)


class History:
    """Thread-safe front of `Store` for the UI; `notify(event, data)` is called from the writer thread."""

    def __init__(self, path: Path | None, timeout: float = 5.0, notify: Callable[[str, Any], None] | None = None):
        self.path, self.timeout = path, timeout
        self.notify = notify or (lambda event, data: None)
        self.error: str | None = None
        self._reader: Store | None = None
        self._writer: Store | None = None
        self._read_lock = threading.Lock()
        self._pending: list[_Write] = []
        self._pending_lock = threading.Lock()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="demi-history", daemon=True)
        self._thread.start()
        self._last_error: str | None = None

    # -- reads (any thread but the UI's) -----------------------------------------------------------

    def open(self) -> str | None:
        """Open the reading connection; the reason when history is unavailable, else None."""
        with self._read_lock:
            return self._open_reader()

    def _open_reader(self) -> str | None:
        if self.path is None:
            self.error = "history is off (no data directory)"
            return self.error
        if self._reader is None:
            try:
                self._reader = Store(self.path, self.timeout)
                self.error = None
            except StoreError as exc:
                self.error = str(exc)
            else:
                if self._reader.notice:  # a corrupt database was moved aside: say where, once
                    self.notify("notice", self._reader.notice)
        return self.error

    def _read(self, fn: Callable[[Store], Any], default: Any) -> Any:
        with self._read_lock:
            if self._open_reader() is not None or self._reader is None:
                return default
            return fn(self._reader)

    def sessions(self, limit: int = 200) -> list[Session]:
        return self._read(lambda s: s.sessions(limit), [])

    def session(self, session_id: str) -> tuple[Session, list[Message]]:
        """A session (an id or a unique prefix) and its messages; StoreError when there is none."""
        with self._read_lock:
            if self._open_reader() is not None or self._reader is None:
                raise StoreError(self.error or "history is off")
            found = self._reader.session(session_id)
            return found, self._reader.messages(found.id)

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        def run(store: Store) -> list[SearchHit]:
            titles: dict[str, str] = {}
            hits = []
            for m, snippet in store.search(query, limit):
                if m.session_id not in titles:
                    try:
                        titles[m.session_id] = store.session(m.session_id).title
                    except StoreError:
                        titles[m.session_id] = ""
                hits.append(SearchHit(m.session_id, m.id, m.role, " ".join(snippet.split()), titles[m.session_id]))
            return hits

        return self._read(run, [])

    # -- writes (queued, in order) -----------------------------------------------------------------

    def append(self, conv: Conversation, role: str, content: str, **fields: Any) -> None:
        """Queue one message of `conv` (the session is created with the first one)."""
        with self._pending_lock:
            self._pending.append(_Write(conv, dict(role=role, content=content, **fields)))
        self._jobs.put(self._flush)

    def rename(self, conv_or_id: Conversation | str, title: str) -> None:
        if isinstance(conv_or_id, Conversation):
            conv_or_id.title = title
            if conv_or_id.session_id is None:
                return  # created with this title when its first message is written
            sid = conv_or_id.session_id
        else:
            sid = conv_or_id
        self._jobs.put(lambda: self._apply("renamed", sid, lambda s: s.rename_session(sid, title)))

    def delete(self, session_id: str, conv: Conversation | None = None) -> None:
        if conv is not None:
            conv.deleted = True
        self._jobs.put(lambda: self._apply("deleted", session_id, lambda s: s.delete_session(session_id)))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued write was tried (tests, and before the app exits)."""
        done = threading.Event()
        self._jobs.put(done.set)
        return done.wait(timeout)

    @property
    def unsaved(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> Path | None:
        """Write what is queued (waiting up to `timeout`); what still cannot be written is kept in a
        JSON-lines file beside the database, whose path is returned, so nothing is lost at exit."""
        self.wait_idle(timeout)
        self._jobs.put(None)
        self._thread.join(timeout)
        kept = self._keep_unsaved()
        for store in (self._reader, self._writer):
            if store is not None:
                try:
                    store.close()
                except Exception:  # closing at exit: nothing useful to do with an error
                    pass
        return kept

    def _keep_unsaved(self) -> Path | None:
        with self._pending_lock:
            items = list(self._pending)
        if not items or self.path is None:
            return None
        rows = [
            {"session_id": w.conv.session_id, "title": w.conv.title, "kind": w.conv.kind, **w.fields} for w in items
        ]
        out = self.path.parent / "unsaved" / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        except OSError:
            return None
        return out

    # -- the writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception as exc:  # a bug here must not kill the writer: report it and go on
                self._report(f"history: {type(exc).__name__}: {exc}")

    def _store(self) -> Store | None:
        if self._writer is None:
            if self.path is None:
                return None
            try:
                self._writer = Store(self.path, self.timeout)
            except StoreError as exc:
                self._report(str(exc))
                return None
            if self._writer.notice:
                self.notify("notice", self._writer.notice)
        return self._writer

    def _report(self, text: str) -> None:
        if text != self._last_error and text != self.error:  # self.error: already shown when opening
            self._last_error = text
            self.notify("error", text)

    def _apply(self, event: str, session_id: str, fn: Callable[[Store], Any]) -> None:
        store = self._store()
        if store is None:
            return
        try:
            fn(store)
        except StoreError as exc:
            self._report(str(exc))
            return
        self.notify(event, session_id)

    def _flush(self) -> None:
        with self._pending_lock:
            if not self._pending:
                return
        store = self._store()
        if store is None:
            return
        while True:
            with self._pending_lock:
                if not self._pending:
                    break
                item = self._pending[0]
            conv = item.conv
            try:
                if not conv.deleted:
                    if conv.session_id is None:
                        title = conv.title or "untitled"
                        conv.session_id = store.create_session(conv.kind, title, conv.model).id
                        self.notify("created", conv)
                    store.add_message(conv.session_id, **item.fields)
            except StoreError as exc:
                self._report(f"not saved to history yet (kept in memory, retried with the next message): {exc}")
                return
            with self._pending_lock:
                self._pending.pop(0)
        if self._last_error is not None:
            self._last_error = None
            self.notify("recovered", None)
        self.notify("saved", None)
