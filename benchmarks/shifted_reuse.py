"""Shifted KV reuse against exact reuse, engine to engine: does moving the suffix's cached rows
change what the model writes?

For held-out lines of demi-tiny's manifest, a user types the first M characters of the line one at
a time with a FIM request after each (as an editor does), through one in-process engine, once with
exact prefix reuse (`cache_shift=0`) and once with shifted reuse (`cache_shift=N`). The answers
after the last character are compared with each other and with the rest of the line. The model
should be prefix-first (PSM): make one from demi-tiny, which was trained on both orders, with
`--make-psm DIR`.

    .venv/bin/python benchmarks/shifted_reuse.py --make-psm .demi-build/demi-tiny-psm
    .venv/bin/python benchmarks/shifted_reuse.py --model .demi-build/demi-tiny-psm --lines 300 --typed 4
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lsp_bench import heldout_files, line_starts, typed_column  # noqa: E402


def make_psm(out: Path) -> Path:
    """demi-tiny with its metadata switched to prefix-first."""
    from demi.model.registry import resolve_model_dir

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(resolve_model_dir("demi-tiny", download=False), out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["fim_layout"] = "psm"
    cfg_path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return out


def run(model: str, lines: int, typed: int, shift: int, context_tokens: int, max_tokens: int, seed: int) -> dict:
    from demi.assistant.context import fim_context
    from demi.assistant.document import Document
    from demi.assistant.engines import open_engine
    from demi.assistant.syntax import parse
    from demi.model.registry import resolve_model_dir

    engine = open_engine(model, quant="auto", cache_reuse=0)
    sources = heldout_files(resolve_model_dir("demi-tiny", download=False))
    rng = random.Random(seed)
    hits = {0: 0, shift: 0}
    seconds = {0: 0.0, shift: 0.0}
    agree = cases = shifted_cases = 0
    differ: list[dict] = []
    for f, source in enumerate(sources):
        text = source.read_text(encoding="utf-8")
        rows = text.split("\n")
        picks = line_starts(text, rng, lines // len(sources) + (f < lines % len(sources)), skip=20, code_only=True)
        for line, start in picks:
            full = rows[line]
            col = typed_column(full, start, typed)
            target = full[col:].rstrip()
            answers: dict[int, str] = {}
            for mode in (0, shift):
                engine.local.prefix_cache.clear()
                moved = 0
                for c in range(start, col + 1):
                    doc = Document.from_text("\n".join(rows[:line] + [full[:c]] + rows[line + 1 :]), source.name)
                    offset = sum(len(x) + 1 for x in rows[:line]) + c
                    ctx = fim_context(doc, offset, engine.count_tokens, context_tokens, parse(doc), None)
                    began = time.perf_counter()
                    out = engine.infill(ctx, max_new_tokens=max_tokens, stop=["\n"], cache_shift=mode)
                    took = time.perf_counter() - began
                    moved += int(out.extra.get("shifted_tokens", 0) or 0)
                answers[mode] = out.text.split("\n")[0].rstrip()
                hits[mode] += answers[mode] == target
                seconds[mode] += took
                if mode:
                    shifted_cases += moved > 0
            cases += 1
            agree += answers[0] == answers[shift]
            if answers[0] != answers[shift]:
                differ.append({"file": source.name, "line": line + 1, "exact": answers[0], "shifted": answers[shift]})
    engine.close()
    return {
        "model": model,
        "lines": cases,
        "typed_before_request": typed,
        "cache_reuse": shift,
        "exact_match_exact_reuse": hits[0] / max(1, cases),
        "exact_match_shifted_reuse": hits[shift] / max(1, cases),
        "same_answer": agree / max(1, cases),
        "cases_with_shifted_rows": shifted_cases,
        "last_request_ms_exact": round(1000 * seconds[0] / max(1, cases), 1),
        "last_request_ms_shifted": round(1000 * seconds[shift] / max(1, cases), 1),
        "differences": differ,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=".demi-build/demi-tiny-psm")
    ap.add_argument("--make-psm", type=Path, default=None, help="write demi-tiny with PSM metadata here and stop")
    ap.add_argument("--lines", type=int, default=300)
    ap.add_argument("--typed", type=int, default=4, help="characters typed one at a time before the measured request")
    ap.add_argument("--cache-reuse", type=int, default=16)
    ap.add_argument("--context-tokens", type=int, default=1024, help="demi-lsp's default contextTokens")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.make_psm:
        print(make_psm(args.make_psm))
        return 0
    res = run(args.model, args.lines, args.typed, args.cache_reuse, args.context_tokens, args.max_tokens, args.seed)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
