"""The session store: SQLite in WAL mode under the user data dir, shared by every front end.

Sessions hold messages; each message keeps the model and its timings. WAL lets the TUI, the
language server and the CLI read while one of them writes; every write is a short
`BEGIN IMMEDIATE` transaction that waits up to `busy_timeout` (the `timeout` argument, 5 s by
default) for another writer, so two writers queue instead of failing. `synchronous = NORMAL`:
in WAL mode a committed transaction survives the process being killed (the WAL is in the OS's
hands at COMMIT); only a power cut can lose the last few commits, never the database.
(tests/assistant/test_store.py kills writers with SIGKILL and runs two writer processes at once;
benchmarks/store_stress.py does it for a minute.)

The schema is versioned with `PRAGMA user_version` and migrated forward in order from the first
version on. A locked database and one from a newer Demi are a `StoreError` with one clear line.
A corrupt one (SQLite says "not a database" or "malformed" when opening it; or a page found
malformed later, confirmed by `PRAGMA quick_check`) is never deleted or patched: it is moved
aside to `sessions.db.corrupt-YYYYMMDD-HHMMSS` (its -wal and -shm files too) and a new database is
started; a one-line warning says where the old file went
(logged to `demi.store`, and kept in `Store.notice` for front ends that show it themselves).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

if sys.platform != "win32":
    import fcntl

from demi.model.errors import DemiUserError

DB_NAME = "sessions.db"
log = logging.getLogger("demi.store")
T = TypeVar("T")

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


class _Corrupt(Exception):
    """The database file is damaged (internal: turned into moving it aside)."""


# SQLite's primary result codes for a damaged file (sqlite3 names them only from Python 3.11 on,
# as it sets `sqlite_errorcode` on its exceptions only from 3.11 on).
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _explain(path: Path, exc: sqlite3.Error) -> StoreError:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(
            f"the session database {path} is locked by another Demi process; try again (nothing was lost)"
        )
    if _is_corrupt(exc):
        return StoreError(
            f"the session database {path} is corrupt ({text}); Demi moves it aside and starts a "
            "new one the next time it opens it (your files are not affected)"
        )
    if "readonly" in text or "unable to open" in text:
        return StoreError(f"cannot write the session database {path} ({text})")
    return StoreError(f"session database {path}: {text}")


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names now (device, inode), to notice that another process moved it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _aside_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while out.exists():
        out = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return out


@contextmanager
def _folder_lock(folder: Path, shared: bool = False) -> Iterator[None]:
    """An exclusive lock on the data folder while a database is moved aside, so two processes that
    find it corrupt at once move it once (and never move the new one the first one started); a
    shared one while a database is opened and checked, so no open runs between the renames of a
    move (it would start a new database whose -wal and -shm the mover then renames away: the
    opener's next statement is a disk I/O error). flock locks belong to their own descriptor, so
    closing it leaves SQLite's POSIX locks alone."""
    if sys.platform == "win32":  # no fcntl: moving aside is not serialised between processes
        yield
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class Store:
    """One connection per Store; open one per thread (sqlite3 connections are not shared).

    `notice`: the one-line warning when this open moved a corrupt database aside (else None);
    `moved_aside`: where it went.
    """

    def __init__(self, path: str | Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout
        self.notice: str | None = None
        self.moved_aside: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent} ({exc.strerror or exc})") from None
        for attempt in range(3):  # a second try after moving a corrupt file aside; a third if raced
            try:
                with _folder_lock(self.path.parent, shared=True):
                    self._connect()
                return
            except _Corrupt as exc:
                reason, ident = exc.args
                if attempt == 2:
                    raise StoreError(
                        f"the session database {self.path} is still corrupt after moving it aside ({reason})"
                    ) from None
                self._move_aside(reason, ident)

    def _connect(self) -> None:
        """Open, check and migrate; `_Corrupt(reason, identity)` when the file is damaged."""
        # The file is only ever opened by SQLite: opening and closing it here through another file
        # descriptor would drop every POSIX lock this process holds on it (fcntl semantics), and
        # another connection in this process (the chat UI has two) would lose its protection:
        # SQLite's own header and page checks say what is damaged instead.
        ident = _identity(self.path)
        try:
            self.conn = sqlite3.connect(
                str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                raise _Corrupt(str(exc), ident) from None
            raise _explain(self.path, exc) from None
        self._ident = _identity(self.path)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._wal()
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            # reads the header and the schema: garbage is SQLITE_NOTADB, a file shorter than its
            # header says (with no WAL to make up the difference) SQLITE_CORRUPT
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            self._migrate()
        except sqlite3.Error as exc:
            self.conn.close()
            if _is_corrupt(exc):
                raise _Corrupt(str(exc), self._ident) from None
            raise _explain(self.path, exc) from None
        except StoreError:
            self.conn.close()
            raise

    def _wal(self) -> None:
        """WAL mode. Switching a new database needs a moment alone with it, which SQLite does not
        wait for through busy_timeout: retry within the timeout instead."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                mode = None
            if str(mode).lower() == "wal":
                return
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"database is locked (journal mode stayed {mode})")
            time.sleep(0.02)

    def _move_aside(self, reason: str, ident: tuple[int, int] | None) -> None:
        """Rename the damaged file (identified by `ident`) and its -wal/-shm out of the way, unless
        another process already did; the next `_connect` starts a new database."""
        with _folder_lock(self.path.parent):
            if ident is None or _identity(self.path) != ident:
                return  # someone else moved it (or it is gone): just open what is there now
            aside = _aside_name(self.path)
            try:
                os.replace(self.path, aside)
            except OSError as exc:
                raise StoreError(
                    f"the session database {self.path} is corrupt ({reason}) and could not be moved "
                    f"aside ({exc.strerror or exc}); move it aside yourself"
                ) from None
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    try:
                        os.replace(side, aside.with_name(aside.name + suffix))
                    except OSError:
                        pass
        self.moved_aside = aside
        self.notice = (
            f"the session database {self.path} was corrupt ({reason}); moved it to {aside} and started a new one"
        )
        log.warning("%s", self.notice)

    def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the connection; on corruption found mid-use, check the whole file, move it aside
        when the check fails, and run `fn` once more on the new database."""
        try:
            return fn(self.conn)
        except sqlite3.Error as exc:
            if not isinstance(exc, sqlite3.DatabaseError) or not _is_corrupt(exc) or not self._recover_live(str(exc)):
                raise _explain(self.path, exc) from None
        try:
            return fn(self.conn)
        except sqlite3.Error as exc:
            raise _explain(self.path, exc) from None

    def _whole(self) -> bool:
        """SQLite's own `quick_check` (through the WAL) passes."""
        try:
            return [tuple(r) for r in self.conn.execute("PRAGMA quick_check(1)").fetchall()] == [("ok",)]
        except sqlite3.Error:
            return False

    def _recover_live(self, reason: str) -> bool:
        """An open store hit a malformed page: True when the file was moved aside (by this process
        or another) and a new database is open."""
        if self._whole():
            return False  # SQLite's own check passes: report the error, move nothing
        ident = self._ident
        self.conn.close()
        self._move_aside(reason, ident)
        with _folder_lock(self.path.parent, shared=True):
            self._connect()
        return True

    @classmethod
    def open_default(cls, data_dir: Path, timeout: float = 5.0) -> Store:
        return cls(data_dir / DB_NAME, timeout)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction; waits up to `timeout` for another writer. sqlite3 errors
        propagate (the caller's `_do` turns them into a StoreError)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the session database {self.path} is from a newer Demi (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade Demi"
            )
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

        def run(_: sqlite3.Connection) -> None:
            with self._write() as c:
                c.execute(
                    "INSERT INTO sessions (id, created, updated, kind, title, model) VALUES (?, ?, ?, ?, ?, ?)",
                    (sid, now, now, kind, title, model),
                )

        self._do(run)
        return Session(sid, now, now, kind, title, model)

    def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        seconds: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Append one message; returns its id once it is committed."""
        now = time.time()

        def run(_: sqlite3.Connection) -> int:
            try:
                with self._write() as c:
                    cur = c.execute(
                        "INSERT INTO messages (session_id, created, role, content, model, prompt_tokens, "
                        "completion_tokens, seconds, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            session_id,
                            now,
                            role,
                            content,
                            model,
                            prompt_tokens,
                            completion_tokens,
                            seconds,
                            json.dumps(meta) if meta else None,
                        ),
                    )
                    c.execute("UPDATE sessions SET updated = ? WHERE id = ?", (now, session_id))
                    assert cur.lastrowid is not None  # set by the INSERT just above
                    return cur.lastrowid
            except sqlite3.IntegrityError:
                raise StoreError(f"no session {session_id!r}") from None

        return self._do(run)

    def record(
        self,
        kind: str,
        title: str,
        model: str | None,
        prompt: str,
        answer: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        seconds: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> str:
        """One request and its answer as a new session (what explain and refactor keep)."""
        session = self.create_session(kind, title, model)
        self.add_message(session.id, "user", prompt, meta=meta)
        self.add_message(session.id, "assistant", answer, model, prompt_tokens, completion_tokens, seconds, meta)
        return session.id

    def rename_session(self, session_id: str, title: str) -> bool:
        def run(_: sqlite3.Connection) -> bool:
            with self._write() as c:
                return c.execute("UPDATE sessions SET title = ? WHERE id = ?", (title, session_id)).rowcount > 0

        return self._do(run)

    def delete_session(self, session_id: str) -> bool:
        def run(_: sqlite3.Connection) -> bool:
            with self._write() as c:
                return c.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

        return self._do(run)

    # -- reads -------------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        return self._do(lambda c: c.execute(sql, args).fetchall())

    def sessions(self, limit: int = 20, kind: str | None = None) -> list[Session]:
        where, args = ("WHERE s.kind = ?", (kind,)) if kind else ("", ())
        rows = self._query(
            f"SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n FROM sessions s {where} "
            "ORDER BY s.updated DESC, s.rowid DESC LIMIT ?",
            (*args, limit),
        )
        return [Session(r["id"], r["created"], r["updated"], r["kind"], r["title"], r["model"], r["n"]) for r in rows]

    def session(self, session_id: str) -> Session:
        rows = self._query(
            "SELECT id FROM sessions WHERE id = ? OR id LIKE ? ORDER BY updated DESC LIMIT 2",
            (session_id, session_id + "%"),
        )
        if not rows:
            raise StoreError(f"no session {session_id!r} (see `demi sessions list`)")
        if len(rows) > 1 and rows[0]["id"] != session_id:
            raise StoreError(f"session id {session_id!r} is ambiguous: give more characters")
        r = self._query(
            "SELECT s.*, (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id) AS n FROM sessions s WHERE id = ?",
            (rows[0]["id"],),
        )[0]
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
            "ORDER BY rank LIMIT ?",
            (match, limit),
        )
        return [(_message(r), r["snip"]) for r in rows]


def _message(r: sqlite3.Row) -> Message:
    meta = None
    if r["meta"]:
        try:
            meta = json.loads(r["meta"])
        except ValueError:
            meta = None
    return Message(
        r["id"],
        r["session_id"],
        r["created"],
        r["role"],
        r["content"],
        r["model"],
        r["prompt_tokens"],
        r["completion_tokens"],
        r["seconds"],
        meta,
    )


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
