"""`demi generate` and `demi eval perplexity`: the engine's raw abilities from the command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from demi.cli.main import UsageError, emit_json
from demi.cli.progress_display import showing_progress


def register(sub, common) -> argparse._SubParsersAction:
    """`demi generate`, `demi eval perplexity|humaneval` and `demi bench`; returns the `eval` command's
    sub-command table so other modules can add kinds to it (commands_train: fim, passk)."""
    g = sub.add_parser(
        "generate",
        parents=[common()],
        help="raw generation from a prompt",
        description="Generate from a prompt, encoded as the model's tokenizer does "
        "by default; streams the text unless --json.",
    )
    g.add_argument("--prompt", "-p", help="the prompt text ('-' reads standard input)")
    g.add_argument("--max-tokens", "-n", type=int, default=128)
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 (default) is greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    g.add_argument(
        "--speculate",
        type=int,
        default=None,
        metavar="K",
        help="draft tokens per step of speculative decoding from the prompt (default: the config's "
        "`speculate`, 8; 0 = off; greedy output is unchanged)",
    )
    g.add_argument(
        "--no-special-tokens",
        action="store_true",
        help="do not add the tokenizer's special tokens (e.g. BOS) to the prompt",
    )
    g.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(
        dest="eval_command", metavar="KIND", required=True
    )
    ppl = ev.add_parser(
        "perplexity",
        parents=[common()],
        help="mean NLL per token of text files",
        description="Mean negative log-likelihood per token (natural log) over the "
        "files; each file tokenized as the tokenizer does by default and "
        "its first token not scored. The checkpoint runs at full precision unless --quant is given.",
    )
    ppl.add_argument("files", nargs="+", metavar="FILE")
    eval_quant_help(ppl)
    ppl.set_defaults(func=cmd_perplexity)
    from demi.cli import commands_humaneval

    commands_humaneval.register(ev, common)  # `demi eval humaneval`

    b = sub.add_parser(
        "bench",
        parents=[common()],
        help="prefill/decode speed, latency, memory",
        description="Measure prefill and decode speed, per-token latency percentiles and "
        "peak memory; a preset name (e.g. qwen2.5-coder-0.5b) is measured with "
        "random weights in its real shape.",
    )
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument(
        "--compare",
        choices=["transformers"],
        default=None,
        help="also time transformers' generate (fp32 and bf16) on the same checkpoint",
    )
    b.add_argument(
        "--plan",
        action="store_true",
        help="measure and print the kernel plan: every candidate kernel's time per phase at this "
        "model's shapes, and the ones chosen (DEMI_KERNEL forces a family)",
    )
    b.add_argument(
        "--engine",
        choices=["demi", "onnxruntime"],
        default="demi",
        help="onnxruntime: also export the model to ONNX and time onnxruntime's fp32 and int8 graphs beside Demi",
    )
    b.set_defaults(func=cmd_bench)
    return ev


def _engine(args: argparse.Namespace):
    """The in-process engine, with flags over `DEMI_*` variables over the config file (its
    `speculate` the `--speculate` flag's, else the config's)."""
    from demi.assistant.config import load_config
    from demi.assistant.engines import open_engine

    cfg = load_config(
        {
            "model": args.model,
            "device": args.device,
            "context": args.context,
            "dtype": None if args.dtype == "auto" else args.dtype,
            "quant": args.quant,
            "speculate": getattr(args, "speculate", None),
        }
    )
    with showing_progress(f"loading {cfg['model']}", getattr(args, "json", False)):
        return open_engine(
            cfg["model"],
            device=cfg["device"] or "cpu",
            dtype=cfg["dtype"],
            context=cfg["context"],
            quant=cfg["quant"],
            speculate=cfg["speculate"],
        )


def eval_quant_help(parser: argparse.ArgumentParser) -> None:
    """An evaluation's `--quant` defaults to none (see `eval_engine`); say so in its help."""
    for action in parser._actions:
        if action.dest == "quant":
            action.help = "weight quantization to evaluate (default: none, the checkpoint at full precision)"


def eval_engine(args: argparse.Namespace):
    """The engine an evaluation measures: the checkpoint at full precision (quant "none") unless
    `--quant` asks for one, so a score is the checkpoint's own, not its int8 copy's (the config's
    `quant` and $DEMI_QUANT are for serving, not for measuring)."""
    return _engine(argparse.Namespace(**{**vars(args), "quant": args.quant or "none"}))


def precision(engine) -> dict[str, str]:
    """What an evaluation ran at: the weights' quantization and the dtype of the rest."""
    local = getattr(engine, "local", None)
    quant = str(getattr(local, "quantization", None) or "none")
    dtype = str(getattr(getattr(local, "model", None), "dtype", "") or "").replace("torch.", "") or "unknown"
    return {"quant": quant, "dtype": dtype}


