"""`demi models memory NAME`: estimated and measured memory per component, side by side."""

from __future__ import annotations

import argparse

from demi.cli.main import UsageError, emit_json

MiB = 2**20


def register(msub: argparse._SubParsersAction, common) -> None:
    """Add `memory` to `demi models`' actions (`msub`, made by commands_models)."""
    mem = msub.add_parser(
        "memory",
        parents=[common(model=False)],
        help="memory of a model: the estimate per component beside the RSS a fresh process measures",
        description="Load the model in a fresh process, prefill --context tokens, and print the "
        "estimate (runtime, weights as loaded, KV cache, prefill activations, kernel caches, the "
        "load's transient) beside the measured resident memory: held after the load, the peak "
        "while loading, the peak while prefilling. A preset is measured with random weights in "
        "its real shape.",
    )
    mem.add_argument("name", metavar="NAME", help="model name, directory, cached hub id or preset")
    mem.add_argument("--quant", choices=["none", "int8", "int4"], default="none", help="default: none (fp32)")
    mem.add_argument("--context", type=int, default=1024, help="tokens to allocate and prefill (default 1024)")
    mem.set_defaults(func=cmd_models_memory)


def cmd_models_memory(args: argparse.Namespace) -> int:
    from demi.assistant.memory_profile import memory_profile

    if args.context < 2:
        raise UsageError("demi models memory: --context must be >= 2")
    r = memory_profile(args.name, args.quant, args.context)
    if args.json:
        emit_json(r)
        return 0
    for line in report_lines(r):
        print(line)
    return 0


def _mib(n: float) -> str:
    return f"{n / MiB:9.1f} MiB"


def report_lines(r: dict) -> list[str]:
    e, m = r["estimate"], r["measured"]
    p, t = m["phases"], m["tensors"]
    plan = m.get("plan")
    kernels = f"; kernels: decode {plan['decode']}, prefill {plan['prefill']}" if plan else ""
    precision = "not quantized" if r["quant"] == "none" else f"{r['quant']} weights"
    lines = [
        f"{r['model']}: {r['parameters']:,} parameters, {precision}, {r['dtype']} elsewhere{kernels}",
        f"context {r['context']} (prefill of {r['context'] - 1} tokens, chunks of {e['prefill_rows']}); "
        f"{m['threads']} threads",
        "",
        f"{'component':28s}{'estimate':>14s}{'measured':>14s}",
        f"{'runtime and tokenizer':28s}{_mib(e['runtime'] + e['tokenizer'])}{_mib(p['runtime']['held'])}"
        "  (RSS before the weights)",
        f"{'weights':28s}{_mib(e['weights'])}{_mib(t['weights'])}  (bytes of the model's tensors)",
        f"{'KV cache':28s}{_mib(e['kv'])}{_mib(t['kv'])}  (tensor bytes)",
        f"{'prefill activations':28s}{_mib(e['activations'])}",
        f"{'kernel caches':28s}{_mib(e['caches'])}{_mib(t['caches'])}  (int8 prefill copies kept)",
        f"{'load transient':28s}{_mib(e['load_transient'])}",
        "",
        f"{'resident memory (RSS)':28s}{'estimate':>14s}{'measured':>14s}{'error':>9s}",
    ]
    names = {
        "after_load": "held after load",
        "load_peak": "peak while loading",
        "prefill_peak": "peak while prefilling",
        "after_prefill": "held after prefill",
    }
    for key, label in names.items():
        c = r["comparison"][key]
        lines.append(f"{label:28s}{_mib(c['estimate'])}{_mib(c['measured'])}{100 * c['error']:+8.1f}%")
    kept = p["load"]["rss"] - p["load"]["held"]
    lines += [
        "",
        f"after the load the allocator kept {kept / MiB:.0f} MiB it had freed (RSS {p['load']['rss'] / MiB:.0f} MiB, "
        f"held {p['load']['held'] / MiB:.0f} MiB); file-backed pages at the end: {p['load']['file'] / MiB:.0f} MiB",
    ]
    if not m["peaks_per_phase"]:
        lines.append("(peaks are the process's since it started: this system cannot reset VmHWM)")
    return lines
