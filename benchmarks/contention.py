"""Decode speed when another process takes a core (an editor, a build), against a quiet machine.

    .venv/bin/python benchmarks/contention.py [--model qwen2.5-coder-0.5b] [--quant int8] [--runs 3] \
        [--baseline OMP_WAIT_POLICY=PASSIVE --baseline DEMI_ADAPT_THREADS=0]

Runs `demi bench` (128-token prompt, 32 new tokens) three times, alternating: quiet, with one
CPU-bound competitor process pinned to the last core, quiet again; prints decode tok/s and the
loss under load. Demi's OpenMP threads spin briefly between the hundreds of short parallel regions
a token needs (OMP_WAIT_POLICY / GOMP_SPINCOUNT, set in the package root), and inference drops a
thread while other processes take a core (model/threads.py); without that, a thread sharing the
competitor's core stalls every parallel region. Pass --env NAME=VALUE to change Demi's settings;
--baseline NAME=VALUE runs a second configuration side by side (busy runs in turns) and prints
the ratio of the two under load (the default baseline: threads that sleep at once and never adapt).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

BUSY = "import os\nos.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\nwhile True: pass\n"


def bench(args: argparse.Namespace, env: dict) -> float:
    cmd = [
        sys.executable,
        "-m",
        "demi",
        "bench",
        "--model",
        args.model,
        "--quant",
        args.quant,
        "--runs",
        str(args.runs),
        "--json",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["decode_tok_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for Demi's process")
    ap.add_argument(
        "--baseline",
        action="append",
        default=None,
        help="NAME=VALUE of the configuration compared under load (default: OMP_WAIT_POLICY=PASSIVE and "
        "DEMI_ADAPT_THREADS=0); 'none' for no baseline",
    )
    args = ap.parse_args()
    baseline = args.baseline or ["OMP_WAIT_POLICY=PASSIVE", "DEMI_ADAPT_THREADS=0"]
    env = dict(os.environ, **dict(e.split("=", 1) for e in args.env))
    other = None if baseline == ["none"] else dict(os.environ, **dict(e.split("=", 1) for e in baseline))
    quiet = bench(args, env)
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        loaded = bench(args, env)
        loaded_other = bench(args, other) if other is not None else None
    finally:
        busy.kill()
        busy.wait()
    quiet2 = bench(args, env)
    base = (quiet + quiet2) / 2
    report = {
        "quiet_tok_s": [round(quiet, 2), round(quiet2, 2)],
        "one_core_busy_tok_s": round(loaded, 2),
        "loss": round(1 - loaded / base, 3),
        "env": args.env,
    }
    if loaded_other is not None:
        report |= {
            "baseline": baseline,
            "baseline_one_core_busy_tok_s": round(loaded_other, 2),
            "busy_vs_baseline": round(loaded / loaded_other, 3),
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
