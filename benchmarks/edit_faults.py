"""Kill `demi`'s file writer with SIGKILL at random points of an apply or an undo, many times.

    .venv/bin/python benchmarks/edit_faults.py [--runs 500] [--mode apply|undo|both] [--mb 8] [--json out.json]

Each run starts a fresh process that applies (or undoes) a multi-MB edit through the real
`demi.assistant.edits` and is killed at a moment aimed at one step of the write (steps timed in
calibration runs); the file must then be exactly the old or the new bytes, and the next undo
must agree with it and leave no temp file. The procedure is in tests/edit_faults.py (the normal
test suite runs 50 + 20 of these). Prints a JSON report: where the kills landed, the outcomes,
and any failure; exits 1 on a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edit_faults import run_kills  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500, help="kill runs per mode")
    ap.add_argument("--mode", choices=["apply", "undo", "both"], default="both")
    ap.add_argument("--mb", type=float, default=8.0, help="size of the edited file in MB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args()
    reports = []
    for mode in ["apply", "undo"] if args.mode == "both" else [args.mode]:
        with tempfile.TemporaryDirectory(prefix="demi-edit-faults-") as d:
            report = run_kills(Path(d), args.runs, mode, args.mb, args.seed)
        reports.append(report.as_dict())
        print(json.dumps(report.as_dict()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["failures"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
