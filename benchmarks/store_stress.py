"""The session database under two writer processes for a minute, and under SIGKILL mid-write.

    .venv/bin/python benchmarks/store_stress.py [--seconds 60] [--writers 2] [--kill-rounds 50] [--json out.json]

Writers are separate processes (the chat UI and the language server are), each appending
messages through the real `Store` and logging what it committed; the report compares the
messages written with those read back, checks SQLite's integrity and the full-text index, and
for the kill rounds that every message a killed writer had committed is still there. The
procedure is in tests/store_stress.py (tests/assistant/test_store.py runs 6 s and 6 rounds of it).
Exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from store_stress import concurrent, kill_rounds  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the writers run side by side")
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--kill-rounds", type=int, default=50, help="rounds of SIGKILL during writes (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    report = {}
    if args.seconds > 0:
        with tempfile.TemporaryDirectory(prefix="demi-store-") as d:
            report["concurrent"] = concurrent(Path(d), args.seconds, args.writers).as_dict()
        print(json.dumps({"concurrent": report["concurrent"]}), flush=True)
    if args.kill_rounds > 0:
        with tempfile.TemporaryDirectory(prefix="demi-store-") as d:
            result, delays = kill_rounds(Path(d), args.kill_rounds, args.seed, args.writers)
        report["kills"] = {
            **result.as_dict(),
            "rounds": args.kill_rounds,
            "kill_after_s": [round(x, 3) for x in delays],
        }
        print(json.dumps({"kills": report["kills"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["problems"] for r in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
