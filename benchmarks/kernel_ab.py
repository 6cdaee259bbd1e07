"""Kernel A/B on one loaded model, side by side in one process: a prefill under each prefill
kernel of the plan's candidates, and a decode step through the one-call native stack
(model/decode_stack.py) against the layer-by-layer path. Runs take turns rep by rep (best and
median of each), so load from other processes falls on all of them alike.

    .venv/bin/python benchmarks/kernel_ab.py --model demi-tiny --quant int8 --prompt 909
    .venv/bin/python benchmarks/kernel_ab.py --model .demi-build/qwen-standin --quant int4 --prompt 1000
    DEMI_KERNEL=avx2 .venv/bin/python benchmarks/kernel_ab.py ...     # the AVX2 path on a bigger CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def use_prefill(model, plan, prefill: str) -> None:
    from dataclasses import replace

    chosen = replace(plan, prefill=prefill, float_prefill_rows=0)
    for module in model.modules():
        if hasattr(module, "use_plan"):
            module.use_plan(chosen)
        elif hasattr(module, "int_mm") and hasattr(module, "prefill_lib"):  # Int4Linear: set at build
            module.int_mm = prefill == "int8mm"
            module.prefill_lib = None


def turns(fns: dict, reps: int) -> dict[str, dict[str, float]]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {n: {"best_ms": min(v) * 1e3, "median_ms": statistics.median(v) * 1e3} for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demi-tiny")
    ap.add_argument("--quant", default="int8", choices=["int8", "int4"])
    ap.add_argument("--prompt", type=int, default=909, help="prefill length (tokens)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per timed run")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--prefills", default="fp32,int8mm", help="prefill kernels to compare")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from demi.model.decoder import KVCache
    from demi.model.engine import LocalModel

    lm = LocalModel.load(args.model, quant=args.quant)
    model, plan = lm.model, lm.model.kernel_plan
    ids = torch.randint(
        10, model.config.vocab_size - 10, (1, args.prompt + args.steps), generator=torch.Generator().manual_seed(0)
    )
    cache = KVCache(model.config, args.prompt + args.steps + 8, 1, model.dtype, model.device)

    def prefill_with(kernel: str):
        def run() -> None:
            use_prefill(model, plan, kernel)
            with torch.inference_mode():
                model(ids[:, : args.prompt], 0, cache, last_only=True)

        return run

    prefill = turns({k: prefill_with(k) for k in args.prefills.split(",")}, args.reps)
    use_prefill(model, plan, plan.prefill)

    def decode_with(stack_on: bool):
        stack = model.decode_stack

        def run() -> None:
            model.decode_stack = stack if stack_on else None
            with torch.inference_mode():
                for i in range(args.steps):
                    p = args.prompt + i
                    model(ids[:, p : p + 1], p, cache)
            model.decode_stack = stack

        return run

    decode = {}
    if model.decode_stack is not None:
        with torch.inference_mode():
            model(ids[:, : args.prompt], 0, cache, last_only=True)
        raw = turns({"one call": decode_with(True), "layer by layer": decode_with(False)}, args.reps)
        decode = {k: {m: v / args.steps for m, v in t.items()} for k, t in raw.items()}
    report = {
        "model": args.model,
        "quant": args.quant,
        "plan": {"decode": plan.decode, "prefill": plan.prefill},
        "prompt_tokens": args.prompt,
        "prefill_ms": prefill,
        "decode_step_ms": decode,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    threads = torch.get_num_threads()
    print(f"{args.model} {args.quant}, plan decode {plan.decode}, prefill {plan.prefill}, threads {threads}")
    for name, t in prefill.items():
        print(f"  prefill {args.prompt} tokens, {name:8s}: best {t['best_ms']:.1f} ms, median {t['median_ms']:.1f} ms")
    for name, t in decode.items():
        print(f"  decode step, {name:14s}: best {t['best_ms']:.3f} ms, median {t['median_ms']:.3f} ms")


if __name__ == "__main__":
    main()
