"""A short soak of demi-lsp (benchmarks/lsp_soak.py end to end): 600 inline completions over four
documents with the tiny random model, every third one cancelled, through a real client.

Every request must be answered, the server must live and exit cleanly, and its resident memory
between request 300 and request 600 may grow by at most 15% (the full run, 5,000 requests
against the 500th, holds 10%; a short run has less time to level off). The full run:

    .venv/bin/python benchmarks/lsp_soak.py --model demi-tiny --requests 5000 --json soak.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lsp_support import server_env, tiny_model_dir

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "lsp_soak.py"


def test_short_soak(tmp_path):
    model = tiny_model_dir(tmp_path / "tiny", 1024)
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--model",
            str(model),
            "--context",
            "1024",
            "--requests",
            "600",
            "--warmup",
            "300",
            "--max-growth",
            "15",
            "--timeout",
            "120",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=server_env(tmp_path),
    )
    assert out.exists(), proc.stderr[-3000:]
    r = json.loads(out.read_text(encoding="utf-8"))
    print(
        f"short soak: {r['requests']} requests, {r['cancelled']} cancelled, RSS {r['rss_after_warmup_kb']} -> "
        f"{r['rss_end_kb']} KiB ({r['rss_growth_pct']:+.2f}%), {r['wall_s']} s"
    )
    assert r["requests"] == 600 and r["answered"] == 600 and r["unanswered"] == 0
    assert r["cancelled"] == 200
    assert sum(v for k, v in r["answers"].items() if k != "result_with_text") == 600
    assert r["answers"]["result"] > 0 and r["answered_cancelled"] > 0  # both kinds of answer occur
    assert r["server_alive_at_end"] and r["server_exit_code"] == 0, r["server_stderr_tail"]
    assert r["rss_growth_pct"] <= 15.0, r["rss_samples"]
    assert r["passed"] and proc.returncode == 0, proc.stderr[-3000:]
