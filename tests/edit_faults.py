"""Kill a process with SIGKILL while it applies (or undoes) a large edit, and check what is left.

Shared by tests/assistant/test_edit_faults.py (a quick run in the normal suite and a long `slow` one) and
benchmarks/edit_faults.py (any number of runs, a JSON report). Each run:

1. the workspace file holds OLD (and Demi has no backup of it); for an undo run, the parent
   first applies NEW itself, so the child's undo has something to restore;
2. a fresh Python process (`python -c CHILD`) imports Demi, reads the file, says "start" and calls
   the real `apply_edit` (or `undo`); `edits.PHASE_HOOK` appends the name of each step to a log
   file with a raw `os.write`, so the log survives the kill;
3. the child also announces each step on its stdout; the parent waits for the step it aims at,
   sleeps a random part of that step's length (timed in calibration runs that are not killed),
   sends SIGKILL and reaps the child; the last line of the log is the step the kill landed in
   (later than aimed when the machine is busy: the report counts where kills really landed);
4. checks: the file is exactly OLD or exactly NEW; every other entry in the workspace folder is
   a hidden Demi temp file (`.NAME.demi-tmp-...`); then the parent's own `undo` must agree with
   what is on disk (NEW: it restores OLD; OLD: "no backup", the unfinished record dropped), after
   which no temp file is left in the workspace or the backup folder.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from demi.assistant.edits import TMP_MARK, Edit, NoBackupError, apply_edit, backup_dir, backups, sha256, undo

CHILD = r"""
import os, sys, time
from pathlib import Path
from demi.assistant import edits

mode, path, new_path, data, root, log = sys.argv[1:7]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def hook(name):
    os.write(fd, f"{time.monotonic():.6f} {name}\n".encode())
    os.write(1, f"{name}\n".encode())  # the parent waits for the step it aims at
edits.PHASE_HOOK = hook
path, data, root = Path(path), Path(data), Path(root)
if mode == "apply":
    old = path.read_bytes()
    edit = edits.Edit(path, old.decode("utf-8"), Path(new_path).read_text(encoding="utf-8"), edits.sha256(old))
os.write(fd, f"{time.monotonic():.6f} start\n".encode())
print("start", flush=True)
if mode == "apply":
    edits.apply_edit(edit, data, root)
else:
    edits.undo(path, data, root=root)
