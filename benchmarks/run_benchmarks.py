"""Write benchmarks/RESULTS.md: Demi against transformers, side by side in one run.

    .venv/bin/python benchmarks/run_benchmarks.py [--model qwen2.5-coder-0.5b] [--runs 5]

1. Decode and prefill speed of Demi (fp32, int8, int4) and of transformers' `generate` (fp32,
   bf16) on the same checkpoint (a preset gets random weights in its real shape), 128-token
   prompt, 32 new tokens, batch 1, greedy; the copy bandwidth measured in the same run gives
   the memory-bandwidth bound of each mode.
2. FIM while typing, through a live `demi serve` on 127.0.0.1: a cold FIM request with a
   2,000-token prompt, then the same request after one typed character.
Run it on a quiet machine: batch-1 decode with one thread per core stalls whenever anything
else takes a core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from demi.assistant.benchmark import model_dir_for_bench
from demi.model.bench import bench, compare_transformers, machine
from demi.model.scaffold import stdlib_texts
from demi.model.tokenizer import Tokenizer

HERE = Path(__file__).resolve().parent


def speed(model_dir: Path, runs: int, prompt_tokens: int = 128, new_tokens: int = 32) -> dict:
    out = {"demi": {}, "transformers": {}}
    for mode in ("none", "int8", "int4"):
        out["demi"][mode] = bench(model_dir, mode, prompt_tokens, new_tokens, runs)
        print(f"demi {mode}: {out['demi'][mode]['decode_tok_s']:.2f} tok/s", file=sys.stderr, flush=True)
    out["transformers"] = compare_transformers(model_dir, prompt_tokens, new_tokens, runs)
    print(f"transformers: {json.dumps(out['transformers'])}", file=sys.stderr, flush=True)
    return out


def start_server(model_dir: Path, quant: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "demi", "serve", "--model", str(model_dir), "--port", "0", "--quant", quant]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            url = line.split("listening on", 1)[1].split()[0]
            return proc, url
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("demi serve did not start")


def fim_documents(tok: Tokenizer, n: int, tokens: int = 2000) -> list[tuple[str, str]]:
    """(prefix, suffix) pairs of about `tokens` tokens, cursor at 3/4, each from a different file."""
    docs = []
    for text in stdlib_texts(20_000_000):
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) < tokens + 10:
            continue
        ids = ids[:tokens]
        cut = tokens * 3 // 4
        prefix, suffix = tok.decode(ids[:cut]), tok.decode(ids[cut:])
        docs.append((prefix, suffix))
        if len(docs) == n:
            break
    return docs


def fim_typing(model_dir: Path, quant: str = "int8", trials: int = 3, lengths: tuple[int, ...] = (1, 4, 8, 16)) -> dict:
    """Cold FIM request vs the same request one typed character later, through demi serve, for
    completions of several lengths (the typed request's cost is mostly its decode steps)."""
    tok = Tokenizer.from_dir(model_dir)
    proc, url = start_server(model_dir, quant)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            client.post("/v1/completions", json={"prompt": "warm up", "max_tokens": 2}).raise_for_status()
            docs = fim_documents(tok, trials * len(lengths))
            for i, n in enumerate(lengths):
                for prefix, suffix in docs[i * trials : (i + 1) * trials]:  # a fresh file: truly cold
                    row = {"max_tokens": n}
                    for label, pre in (("cold", prefix), ("typed", prefix + "x")):
                        body = {"prompt": pre, "suffix": suffix, "max_tokens": n, "temperature": 0, "ignore_eos": True}
                        t0 = time.perf_counter()
                        r = client.post("/v1/completions", json=body)
                        r.raise_for_status()
                        usage = r.json()["usage"]
                        row[label] = {
                            "ms": 1e3 * (time.perf_counter() - t0),
                            "prompt_tokens": usage["prompt_tokens"],
                            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                            "completion_tokens": usage["completion_tokens"],
                        }
                    rows.append(row)
    finally:
        proc.terminate()
        proc.wait(30)
    summary = {
        n: statistics.median(r["typed"]["ms"] / r["cold"]["ms"] for r in rows if r["max_tokens"] == n) for n in lengths
    }
    return {"quant": quant, "trials": rows, "typed_over_cold": summary}


def write_results(path: Path, model: str, mach: dict, sp: dict, fim: dict, args: argparse.Namespace) -> None:
    tf = sp["transformers"]
    best_tf = max(tf, key=lambda k: tf[k]["decode_tok_s"])
    lines = [
        "# Benchmark results",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/run_benchmarks.py` (command below) in one run.",
        "",
        "Demi against llama.cpp, a table per CPU path: [RESULTS-cpu-paths.md](RESULTS-cpu-paths.md).",
        "",
        f"- Machine: {mach['cpu']}, {mach['logical_cpus']} logical CPUs, torch {mach['torch']}, "
        f"{sp['demi']['int8']['threads']} threads; CPU features: {' '.join(mach.get('cpu_features', [])) or '?'}",
        f"- Model: `{model}` shape, random weights; prompt {args.prompt_tokens} tokens, {args.new_tokens} new "
        f"tokens, batch 1, greedy; median of {args.runs} runs after a warm-up",
        "",
        "## Decode and prefill",
        "",
        "| engine | mode | decode tok/s | vs best transformers | prefill tok/s | TTFT ms | p50 / p95 / p99 ms | "
        "MiB read per token | bandwidth bound tok/s | of bound | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in tf.items():
        lines.append(
            f"| transformers | {name} | {r['decode_tok_s']:.2f} | "
            f"{r['decode_tok_s'] / tf[best_tf]['decode_tok_s']:.2f}x | {r['prefill_tok_s']:.0f} | "
            f"{r['ttft_ms']:.0f} | | | | | |"
        )
    for mode, r in sp["demi"].items():
        lines.append(
            f"| demi | {mode if mode != 'none' else r['dtype']} | {r['decode_tok_s']:.2f} | "
            f"{r['decode_tok_s'] / tf[best_tf]['decode_tok_s']:.2f}x | {r['prefill_tok_s']:.0f} | {r['ttft_ms']:.0f} | "
            f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} | {r['weight_bytes_per_token'] / 2**20:.0f} | "
            f"{r['bandwidth_bound_tok_s']:.1f} | {100 * r['bandwidth_fraction']:.0f}% | {r['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Bandwidth, measured in each Demi run: copy (bytes read + written, STREAM's convention; "
        "the bound column uses it) and a read-only scan (what decoding does with the weights): "
        + ", ".join(f"{m} copy {r['copy_gb_s']:.1f} / read {r['read_gb_s']:.1f} GB/s" for m, r in sp["demi"].items())
        + ". Weights streamed while decoding: "
        + ", ".join(
            f"{m} {r['weights_gb_s']:.1f} GB/s ({100 * r['read_bound_fraction']:.0f}% of read)"
            for m, r in sp["demi"].items()
        )
        + ".",
        f"The faster transformers run is {best_tf}. Peak RSS is the process's high-water mark so far, "
        "so later rows include earlier ones.",
        "",
    ]
    lines += [
        "## FIM while typing (through `demi serve`)",
        "",
        "A 2,000-token FIM prompt (prefix 3/4, suffix 1/4; each trial a different standard-library file, "
        f"so the cold request is truly cold), `--quant {fim['quant']}`, greedy, a fixed number of new tokens; "
        "then the same request with one more character typed at the cursor. The demi-tiny FIM layout puts "
        "the suffix first, so the typed prompt shares all but its last tokens with the cold one.",
        "",
        "| new tokens | cold ms | typed ms | typed/cold | prompt tokens | reused by the typed request |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in fim["trials"]:
        c, ty = t["cold"], t["typed"]
        lines.append(
            f"| {t['max_tokens']} | {c['ms']:.0f} | {ty['ms']:.0f} | {ty['ms'] / c['ms']:.1%} | "
            f"{ty['prompt_tokens']} | {ty['cached_tokens']} |"
        )
    lines += [
        "",
        "Median typed/cold by completion length: "
        + ", ".join(f"{n} tokens {r:.1%}" for n, r in fim["typed_over_cold"].items())
        + ".",
        "",
        "## Reproduce",
        "",
        "```",
        f".venv/bin/python benchmarks/run_benchmarks.py --model {model} --runs {args.runs}",
        f".venv/bin/demi bench --model {model} --quant int8 --compare transformers",
        "```",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = model_dir_for_bench(args.model)
    mach = machine()
    sp = speed(model_dir, args.runs, args.prompt_tokens, args.new_tokens)
    fim = fim_typing(model_dir)
    args.json.write_text(json.dumps({"machine": mach, "speed": sp, "fim": fim}, indent=1), encoding="utf-8")
    write_results(args.out, args.model, mach, sp, fim, args)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
