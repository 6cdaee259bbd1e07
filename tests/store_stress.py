"""Writer processes on one session database: run side by side, or killed with SIGKILL mid-write.

Shared by tests/assistant/test_store.py (short runs) and benchmarks/store_stress.py (a minute, or any
length). A writer is a fresh Python process (`python -c WRITER`) that appends messages through
the real `Store.add_message` and, after each call returns (the message is committed), appends
"ID I" to its own log file with a raw `os.write`, so the log survives a SIGKILL. Every 50
messages it reads the session back, as the chat UI does. The parent then compares the logs with
what the database holds.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from demi.assistant.store import Store

WRITER = r"""
import os, sys, time
from demi.assistant.store import Store, StoreError

path, sid, name, seconds, log = sys.argv[1:6]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
deadline = time.monotonic() + float(seconds)
i = failures = 0
with Store(path, timeout=30.0) as store:
    os.write(fd, b"open\n")
    while float(seconds) <= 0 or time.monotonic() < deadline:
        try:
            mid = store.add_message(sid, "user", f"{name} message {i}", meta={"writer": name, "i": i})
        except StoreError as exc:
            failures += 1
            print(f"failure: {exc}", file=sys.stderr, flush=True)
            continue
        os.write(fd, f"{mid} {i}\n".encode())
        i += 1
        if i % 50 == 0:
            store.messages(sid)
print(f"{i} {failures}", flush=True)
"""


@dataclass
class Result:
    """Messages each writer committed (from its log) against what the database holds."""

    seconds: float
    written: dict[str, int] = field(default_factory=dict)
    read_back: dict[str, int] = field(default_factory=dict)
    unlogged: dict[str, int] = field(default_factory=dict)  # in the database, not yet in the log
    failures: dict[str, int] = field(default_factory=dict)
    switches: int = 0  # writer changes along the id order: > 0 means they really interleaved
    problems: list[str] = field(default_factory=list)
    integrity: str = ""

    def as_dict(self) -> dict:
        return {
            "seconds": round(self.seconds, 1),
            "written": self.written,
            "read_back": self.read_back,
            "written_total": sum(self.written.values()),
            "read_back_total": sum(self.read_back.values()),
            "unlogged": self.unlogged,
            "writer_failures": self.failures,
            "interleavings": self.switches,
            "integrity_check": self.integrity,
            "problems": self.problems,
        }


def new_session(db: Path) -> str:
    with Store(db) as store:
        return store.create_session("chat", "stress").id


def spawn(db: Path, sid: str, name: str, seconds: float, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), sid, name, str(seconds), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_log(log: Path) -> list[tuple[int, int]]:
    out = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if line == "open":
            continue
        mid, i = line.split()
        out.append((int(mid), int(i)))
    return out


def verify(
    db: Path, sid: str, logs: dict[str, Path], killed: set[str] = frozenset(), result: Result | None = None
) -> Result:
    """Every logged message must be in the database with its text, in order; a killed writer may
    have one more (committed, killed before it logged it), a clean one none."""
    result = result or Result(0.0)
    with Store(db) as store:
        rows = store.messages(sid)
        result.integrity = store.conn.execute("PRAGMA integrity_check").fetchone()[0]
        try:
            store.conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
        except sqlite3.Error as exc:
            result.problems.append(f"the full-text index disagrees with the messages: {exc}")
    if result.integrity != "ok":
        result.problems.append(f"integrity_check: {result.integrity}")
    by_writer: dict[str, list[tuple[int, int]]] = {}
    previous = None
    for m in rows:
        w = (m.meta or {}).get("writer")
        if w not in logs:
            continue
        by_writer.setdefault(w, []).append((m.id, m.meta["i"]))
        if m.content != f"{w} message {m.meta['i']}":
            result.problems.append(f"message {m.id}: wrong text {m.content!r}")
        if previous is not None and w != previous:
            result.switches += 1
        previous = w
    for name, log in logs.items():
        logged = read_log(log)
        stored = by_writer.get(name, [])
        result.written[name] = len(logged)
        result.read_back[name] = len(stored)
        missing = set(logged) - set(stored)
        if missing:
            result.problems.append(f"{name}: {len(missing)} committed messages missing, e.g. {sorted(missing)[:3]}")
        if [i for _, i in stored] != list(range(len(stored))):
            result.problems.append(f"{name}: the stored sequence has gaps or repeats")
        extra = len(stored) - len(logged)
        result.unlogged[name] = result.unlogged.get(name, 0) + max(0, extra)
        if extra > (1 if name in killed else 0):
            result.problems.append(f"{name}: {extra} messages in the database that it never reported committing")
    return result


def concurrent(base: Path, seconds: float, writers: int = 2) -> Result:
    """`writers` processes append to one session for `seconds` at once."""
    db = base / "sessions.db"
    sid = new_session(db)
    logs = {f"w{n}": base / f"w{n}.log" for n in range(writers)}
    started = time.monotonic()
    procs = {name: spawn(db, sid, name, seconds, log) for name, log in logs.items()}
    result = Result(0.0)
    reported = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=seconds + 300)
        if p.returncode != 0:
            result.problems.append(f"{name} exited {p.returncode}: {err.strip()[-500:]}")
            continue
        reported[name], result.failures[name] = map(int, out.split())
        if result.failures[name]:
            result.problems.append(f"{name}: {result.failures[name]} writes failed: {err.strip().splitlines()[0]}")
    result.seconds = time.monotonic() - started
    verify(db, sid, logs, result=result)
    for name, count in reported.items():
        if count != result.written[name]:
            result.problems.append(f"{name}: said it wrote {count}, its log has {result.written[name]}")
    return result


def kill_rounds(base: Path, rounds: int, seed: int = 0, writers: int = 2) -> tuple[Result, list[float]]:
    """Each round: `writers` processes append without end; after a random 0.1-1.2 s (after they
    opened the database) one of them, or all, get SIGKILL; the database must open and hold every
    message any of them logged as committed. Rounds accumulate in one database."""
    rng = random.Random(seed)
    db = base / "sessions.db"
    sid = new_session(db)
    result = Result(0.0)
    delays = []
    started = time.monotonic()
    for r in range(rounds):
        logs = {f"r{r}w{n}": base / f"r{r}w{n}.log" for n in range(writers)}
        procs = {name: spawn(db, sid, name, 0, log) for name, log in logs.items()}
        deadline = time.monotonic() + 120
        while not all(log.exists() and log.stat().st_size > 0 for log in logs.values()):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs.values()):
                raise RuntimeError(
                    f"round {r}: a writer did not start: "
                    + "; ".join(p.stderr.read() for p in procs.values() if p.poll() is not None)
                )
            time.sleep(0.01)
        delay = rng.uniform(0.1, 1.2)
        delays.append(delay)
        time.sleep(delay)
        victims = list(procs) if rng.random() < 0.5 else [rng.choice(list(procs))]
        for name in victims:
            procs[name].send_signal(signal.SIGKILL)
        for name, p in procs.items():
            if name not in victims:
                p.send_signal(signal.SIGTERM)  # the survivor stops too (also abruptly: no clean close)
            p.wait(timeout=60)
            p.stdout.close()
            p.stderr.close()
        verify(db, sid, logs, killed=set(procs), result=result)
    result.seconds = time.monotonic() - started
    return result, delays
