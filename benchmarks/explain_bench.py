"""Explain benchmark: is the model's explanation consistent with the static facts?

    .venv/bin/python benchmarks/explain_bench.py [--model demi-tiny] [--n 40]

On the examples/ functions and `--n` functions of the standard-library files demi-tiny never
trained on (a fixed draw of those that take at least one parameter besides self), `demi explain`
runs in two styles: `prose` (the model's own explanation, the explain prompt with the facts) and
`summary` (the small-model style: the one sentence the model was trained to write, then the
parameters, return and raises written by the facts). `explain_check.check` reads the section: a
parameter the text invents or never names, a name in backticks the code does not have, a return
value not described. Consistent means none of these. For `summary`, the model's sentence alone is
checked too (the facts' sentence cannot invent a name or leave one out). Writes
benchmarks/explain-<model>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout_functions import EXAMPLES, ROOT, Function, functions, has_docstring, heldout_files, sample  # noqa: E402


def takes_something(fn: Function) -> bool:
    params = [p for p in fn.symbol.signature.split("(", 1)[-1].rsplit(")", 1)[0].split(",") if p.strip()]
    return any(p.strip().split(":")[0].split("=")[0].strip() not in ("self", "cls") for p in params)


def run(engine: Any, chosen: list[Function], styles: list[str]) -> list[dict]:
    from demi.assistant.explain import explain
    from demi.assistant.explain_check import check

    rows = []
    for fn in chosen:
        for style in styles:
            started = time.monotonic()
            res = explain(engine, fn.doc, fn.symbol.qualname, style=style)
            c = res.consistency
            alone = check(res.model_text, res.facts, fn.code) if style == "summary" else c
            rows.append(
                {
                    "function": fn.label,
                    "heldout": fn.heldout,
                    "docstring": has_docstring(fn.code),
                    "style": res.style,
                    "consistent": bool(c and c.consistent),
                    "invented": (c.invented + c.unknown) if c else [],
                    "missing": c.missing if c else [],
                    "return_missing": bool(c and c.return_missing),
                    "model_invents": bool(alone and (alone.invented or alone.unknown)),
                    "model_alone_consistent": bool(alone and alone.consistent),
                    "model_text": res.model_text[:400],
                    "seconds": round(time.monotonic() - started, 3),
                }
            )
            r = rows[-1]
            mark = "ok " if r["consistent"] else "NO "
            print(f"{mark} {style:8s} {fn.label[:58]:58s} {r['model_text'][:60]!r}", flush=True)
    return rows


def table(rows: list[dict], styles: list[str]) -> str:
    out = [
        "| style | functions | consistent | the model's words alone consistent | the model invents a name "
        "| leaves out a parameter | return not described |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for style in styles:
        mine = [r for r in rows if r["style"] == style]
        n = len(mine)

        def share(key: str, rows: list[dict] = mine, n: int = n) -> str:
            k = sum(1 for r in rows if (r[key] if not isinstance(r[key], list) else bool(r[key])))
            return f"{k}/{n} ({100 * k / max(n, 1):.0f}%)"

        out.append(
            f"| {style} | {n} | {share('consistent')} | {share('model_alone_consistent')} | {share('model_invents')} | "
            f"{share('missing')} | "
            f"{share('return_missing')} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demi-tiny")
    ap.add_argument("--n", type=int, default=40, help="held-out functions (the examples' come on top)")
    ap.add_argument("--styles", default="prose,summary")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from demi.assistant.engines import open_engine

    engine = open_engine(args.model)
    examples = [f for f in functions(sorted(EXAMPLES.glob("*.py")), heldout=False) if takes_something(f)]
    held = [f for f in functions(heldout_files(), heldout=True) if takes_something(f)]
    chosen = examples + sample(held, args.n)
    styles = args.styles.split(",")
    started = time.monotonic()
    rows = run(engine, chosen, styles)
    md = table(rows, styles)
    print()
    print(md)
    out = args.out or ROOT / "benchmarks" / f"explain-{Path(args.model).name}.json"
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "n": len(chosen),
                "seconds": round(time.monotonic() - started, 1),
                "table": md,
                "rows": rows,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