def precision_line(p: dict[str, str]) -> str:
    """`precision: float32, not quantized` or `precision: int8 weights, float32 elsewhere`."""
    if p["quant"] == "none":
        return f"precision: {p['dtype']}, not quantized"
    return f"precision: {p['quant']} weights, {p['dtype']} elsewhere"


def cmd_generate(args: argparse.Namespace) -> int:
    from demi.assistant.engines import Sampling

    prompt = args.prompt
    if prompt is None:
        raise UsageError("demi generate: --prompt TEXT is required")
    if prompt == "-":
        prompt = sys.stdin.read()
    if args.max_tokens < 0:
        raise UsageError("demi generate: --max-tokens must be >= 0")
    if args.speculate is not None and args.speculate < 0:
        raise UsageError(f"demi generate: --speculate must be >= 0 (0 turns it off), got {args.speculate}")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    engine = _engine(args)
    stream = None if args.json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    result = engine.complete(
        prompt,
        on_text=stream,
        max_new_tokens=args.max_tokens,
        sampling=sampling,
        stop=args.stop,
        time_budget=args.time_budget,
        add_special_tokens=not args.no_special_tokens,
        speculate=getattr(engine, "speculate", 0),
    )
    if args.json:
        emit_json(
            {
                "text": result.text,
                "token_ids": result.token_ids,
                "model": engine.name,
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
                "finish_reason": result.finish_reason,
                "seconds": round(result.seconds, 4),
                "quant": getattr(getattr(engine, "local", None), "quantization", "server"),
                "speculation": result.extra.get("speculation"),
                "kernels": _kernels(engine),
            }
        )
    else:
        sys.stdout.write("\n")
    return 0


def _kernels(engine: Any) -> dict[str, Any] | None:
    """The quantized model's kernel plan (decode, prefill, and the prompt length below which a
    prefill takes the decode kernel), which decides the last bits of its numbers; None without one."""
    plan = getattr(getattr(getattr(engine, "local", None), "model", None), "kernel_plan", None)
    if plan is None:
        return None
    return {"decode": plan.decode, "prefill": plan.prefill, "float_prefill_rows": plan.float_prefill_rows}


