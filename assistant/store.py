"""The session store: SQLite in WAL mode under the user data dir, shared by every front end.

Sessions hold messages; each message keeps the model and its timings. WAL lets the TUI, the
language server and the CLI read while one of them writes; every write is a short
`BEGIN IMMEDIATE` transaction retried within `busy_timeout`, so two writers queue instead of
failing. The schema is versioned with `PRAGMA user_version` and migrated forward in order from
the first version on. A locked or corrupt database is a `StoreError` with one clear line; the
file is never deleted or rewritten to "fix" it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from demi.model.errors import DemiUserError

DB_NAME = "sessions.db"

# Each entry migrates from version i to i + 1. Never edit one that has shipped: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: sessions and messages
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        kind TEXT NOT NULL DEFAULT 'chat',
        title TEXT NOT NULL DEFAULT '',
        model TEXT
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        model TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        seconds REAL
    );
    CREATE INDEX messages_by_session ON messages(session_id, id);
    CREATE INDEX sessions_by_updated ON sessions(updated);
    """,
    # 1 -> 2: full-text search over message content, kept in step by triggers
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(content, content='messages', content_rowid='id');
    INSERT INTO messages_fts(rowid, content) SELECT id, content FROM messages;
    CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER messages_au AFTER UPDATE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
    END;
    """,
    # 2 -> 3: free-form details per message (path, symbol, finish reason, ...)
    """
    ALTER TABLE messages ADD COLUMN meta TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(DemiUserError):
    """The session database is locked, corrupt, or from a newer Demi."""


@dataclass
class Session:
    id: str
    created: float
    updated: float
    kind: str
    title: str
    model: str | None
    messages: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Message:
    id: int
    session_id: str
    created: float
    role: str
    content: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float | None
    meta: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _explain(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"the session database {path} is locked by another Demi process; try again "
                          "(nothing was lost)")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return StoreError(f"the session database {path} is corrupt ({text}); move it aside and Demi will "
                          "start a new one (your files are not affected)")
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"cannot write the session database {path} ({text})")
    return StoreError(f"session database {path}: {text}")


class Store:
    """One connection per Store; open one per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: str | Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                        check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.Error):
                raise _explain(self.path, exc) from None
            raise StoreError(f"cannot create {self.path.parent} ({exc.strerror or exc})") from None
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"database is locked (journal mode stayed {mode})")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self.conn.close()
            raise _explain(self.path, exc) from None

    @classmethod
    def open_default(cls, data_dir: Path, timeout: float = 5.0) -> "Store":
        return cls(data_dir / DB_NAME, timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; waits up to `timeout` for another writer."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self.conn.execute("ROLLBACK")
                raise _explain(self.path, exc) from None

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"the session database {self.path} is from a newer Demi (schema {version}, "
                             f"this one knows {SCHEMA_VERSION}); upgrade Demi")
        if version == SCHEMA_VERSION:
            return
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {v + 1}")

    @property
    def version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------------

    def create_session(self, kind: str = "chat", title: str = "", model: str | None = None) -> Session:
        now = time.time()
        sid = uuid.uuid4().hex[:12]
        try:
            with self._write() as c:
                c.execute("INSERT INTO sessions (id, created, updated, kind, title, model) "
                          "VALUES (?, ?, ?, ?, ?, ?)",
                          (sid, now, now, kind, title, model))
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None
        return Session(sid, now, now, kind, title, model)

    def add_message(self, session_id: str, role: str, content: str, model: str | None = None,
                    prompt_tokens: int | None = None, completion_tokens: int | None = None,
                    seconds: float | None = None, meta: dict[str, Any] | None = None) -> int:
        now = time.time()
        try:
            with self._write() as c:
                cur = c.execute(
                    "INSERT INTO messages (session_id, created, role, content, model, prompt_tokens, "
                    "completion_tokens, seconds, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, now, role, content, model, prompt_tokens, completion_tokens, seconds,
                     json.dumps(meta) if meta else None))
                c.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
                return int(cur.lastrowid)
        except sqlite3.IntegrityError:
            raise StoreError(f"no session {session_id!r}") from None
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    def record(self, kind: str, title: str, model: str | None, prompt: str, answer: str,
               prompt_tokens: int | None = None, completion_tokens: int | None = None,
               seconds: float | None = None, meta: dict[str, Any] | None = None) -> str:
        """One request and its answer as a new session (what explain and refactor keep)."""
        session = self.create_session(kind, title, model)
        self.add_message(session.id, "user", prompt, meta=meta)
        self.add_message(session.id, "assistant", answer, model, prompt_tokens, completion_tokens, seconds, meta)
        return session.id

    def rename_session(self, session_id: str, title: str) -> bool:
        try:
            with self._write() as c:
                return c.execute("UPDATE sessions SET title = ? WHERE id = ?", (title, session_id)).rowcount > 0
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    def delete_session(self, session_id: str) -> bool:
        try:
            with self._write() as c:
                return c.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    # -- reads -------------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    def sessions(self, limit: int = 20, kind: str | None = None) -> list[Session]:
        where, args = ("WHERE s.kind = ?", (kind,)) if kind else ("", ())
        rows = self._query(
            f"SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n FROM sessions s {where} "
            "ORDER BY s.updated DESC, s.rowid DESC LIMIT ?", (*args, limit))
        return [Session(r["id"], r["created"], r["updated"], r["kind"], r["title"], r["model"], r["n"])
                for r in rows]

    def session(self, session_id: str) -> Session:
        rows = self._query("SELECT id FROM sessions WHERE id = ? OR id LIKE ? ORDER BY updated DESC LIMIT 2",
                           (session_id, session_id + "%"))
        if not rows:
            raise StoreError(f"no session {session_id!r} (see `demi sessions list`)")
        if len(rows) > 1 and rows[0]["id"] != session_id:
            raise StoreError(f"session id {session_id!r} is ambiguous: give more characters")
        r = self._query("SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n "
                        "FROM sessions s WHERE id = ?", (rows[0]["id"],))[0]
        return Session(r["id"], r["created"], r["updated"], r["kind"], r["title"], r["model"], r["n"])

    def messages(self, session_id: str) -> list[Message]:
        rows = self._query("SELECT * FROM messages WHERE session_id = ? ORDER BY id", (session_id,))
        return [_message(r) for r in rows]

    def search(self, query: str, limit: int = 20) -> list[tuple[Message, str]]:
        """Messages matching `query` (words, all required; FTS5 syntax is not needed), with a snippet."""
        words = [w for w in query.replace('"', " ").split() if w]
        if not words:
            return []
        match = " ".join(f'"{w}"' for w in words)
        rows = self._query(
            "SELECT m.*, snippet(messages_fts, 0, '[', ']', '…', 12) AS snip FROM messages_fts "
            "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ? "
            "ORDER BY rank LIMIT ?", (match, limit))
        return [(_message(r), r["snip"]) for r in rows]


def _message(r: sqlite3.Row) -> Message:
    meta = None
    if r["meta"]:
        try:
            meta = json.loads(r["meta"])
        except ValueError:
            meta = None
    return Message(r["id"], r["session_id"], r["created"], r["role"], r["content"], r["model"],
                   r["prompt_tokens"], r["completion_tokens"], r["seconds"], meta)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (trigger bodies keep their inner semicolons)."""
    out, buf = [], ""
    for line in script.strip().splitlines():
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
