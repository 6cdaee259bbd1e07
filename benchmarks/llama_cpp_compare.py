"""Demi against llama.cpp on the same random checkpoint, side by side in one run.

    .venv/bin/python benchmarks/llama_cpp_compare.py --llama-python PEER/bin/python \
        --llama-src SDIST/vendor/llama.cpp [--model qwen2.5-coder-0.5b] [--threads 2] [--runs 3] \
        [--kernel avx2] [--out benchmarks/llama_cpp.json]

llama.cpp is a peer, never a dependency: it runs in its own virtual environment (PEER, made with
`python -m venv PEER && PEER/bin/pip install llama-cpp-python==0.3.36`, which builds llama.cpp from
the sdist's vendored sources for this CPU; `pip download --no-binary :all: llama-cpp-python==0.3.36`
gives the sdist whose vendor/llama.cpp holds the GGUF converter). For llama.cpp's AVX2 path on an
AVX-512 machine, build a second peer with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON
-DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
-DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF" and pass --llama-build "AVX2 only". The checkpoint (a preset gets
random weights in its real shape) is converted once to an f16 GGUF by llama.cpp's own converter and
quantized by its own quantizer to Q8_0 and Q4_0.

Measured, each as a median over --runs after a warm-up, same thread count:
  decode: a 128-token prompt, then 32 single-token steps (tok/s)
  prefill: a 1,000-token prompt from an empty cache (tok/s)
for Demi int8 against llama.cpp Q8_0 and Demi int4 against Q4_0. Demi runs as `demi bench` in a
subprocess, so --kernel (DEMI_KERNEL) caps its kernels and torch's before torch loads: that is how
the AVX2 path is measured on a machine that has AVX-512.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def demi_bench(model: str, quant: str, prompt: int, new: int, runs: int, env: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "demi",
        "bench",
        "--model",
        model,
        "--quant",
        quant,
        "--prompt-tokens",
        str(prompt),
        "--new-tokens",
        str(new),
        "--runs",
        str(runs),
        "--json",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def llama_time(python: str, gguf: Path, kind: str, threads: int, runs: int, env: dict) -> dict:
    cmd = [
        python,
        str(HERE / "peers" / "llama_cpp_time.py"),
        str(gguf),
        kind,
        str(threads),
        "128",
        "32",
        "1000",
        str(runs),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"llama.cpp timing failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-python", required=True, help="python of a venv with llama-cpp-python installed")
    ap.add_argument("--llama-src", required=True, help="llama.cpp sources (the sdist's vendor/llama.cpp)")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kernel", default="", help="DEMI_KERNEL for Demi (e.g. avx2); empty: the plan's choice")
    ap.add_argument(
        "--llama-build", default="native", help="how that llama.cpp was built, for the report (e.g. 'AVX2 only')"
    )
    ap.add_argument("--out", default=str(HERE / "llama_cpp.json"))
    ap.add_argument("--markdown", default=str(HERE / "RESULTS-cpu-paths.md"))
    args = ap.parse_args()

    from demi.assistant.benchmark import model_dir_for_bench

    model_dir = model_dir_for_bench(args.model)
    gguf = model_dir / "gguf" / "model-f16.gguf"
    if not gguf.is_file():
        gguf.parent.mkdir(exist_ok=True)
        print(f"converting {model_dir} to {gguf} with llama.cpp's converter", file=sys.stderr)
        subprocess.run(
            [sys.executable, str(HERE / "peers" / "gguf_convert.py"), args.llama_src, str(model_dir), str(gguf)],
            check=True,
            capture_output=True,
        )
    env = {k: v for k, v in os.environ.items() if k != "DEMI_KERNEL"}
    env["DEMI_THREADS"] = env["OMP_NUM_THREADS"] = str(args.threads)
    demi_env = dict(env, **({"DEMI_KERNEL": args.kernel} if args.kernel else {}))
    rows = []
    for quant, kind in (("int8", "q8_0"), ("int4", "q4_0")):
        d = demi_bench(str(model_dir), quant, 128, 32, args.runs, demi_env)
        p = demi_bench(str(model_dir), quant, 1000, 1, args.runs, demi_env)
        ll = llama_time(args.llama_python, gguf, kind, args.threads, args.runs, env)
        row = {
            "demi": quant,
            "llama_cpp": kind,
            "demi_decode_tok_s": d["decode_tok_s"],
            "llama_decode_tok_s": ll["decode_tok_s"],
            "decode_ratio": d["decode_tok_s"] / ll["decode_tok_s"],
            "demi_prefill_tok_s": p["prefill_tok_s"],
            "llama_prefill_tok_s": ll["prefill_tok_s"],
            "prefill_ratio": p["prefill_tok_s"] / ll["prefill_tok_s"],
            "bandwidth_fraction": d["bandwidth_fraction"],
            "copy_gb_s": d["copy_gb_s"],
            "plan": d.get("kernel_plan"),
            "llama_system_info": ll["system_info"],
        }
        rows.append(row)
        print(
            f"{quant} vs {kind}: decode {row['demi_decode_tok_s']:.1f} / {row['llama_decode_tok_s']:.1f} tok/s "
            f"= {row['decode_ratio']:.2f}x, prefill(1000) {row['demi_prefill_tok_s']:.0f} / "
            f"{row['llama_prefill_tok_s']:.0f} tok/s = {row['prefill_ratio']:.2f}x, "
            f"int decode at {row['bandwidth_fraction']:.0%} of the bandwidth bound",
            file=sys.stderr,
        )
    from demi.model import native_kernels
    from demi.model.bench import cpu_features

    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": native_kernels.cpu_model(),
        "flags": " ".join(cpu_features()),
        "machine": platform.machine(),
        "threads": args.threads,
        "kernel": args.kernel or "(plan)",
        "llama_build": args.llama_build,
        "model": args.model,
        "rows": rows,
    }
    out = Path(args.out)
    runs = json.loads(out.read_text()) if out.is_file() else []
    runs.append(report)
    out.write_text(json.dumps(runs, indent=1) + "\n")
    Path(args.markdown).write_text(render(runs))
    print(json.dumps(report, indent=1))
    return 0


def render(runs: list[dict]) -> str:
    """The markdown report of every run in the JSON file, one table per CPU path."""
    lines = [
        "# Demi against llama.cpp, per CPU path",
        "",
        "Written by `benchmarks/llama_cpp_compare.py` from `benchmarks/llama_cpp.json` (every run kept). "
        "Qwen2.5-Coder-0.5B's shape with random weights, the same checkpoint for both (llama.cpp's own "
        "converter and quantizer); decode: 128-token prompt then 32 single-token steps; prefill: a "
        "1,000-token prompt from an empty cache; medians of 3 runs after a warm-up, side by side in one run, "
        "same thread count. Ratios are Demi / llama.cpp.",
        "",
    ]
    for r in runs:
        lines += [
            f"## {r['cpu']}, Demi kernels: {r['kernel']}, llama.cpp build: {r.get('llama_build', 'native')} "
            f"({r['date']})",
            "",
            f"- CPU flags that matter: `{r['flags']}`; {r['threads']} threads",
            f"- llama.cpp: {r['rows'][0]['llama_system_info']}",
            "",
            "| Demi | llama.cpp | decode tok/s Demi / llama.cpp | ratio | prefill (1,000) tok/s Demi / "
            "llama.cpp | ratio | Demi decode of the bandwidth bound | Demi kernels: decode / prefill |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in r["rows"]:
            plan = row.get("plan") or {}
            lines.append(
                f"| {row['demi']} | {row['llama_cpp']} | {row['demi_decode_tok_s']:.1f} / "
                f"{row['llama_decode_tok_s']:.1f} | {row['decode_ratio']:.2f}x | "
                f"{row['demi_prefill_tok_s']:.0f} / {row['llama_prefill_tok_s']:.0f} | "
                f"{row['prefill_ratio']:.2f}x | {row['bandwidth_fraction']:.0%} | "
                f"{plan.get('decode', '?')} / {plan.get('prefill', '?')} |"
            )
        forced = f" --kernel {r['kernel']}" if r["kernel"] != "(plan)" else ""
        lines += [
            "",
            "```",
            f".venv/bin/python benchmarks/llama_cpp_compare.py --llama-python PEER/bin/python "
            f"--llama-src SDIST/vendor/llama.cpp --threads {r['threads']} --runs 3{forced}",
            "```",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
