"""The session store: schema migrations, WAL, concurrent writers, full-text search, bad databases."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from demi.assistant.store import MIGRATIONS, SCHEMA_VERSION, Store, StoreError, _statements


def test_new_store_is_wal_at_the_latest_schema(tmp_path):
    with Store(tmp_path / "s.db") as store:
        assert store.version == SCHEMA_VERSION
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        sid = store.record("explain", "explain a.py", "demi-tiny", "explain a.py", "It adds.", 10, 3, 0.5,
                           {"path": "a.py"})
        [s] = store.sessions()
        assert (s.id, s.kind, s.model, s.messages) == (sid, "explain", "demi-tiny", 2)
        msgs = store.messages(sid)
        assert [m.role for m in msgs] == ["user", "assistant"]
        assert (msgs[1].completion_tokens, msgs[1].seconds, msgs[1].meta) == (3, 0.5, {"path": "a.py"})
        assert store.session(sid[:6]).id == sid  # a unique prefix is enough


def test_migrates_every_older_version(tmp_path):
    """A database created by each earlier schema (with data) opens at the latest one, data kept."""
    for start in range(SCHEMA_VERSION):
        path = tmp_path / f"v{start}.db"
        conn = sqlite3.connect(path, isolation_level=None)
        for v in range(start):
            for stmt in _statements(MIGRATIONS[v]):
                conn.execute(stmt)
        if start >= 1:
            conn.execute("INSERT INTO sessions VALUES ('old', 1, 1, 'chat', 'old one', 'm')")
            conn.execute("INSERT INTO messages (session_id, created, role, content) "
                         "VALUES ('old', 1, 'user', 'quicksort in rust')")
        conn.execute(f"PRAGMA user_version = {start}")
        conn.close()
        with Store(path) as store:
            assert store.version == SCHEMA_VERSION
            if start >= 1:
                assert store.messages("old")[0].content == "quicksort in rust"
                assert [m.session_id for m, _ in store.search("quicksort")] == ["old"]  # indexed on migration


def test_full_text_search(tmp_path):
    with Store(tmp_path / "s.db") as store:
        a = store.record("chat", "a", None, "how do I parse TOML", "use tomllib")
        store.record("chat", "b", None, "explain the KV cache", "it stores keys and values")
        hits = store.search("tomllib")
        assert [(m.session_id, m.role) for m, _ in hits] == [(a, "assistant")] and "[tomllib]" in hits[0][1]
        assert store.search('quotes " and (parens) OR') == []  # user text never breaks the query
        assert store.search("   ") == []


def test_threads_write_at_once(tmp_path):
    path = tmp_path / "s.db"
    Store(path).close()
    errors = []

    def writer(n: int) -> None:
        try:
            with Store(path) as store:
                sid = store.create_session("chat", f"t{n}").id
                for i in range(25):
                    store.add_message(sid, "user", f"message {i} from {n}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Store(path) as store:
        assert sum(s.messages for s in store.sessions(10)) == 100


def test_processes_write_at_once(tmp_path):
    """The TUI and the language server are separate processes sharing one database."""
    path = tmp_path / "s.db"
    script = textwrap.dedent(f"""
        import sys
        from demi.assistant.store import Store
        with Store({str(path)!r}) as store:
            sid = store.create_session('chat', sys.argv[1]).id
            for i in range(30):
                store.add_message(sid, 'user', f'hello {{i}}')
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)]) for n in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    with Store(path) as store:
        assert sorted(s.messages for s in store.sessions(10)) == [30, 30, 30]


def test_locked_database_is_a_clear_error_and_loses_nothing(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as store:
        sid = store.record("chat", "keep", None, "q", "a")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked by another Demi process"):
            with Store(path, timeout=0.2) as store:
                store.record("chat", "new", None, "q", "a")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with Store(path) as store:
        assert [s.id for s in store.sessions()] == [sid]


def test_corrupt_database_is_a_clear_error_and_is_left_alone(tmp_path):
    path = tmp_path / "s.db"
    junk = b"this is not a database at all\n" * 200
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="is corrupt .* move it aside"):
        Store(path)
    assert path.read_bytes() == junk


def test_database_from_a_newer_demi(tmp_path):
    path = tmp_path / "s.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(StoreError, match="from a newer Demi"):
        Store(path)


def test_unknown_session(tmp_path):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(StoreError, match="no session 'nope'"):
            store.session("nope")
        with pytest.raises(StoreError, match="no session"):
            store.add_message("nope", "user", "x")
