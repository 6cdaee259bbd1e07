"""One invoked completion's two phases on a model, by dtype/quantization and thread count.

    .venv/bin/python benchmarks/engine_grid.py [--model demi-tiny] [--prompt 1536] [--decode 16]

Prefill of `--prompt` tokens of argparse.py in 512-token chunks (as the engine does), then
`--decode` single-token steps; median of 5 rounds after a warm-up. This is what decides the
editor's invoked-completion latency (README, demi-lsp) and the model card's speed rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import demi  # noqa: F401  (first: it sets the OpenMP wait policy Demi runs with, before torch loads)
from demi.model.decoder import KVCache
from demi.model.engine import LocalModel

MODES = {"fp32": {"dtype": "float32"}, "bf16": {"dtype": "bfloat16"}, "int8": {"quant": "int8"}}


def measure(model: LocalModel, ids: list[int], prompt: int, decode: int, rounds: int = 6) -> tuple[float, float]:
    """(prefill seconds, seconds per decode step), medians over rounds after the first."""
    net = model.model
    pre, dec = [], []
    with torch.inference_mode():
        for r in range(rounds):
            chunk = torch.tensor([ids[1000 * r : 1000 * r + prompt]])
            cache = KVCache(net.config, prompt + decode + 1, dtype=net.dtype)
            t0 = time.perf_counter()
            for lo in range(0, prompt, 512):
                net(chunk[:, lo : lo + 512], start=lo, cache=cache, last_only=True)
            t1 = time.perf_counter()
            for i in range(decode):
                net(chunk[:, -1:], start=prompt + i, cache=cache)
            if r:
                pre.append(t1 - t0)
                dec.append((time.perf_counter() - t1) / decode)
    return statistics.median(pre), statistics.median(dec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demi-tiny")
    ap.add_argument("--prompt", type=int, default=1536)
    ap.add_argument("--decode", type=int, default=16)
    args = ap.parse_args()
    text = open(argparse.__file__, encoding="utf-8").read()
    for threads in (1, 2):
        for label, options in MODES.items():
            model = LocalModel.load(args.model, context=args.prompt + args.decode + 8, **options)
            torch.set_num_threads(threads)
            ids = model.tokenizer.encode(text)
            pre, dec = measure(model, ids, args.prompt, args.decode)
            print(
                f"{threads} thread(s) {label}: prefill {args.prompt} tokens {pre * 1e3:.0f} ms, "
                f"decode {dec * 1e3:.2f} ms/token, "
                f"prefill + {args.decode} tokens {(pre + args.decode * dec) * 1e3:.0f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
