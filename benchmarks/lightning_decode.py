"""Decode cost against context: lightning layers stay flat, softmax layers grow.

Three random-weight stacks of one shape in MiniMax-Text-01's family (`minimax`: post-norm blocks,
4 experts top-2), saved and loaded as Demi loads any checkpoint (fused q/k/v, the native decode
attention where this CPU has it): lightning layers only, softmax layers only, and MiniMax-Text-01's
mix (7 lightning to 1 softmax). For each context length the prompt is really prefilled (one pass,
as a prompt is); then, in `--rounds` turns over every stack and context (so a burst of load from
another process falls on all of them alike), `--steps` one-token decode steps are timed one by one.
A figure is the best turn's median step. A lightning step updates a [head_dim, head_dim] state per
head whatever came before; a softmax step attends over every cached key.

    .venv/bin/python benchmarks/lightning_decode.py --threads 1
    .venv/bin/python benchmarks/lightning_decode.py --contexts 512 2048 8192 --steps 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demi.model.config import LIGHTNING, SOFTMAX, ModelConfig  # noqa: E402
from demi.model.decoder import KVCache, Transformer  # noqa: E402
from demi.model.generate import decode_one_token, prefill  # noqa: E402
from demi.model.loading import load_model, save_model  # noqa: E402
from demi.model.scaffold import random_model  # noqa: E402

LAYERS = 8
STACKS = {
    "lightning": [LIGHTNING] * LAYERS,
    "softmax": [SOFTMAX] * LAYERS,
    "hybrid-7:1": [LIGHTNING] * 7 + [SOFTMAX],
}


def config(layer_types: list[str], hidden: int) -> ModelConfig:
    """A small MiniMax-family shape: `hidden` wide, heads of 64, 2 KV heads, 4 experts top-2."""
    return ModelConfig(
        model_type="minimax",
        vocab_size=4096,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=LAYERS,
        num_attention_heads=hidden // 64,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=16384,
        rms_norm_eps=1e-5,
        rope_theta=1e7,
        num_experts=4,
        num_experts_per_tok=2,
        layer_types=layer_types,
        postnorm=True,
    )


def build(cfg: ModelConfig, out: Path) -> Transformer:
    """The stack as the engine runs it: random weights saved, then loaded by `load_model`."""
    save_model(random_model(cfg, seed=0), out)
    return load_model(out, dtype="float32")


class Session:
    """One stack after a `context`-token prompt, decoding on from there."""

    @torch.inference_mode()
    def __init__(self, model: Transformer, context: int, room: int):
        self.model, self.pos = model, context
        gen = torch.Generator().manual_seed(context)
        ids = torch.randint(3, model.config.vocab_size, (1, context), generator=gen)
        self.cache = KVCache(model.config, context + room)
        self.logits = prefill(model, ids, 0, self.cache)

    @torch.inference_mode()
    def median_step(self, steps: int) -> float:
        """The median seconds of the next `steps` greedy decode steps."""
        times = []
        for _ in range(steps):
            token = self.logits.argmax(-1).view(1, 1)
            t0 = time.perf_counter()
            self.logits = decode_one_token(self.model, token, self.pos, self.cache)
            times.append(time.perf_counter() - t0)
            self.pos += 1
        return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    ap.add_argument("--steps", type=int, default=32, help="decode steps timed per context and turn")
    ap.add_argument("--rounds", type=int, default=3, help="turns over every stack and context; the best counts")
    ap.add_argument("--hidden", type=int, default=256, help="model width (heads of 64)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sessions: dict[tuple[str, int], Session] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, types in STACKS.items():
            model = build(config(types, args.hidden), Path(tmp) / name)
            Session(model, 64, 9).median_step(8)  # warm-up: kernels, allocator
            for ctx in args.contexts:
                t0 = time.perf_counter()
                sessions[name, ctx] = Session(model, ctx, args.rounds * args.steps + 1)
                print(f"{name:>11}  context {ctx:>6}  prefilled in {time.perf_counter() - t0:.1f} s", flush=True)
    best: dict[tuple[str, int], float] = {}
    for turn in range(args.rounds):
        for key, session in sessions.items():
            ms = 1e3 * session.median_step(args.steps)
            best[key] = min(ms, best.get(key, ms))
        print(f"turn {turn + 1} of {args.rounds} done", flush=True)
    results = {n: {str(c): round(best[n, c], 3) for c in args.contexts} for n in STACKS}
    first, last = str(args.contexts[0]), str(args.contexts[-1])
    threads = torch.get_num_threads()
    print(f"\nms per decode step (best of {args.rounds} turns' medians of {args.steps}), torch threads {threads}")
    print(f"{'context':>8}" + "".join(f"{n:>13}" for n in STACKS))
    for ctx in args.contexts:
        print(f"{ctx:>8}" + "".join(f"{results[n][str(ctx)]:>13.3f}" for n in STACKS))
    growth = {n: round(results[n][last] / results[n][first], 2) for n in STACKS}
    print(f"{last} / {first}:" + "".join(f"{growth[n]:>12.2f}x" for n in STACKS))
    if args.json:
        report = {"contexts": args.contexts, "steps": args.steps, "rounds": args.rounds, "hidden": args.hidden}
        report |= {"layers": LAYERS, "cpu": platform.processor() or platform.machine()}
        report |= {"threads": threads, "ms_per_token": results, "growth": growth}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
