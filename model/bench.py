"""Speed measurements: prefill and decode rates, per-token latency, memory, and the bandwidth bound.

Batch-1 decoding reads every weight once per token, so the copy bandwidth of this machine
(measured here, in the same run) divided into the bytes read per token is the ceiling; the
report says how close the engine gets. `compare_transformers` times transformers' own
`generate` on the same checkpoint in the same process, so ratios are side by side.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from demi.model.decoder import KVCache, Transformer
from demi.model.generate import GenerationRequest, generate
from demi.model.loading import load_model
from demi.model.quantize import RescoredHead
from demi.model.threads import use_physical_cores


def copy_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """GB/s of a large tensor copy, counting bytes read plus bytes written (STREAM's convention)."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() / best / 1e9


def read_bandwidth(mb: int = 512, repeats: int = 5) -> float:
    """GB/s of a read-only scan (what decoding does with the weights)."""
    src = torch.ones(mb * 2**20 // 4, dtype=torch.int32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        src.max()
        best = min(best, time.perf_counter() - t)
    return src.numel() * 4 / best / 1e9


def bytes_per_token(model: Transformer) -> int:
    """Weight bytes one decode step reads: every layer weight, one embedding row, the head's share
    (a rescored head reads its int4 shadow plus 64 int8 rows), and top-k of E experts in MoE."""
    cfg = model.config
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, RescoredHead):
            total += _tensor_bytes(module.shadow) + module.candidates * module.in_features
            continue
        if any(name.startswith(p) for p in ("lm_head.exact", "lm_head.shadow")):
            continue
        own = [
            t
            for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            if t.device.type != "meta"
        ]
        nbytes = sum(t.numel() * t.element_size() for t in own)
        if name == "model.embed_tokens":
            nbytes = cfg.hidden_size * own[0].element_size()
        elif ".experts." in name and cfg.num_experts:
            nbytes = nbytes * cfg.num_experts_per_tok / cfg.num_experts
        elif name == "lm_head" and cfg.tie_word_embeddings and isinstance(module, torch.nn.Linear):
            nbytes = own[0].numel() * own[0].element_size() if own else 0
        total += nbytes
    return int(total)


def _tensor_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.buffers()) + list(module.parameters()))


def _percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile, or None where nothing was measured (one new token: no decode step)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))] if s else None


def time_generation(model: Transformer, prompt: list[int], new_tokens: int, runs: int = 3) -> dict:
    """TTFT, decode rate and per-token latencies over `runs` runs (after one warm-up)."""
    cache = KVCache(model.config, len(prompt) + new_tokens + 1, dtype=model.dtype, device=model.device)
    list(generate(model, GenerationRequest(prompt, 4), cache))  # warm-up: kernels, allocator, caches
    ttfts, decode_rates, steps = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        stamps = []
        for _tok in generate(model, GenerationRequest(prompt, new_tokens), cache):
            stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - t0)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        steps.extend(gaps)
        decode_rates.append(len(gaps) / sum(gaps) if gaps else 0.0)
    return {
        "ttft_ms": 1e3 * statistics.median(ttfts),
        "prefill_tok_s": len(prompt) / statistics.median(ttfts),
        "decode_tok_s": statistics.median(decode_rates),
        **{f"p{q}_ms": None if (v := _percentile(steps, q)) is None else 1e3 * v for q in (50, 95, 99)},
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench(
    model_dir: Path,
    quant: str = "none",
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    runs: int = 3,
    device: str = "cpu",
    dtype: str = "auto",
    seed: int = 0,
) -> dict:
    """Measure Demi on `model_dir`; returns the DESIGN.md keys plus context for the report."""
    threads = use_physical_cores()
    bandwidth, read_bw = copy_bandwidth(), read_bandwidth()
    t = time.perf_counter()
    model = load_model(model_dir, dtype=dtype, device=device, quant=quant, context=prompt_tokens + new_tokens + 8)
    load_s = time.perf_counter() - t
    gen = torch.Generator().manual_seed(seed)
    high = min(model.config.vocab_size, 4000)
    prompt = torch.randint(10, high, (prompt_tokens,), generator=gen).tolist()
    with torch.inference_mode():
        result = time_generation(model, prompt, new_tokens, runs)
    per_token = bytes_per_token(model)
    bound_tok_s = bandwidth * 1e9 / per_token
    result.update(
        {
            "model": str(model_dir),
            "quant": getattr(model, "quantization", "none"),
            "dtype": str(model.dtype).replace("torch.", ""),
            "device": str(model.device),
            "threads": threads,
            "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens,
            "runs": runs,
            "load_s": round(load_s, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "copy_gb_s": round(bandwidth, 2),
            "weight_bytes_per_token": per_token,
            "bandwidth_bound_tok_s": round(bound_tok_s, 2),
            # significant digits, not decimals: a tiny model's fraction is far below 0.001, not zero
            "bandwidth_fraction": float(f"{result['decode_tok_s'] / bound_tok_s:.4g}"),
            "read_gb_s": round(read_bw, 2),
            "weights_gb_s": round(per_token * result["decode_tok_s"] / 1e9, 2),
            "read_bound_fraction": float(f"{per_token * result['decode_tok_s'] / (read_bw * 1e9):.4g}"),
            "kernel_plan": plan.as_dict() if (plan := getattr(model, "kernel_plan", None)) else None,
        }
    )
    del model
    gc.collect()
    return result


def compare_transformers(
    model_dir: Path,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    runs: int = 3,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    seed: int = 0,
) -> dict:
    """transformers' `generate` (greedy, KV cache on) on the same checkpoint, per dtype."""
    import transformers

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in dtypes:
        # safetensors only, as Demi itself: never a pickle fallback (pytorch_model.bin), never remote code
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, name), use_safetensors=True
        ).eval()
        high = min(model.config.vocab_size, 4000)
        ids = torch.randint(10, high, (1, prompt_tokens), generator=gen)

        def run(n: int, model=model, ids=ids) -> float:
            t = time.perf_counter()
            with torch.inference_mode():
                model.generate(
                    ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None
                )
            return time.perf_counter() - t

        run(4)
        prefill = statistics.median(run(1) for _ in range(runs))
        full = statistics.median(run(new_tokens + 1) for _ in range(runs))
        out[name] = {
            "prefill_tok_s": prompt_tokens / prefill,
            "ttft_ms": 1e3 * prefill,
            "decode_tok_s": new_tokens / max(full - prefill, 1e-9),
        }
        del model
        gc.collect()
    return out


def machine() -> dict:
    """What the numbers were measured on."""
    from demi.model import native_kernels

    return {
        "cpu": native_kernels.cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_features": cpu_features(),
        "native_paths": native_kernels.runnable_paths(),
        "kernel_forced": native_kernels.forced(),
    }


# The flags that decide which kernels run (the rest of /proc/cpuinfo's list is noise here).
SPEED_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "bf16",
    "i8mm",
    "sve",
)


def cpu_features() -> list[str]:
    """This CPU's flags among those that decide Demi's kernels (SPEED_FLAGS)."""
    from demi.model import native_kernels

    have = native_kernels.cpu_flags()
    return [f for f in SPEED_FLAGS if f in have]
