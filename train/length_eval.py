"""Held-out perplexity of trained models at several context lengths: how each does at its training
length and past it (the length extrapolation xPos is for, model/xpos.py).

Each model is scored on the run's held-out files (RUN/corpus/heldout.jsonl.gz) by the engine's own
`LocalModel.perplexity`, the numbers `demi eval perplexity --context N` prints: a file longer than
the context is scored in windows of N tokens that overlap by half, so at N = 2L nearly every token
is predicted from positions between L and 2L, past a model trained at length L. The same tokens are
scored at every length, so the numbers compare directly.

    python -m demi.train.length_eval --run RUN MODEL_DIR [MODEL_DIR ...] --contexts 128,256 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from demi.model.errors import DemiUserError
from demi.train.pipeline import heldout_documents


def heldout_perplexity(model_dirs: list[Path], texts: list[str], contexts: list[int]) -> list[dict[str, Any]]:
    """One row per model and context: tokens scored, mean NLL and perplexity (fp32, unquantized)."""
    from demi.model.engine import LocalModel

    rows = []
    for model_dir in model_dirs:
        for context in contexts:
            lm = LocalModel.load(str(model_dir), dtype="float32", context=context, quant="none")
            if lm.context != context:
                raise DemiUserError(f"{model_dir}: its config allows {lm.context} positions, not {context}")
            res = lm.perplexity(texts)
            rows.append({"model": str(model_dir), "context": context, **res})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demi.train.length_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL_DIR")
    p.add_argument("--run", type=Path, required=True, help="the training run whose held-out files are scored")
    p.add_argument("--contexts", default="128,256", help="comma-separated context lengths (tokens)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    try:
        contexts = [int(c) for c in args.contexts.split(",")]
        texts = [d.text for d in heldout_documents(args.run)]
        rows = heldout_perplexity(args.models, texts, contexts)
    except ValueError:
        print(f"demi: --contexts takes numbers, got {args.contexts!r}", file=sys.stderr)
        return 2
    except DemiUserError as exc:
        print(f"demi: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"run": str(args.run), "files": len(texts), "rows": rows}))
    else:
        for r in rows:
            print(f"{r['model']}  context {r['context']}: {r['tokens']} tokens, perplexity {r['perplexity']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