def cmd_perplexity(args: argparse.Namespace) -> int:
    from demi.assistant.files import read_text_file

    texts = [read_text_file(f) for f in args.files]  # fail on a bad file before loading the model
    engine = eval_engine(args)
    started = time.monotonic()
    res = engine.perplexity(texts)
    out = {
        "tokens": res["tokens"],
        "nll": res["nll"],
        "perplexity": res["perplexity"],
        "files": len(texts),
        "model": engine.name,
        **precision(engine),
        "seconds": round(time.monotonic() - started, 4),
    }
    if args.json:
        emit_json(out)
    else:
        print(
            f"{out['tokens']} tokens  nll {out['nll']:.4f}  perplexity {out['perplexity']:.3f}  {precision_line(out)}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from demi.assistant.benchmark import run

    if args.plan:
        return _print_plan(args)
    if min(args.prompt_tokens, args.new_tokens, args.runs) < 1:
        raise UsageError("demi bench: --prompt-tokens, --new-tokens and --runs must be >= 1")
    onnx_model = None
    if args.engine == "onnxruntime":  # a model that cannot be exported is refused before anything runs
        from demi.assistant.onnx_export import check_exportable

        onnx_model = check_exportable(args.model)
    # drawn only when a stage moves: no display thread while the speed is measured
    with showing_progress(f"benchmarking {args.model or 'the default model'}", args.json, animate=False):
        r = run(
            args.model,
            args.quant or "none",
            args.prompt_tokens,
            args.new_tokens,
            args.runs,
            args.compare,
            args.device or "cpu",
            args.dtype,
        )
        if onnx_model is not None:
            _bench_onnxruntime(r, onnx_model, args)
    if args.json:
        emit_json(r)
        return 0
    print(
        f"{r['model']}  quant {r['quant']}  dtype {r['dtype']}  {r['threads']} threads  "
        f"prompt {r['prompt_tokens']}  new {r['new_tokens']}"
    )
    print(f"  prefill {r['prefill_tok_s']:8.1f} tok/s   ttft {r['ttft_ms']:7.1f} ms")
    if r["p50_ms"] is not None:
        print(
            f"  decode  {r['decode_tok_s']:8.2f} tok/s   p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms  "
            f"p99 {r['p99_ms']:.1f} ms"
        )
    else:
        print("  decode  (one new token: no decode step to time)")
    print(
        f"  memory  peak RSS {r['peak_rss_mb']:.0f} MB; {r['weight_bytes_per_token'] / 2**20:.0f} MiB read per "
        f"token; copy bandwidth {r['copy_gb_s']:.1f} GB/s -> bound {r['bandwidth_bound_tok_s']:.1f} tok/s "
        f"({100 * r['bandwidth_fraction']:.0f}% reached)"
    )
    for dtype, ref in r.get("compare", {}).get("transformers", {}).items():
        print(
            f"  transformers {dtype:8s}: prefill {ref['prefill_tok_s']:8.1f} tok/s  decode "
            f"{ref['decode_tok_s']:6.2f} tok/s"
        )
    if "decode_ratio_vs_best_transformers" in r:
        print(
            f"  decode: {r['decode_ratio_vs_best_transformers']:.2f}x the faster transformers run, "
            f"{r['decode_ratio_vs_transformers_fp32']:.2f}x transformers fp32"
        )
    if "onnxruntime" in r.get("compare", {}):
        _print_onnxruntime(r)
    return 0


def _bench_onnxruntime(r: dict, model_dir, args: argparse.Namespace) -> None:
    """onnxruntime's figures (fp32 and int8 graphs) added to Demi's bench result `r`, with the ratios."""
    from demi.assistant.onnx_export import bench_onnxruntime

    ort = bench_onnxruntime(model_dir, args.prompt_tokens, args.new_tokens, args.runs)
    r.setdefault("compare", {})["onnxruntime"] = ort
    for variant in ("fp32", "int8"):
        if ort[variant]["decode_tok_s"]:
            r[f"decode_ratio_vs_onnxruntime_{variant}"] = round(r["decode_tok_s"] / ort[variant]["decode_tok_s"], 2)


def _print_onnxruntime(r: dict) -> None:
    ort = r["compare"]["onnxruntime"]
    print(
        f"onnxruntime {ort['onnxruntime']} (CPU, opset {ort['opset']}, {ort['threads']} threads, "
        f"exported in {ort['export_s']:.1f} s), same prompt:"
    )
    for variant in ("fp32", "int8"):
        o = ort[variant]
        p50 = f"  p50 {o['p50_ms']:.1f} ms" if o["p50_ms"] is not None else ""
        print(
            f"  onnxruntime {variant}: prefill {o['prefill_tok_s']:8.1f} tok/s  ttft {o['ttft_ms']:7.1f} ms  "
            f"decode {o['decode_tok_s']:6.2f} tok/s{p50}"
        )
    if "decode_ratio_vs_onnxruntime_fp32" in r:
        print(
            f"  decode: Demi {r['decode_ratio_vs_onnxruntime_fp32']:.2f}x onnxruntime fp32, "
            f"{r.get('decode_ratio_vs_onnxruntime_int8', 0):.2f}x onnxruntime int8"
        )


def _print_plan(args: argparse.Namespace) -> int:
    from demi.assistant.benchmark import kernel_plan

    r = kernel_plan(args.model, args.quant or "int8")
    if args.json:
        emit_json(r)
        return 0
    plan, m = r["plan"], r["machine"]
    print(f"{m['cpu']}  {m['torch_threads']} threads  features: {' '.join(m['cpu_features']) or '(none)'}")
    print(
        f"native paths: {', '.join(m['native_paths']) or '(none)'}"
        + (f"  (forced: {m['kernel_forced']})" if m["kernel_forced"] else "")
    )
    for path, why in r["problems"].items():
        print(f"  {path}: {why}")
    print(f"{r['model']}  {plan['mode']}  shapes (N x K): {', '.join(f'{n}x{k}' for n, k in r['shapes'])}")
    print(f"measured in {plan['seconds']:.2f} s; cached in {r['cache']}")
    for phase in ("prefill", "decode", "check"):
        times = plan["times_ms"].get(phase, {})
        if not times:
            continue
        chosen = plan["decode" if phase == "check" else phase]
        chosen += "/1row" if phase == "decode" and plan.get("rows_at_once") == 1 else ""
        best = min(times.values())
        what = f"one layer, {r['check_rows']} rows at once: ranks decode near-ties" if phase == "check" else "one layer"
        print(f"  {phase} (ms per row, {what}):")
        for name, ms in sorted(times.items(), key=lambda kv: kv[1]):
            mark = "*" if name == chosen else " "
            print(f"   {mark} {name:12s} {ms:9.4f}  {ms / best if best else 0:5.2f}x")
    if attention := r.get("attention"):
        times, best = attention["times_ms"], min(attention["times_ms"].values(), default=0.0)
        print(f"  prompt attention (ms for {r['attention_rows']} rows, one layer's heads):")
        for name, ms in sorted(times.items(), key=lambda kv: kv[1]):
            mark = "*" if name == attention["kernel"] else " "
            print(f"   {mark} {name:12s} {ms:9.4f}  {ms / best if best else 0:5.2f}x")
    print(f"activations: {plan['activations']}")
    side_by_side = "one weight row at a time" if plan.get("rows_at_once") == 1 else "four weight rows side by side"
    print(f"decode reads {side_by_side} (/1row: one at a time)")
    return 0