os.write(fd, f"{time.monotonic():.6f} exit\n".encode())
"""


def make_texts(megabytes: float, seed: int = 0) -> tuple[bytes, bytes]:
    """OLD and NEW of about `megabytes` each, different on every line and in length, so any mix of
    the two (a torn write, a short file) compares unequal to both."""
    rng = random.Random(seed)
    lines_old, lines_new, size = [], [], 0
    i = 0
    while size < megabytes * 1_000_000:
        word = "".join(rng.choice("abcdefghij") for _ in range(24))
        a = f"def old_{i:07d}(x):  # {word}\n    return x + {i}\n"
        b = f"def new_function_{i:07d}(x: int) -> int:  # {word}\n    return x * {i}\n"
        lines_old.append(a)
        lines_new.append(b)
        size += len(a)
        i += 1
    return "".join(lines_old).encode(), "".join(lines_new).encode()


@dataclass
class Report:
    """What the kill runs found (JSON-ready through `as_dict`)."""

    mode: str
    runs: int = 0
    megabytes: float = 0.0
    landed: Counter = field(default_factory=Counter)  # step the kill landed in -> runs
    outcome: Counter = field(default_factory=Counter)  # "old" / "new" -> runs
    temps_seen: int = 0  # hidden Demi temp files present right after a kill (cleaned later)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    calibration: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "runs": self.runs,
            "megabytes": self.megabytes,
            "landed": dict(sorted(self.landed.items())),
            "outcome": dict(self.outcome),
            "temps_seen_after_kill": self.temps_seen,
            "failures": self.failures,
            "seconds": round(self.seconds, 1),
            "calibration_ms": self.calibration,
        }


class Harness:
    """One workspace folder, one data dir, one large file; runs children and checks the result."""

    def __init__(self, base: Path, megabytes: float = 4.0, python: str = sys.executable):
        self.base = base
        self.ws = base / "workspace"
        self.data = base / "data"
        self.ws.mkdir(parents=True, exist_ok=True)
        self.file = self.ws / "big_module.py"
        self.new_file = base / "new.txt"  # outside the workspace: only the target lives there
        self.log = base / "phases.log"
        self.python = python
        self.megabytes = megabytes
        self.old, self.new = make_texts(megabytes)
        self.new_file.write_bytes(self.new)

    # -- state ---------------------------------------------------------------------------------

    def reset(self, mode: str) -> None:
        """OLD on disk, no backups; for an undo run, NEW applied by this process."""
        self.file.write_bytes(self.old)
        os.chmod(self.file, 0o640)
        for bak, _ in backups(self.data, self.file):
            bak.unlink()
            bak.with_suffix(".json").unlink()
        if mode == "undo":
            apply_edit(Edit(self.file, self.old.decode(), self.new.decode(), sha256(self.old)), self.data, self.ws)
        self.log.unlink(missing_ok=True)

    def _spawn(self, mode: str) -> subprocess.Popen:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.Popen(
            [
                self.python,
                "-c",
                CHILD,
                mode,
                str(self.file),
                str(self.new_file),
                str(self.data),
                str(self.ws),
                str(self.log),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def _phases(self) -> list[tuple[float, str]]:
        out = []
        for line in self.log.read_text().splitlines():
            t, _, name = line.partition(" ")
            out.append((float(t), name))
        return out

    # -- calibration: where each step starts, relative to "start" ------------------------------

    def calibrate(self, mode: str, rounds: int = 3) -> dict[str, float]:
        """Median offset (seconds after "start") at which each step begins, from runs not killed."""
        seen: dict[str, list[float]] = {}
        for _ in range(rounds):
            self.reset(mode)
            proc = self._spawn(mode)
            _, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"calibration child failed: {err.strip()}")
            phases = self._phases()
            t0 = next(t for t, n in phases if n == "start")
            for t, n in phases:
                seen.setdefault(n, []).append(t - t0)
            expect = self.new if mode == "apply" else self.old
            if self.file.read_bytes() != expect:
                raise RuntimeError("calibration run did not write the expected content")
        self.reset("apply")
        return {n: sorted(v)[len(v) // 2] for n, v in seen.items()}

    # -- one kill ------------------------------------------------------------------------------

    def kill_run(self, mode: str, step: str, delay: float, report: Report) -> None:
        """Kill the child `delay` seconds after it announces `step`."""
        self.reset(mode)
        proc = self._spawn(mode)
        try:
            while True:
                line = proc.stdout.readline()
                if not line:
                    proc.wait(timeout=60)
                    raise RuntimeError(f"child ended before {step}: {proc.stderr.read().strip()}")
                if line.strip() == step:
                    break
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)  # reaped: its PID is gone, so its temp files count as stale
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        report.runs += 1
        phases = self._phases()
        last = phases[-1][1] if phases else "none"
        report.landed["after exit" if last == "exit" else last] += 1
        self._check(mode, report, last)

    def _check(self, mode: str, report: Report, landed: str) -> None:
        where = f"run {report.runs} ({mode}, killed in {landed})"
        data = self.file.read_bytes()
        state = "new" if data == self.new else "old" if data == self.old else "mixed"
        report.outcome[state] += 1
        if state == "mixed":
            report.failures.append(f"{where}: the file is neither the old nor the new content ({len(data)} bytes)")
            return
        for entry in self.ws.iterdir():
            if entry == self.file:
                continue
            if entry.name.startswith(f".{self.file.name}{TMP_MARK}"):
                report.temps_seen += 1
            else:
                report.failures.append(f"{where}: stray file {entry.name} in the workspace")
        # The parent's undo must agree with what is on disk.
        try:
            undo(self.file, self.data, root=self.ws)
            undone = True
        except NoBackupError:
            undone = False
        if state == "new" and not undone:
            report.failures.append(f"{where}: the file has the new content but undo found no backup")
        if state == "old" and undone:
            report.failures.append(f"{where}: the file has the old content but undo still restored a backup")
        if self.file.read_bytes() != self.old:
            report.failures.append(f"{where}: after undo the file is not the old content")
        leftovers = [p.name for p in self.ws.iterdir() if p != self.file]
        folder = backup_dir(self.data, self.file)
        leftovers += [p.name for p in folder.iterdir() if TMP_MARK in p.name] if folder.is_dir() else []
        if leftovers:
            report.failures.append(f"{where}: left after undo: {leftovers}")
        if backups(self.data, self.file):
            report.failures.append(f"{where}: a backup record is left after undo")
        if os.stat(self.file).st_mode & 0o777 != 0o640:
            report.failures.append(f"{where}: the file's mode changed")


def run_kills(base: Path, runs: int, mode: str = "apply", megabytes: float = 4.0, seed: int = 1) -> Report:
    """`runs` kill runs aimed at each step in turn (a random moment inside it, as long as it took
    in calibration), so short steps such as the rename get their share of kills."""
    started = time.monotonic()
    h = Harness(base, megabytes)
    cal = h.calibrate(mode)
    steps = sorted(cal.items(), key=lambda kv: kv[1])
    windows = []  # (step, start, end) relative to "start"
    for (name, t), nxt in zip(steps, steps[1:]):
        if name not in ("start", "done", "exit"):
            windows.append((name, t, max(nxt[1], t + 0.0002)))
    rng = random.Random(seed)
    report = Report(mode, megabytes=megabytes, calibration={n: round(t * 1000, 2) for n, t in cal.items()})
    for i in range(runs):
        name, lo, hi = windows[i % len(windows)]
        h.kill_run(mode, name, rng.uniform(0, hi - lo), report)
    report.seconds = time.monotonic() - started
    return report
