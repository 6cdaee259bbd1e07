"""`demi bench` for the front ends: resolve the model (a preset gets a cached random-weight copy in
its real shape), run the engine's measurements, optionally beside transformers."""

from __future__ import annotations

from pathlib import Path

import platformdirs

from demi.model.bench import bench, compare_transformers, machine
from demi.model.presets import PRESETS
from demi.model.registry import resolve_model_dir


def model_dir_for_bench(name: str | None) -> Path:
    """Presets are built once with random weights under the user cache dir (speed needs only the shape)."""
    key = (name or "").strip().lower()
    if key in PRESETS:
        out = Path(platformdirs.user_cache_dir("demi")) / "random-weights" / key
        if not (out / "config.json").is_file():
            from demi.model.scaffold import build

            build(out, PRESETS[key].config, keep_vocab=True)
        return out
    return resolve_model_dir(name)


def kernel_plan(name: str | None, quant: str = "int8", remeasure: bool = True) -> dict:
    """The kernel plan for this model on this CPU, with every candidate's time (`demi bench --plan`)."""
    from demi.model import native_kernels
    from demi.model.config import load_config
    from demi.model.kernel_plan import ATTENTION_ROWS, CHECK_ROWS, attention_for, cache_file, matmul_shapes, plan_for

    path = model_dir_for_bench(name)
    cfg = load_config(path)
    mode = "int8" if quant in (None, "auto", "none") else quant
    plan = plan_for(cfg, mode, remeasure=remeasure)
    problems = {p: native_kernels.problem(p) for p in native_kernels.runnable_paths() if native_kernels.problem(p)}
    usable = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    attention = None
    if usable:  # the prompt attention of the path the model decodes with
        choice = attention_for(cfg, plan.decode if plan.decode in usable else usable[0], remeasure=remeasure)
        attention = {"kernel": choice.kernel, "times_ms": choice.times_ms, "source": choice.source}
    return {
        "model": str(path),
        "shapes": [list(s) for s in matmul_shapes(cfg)],
        "plan": plan.as_dict(),
        "check_rows": CHECK_ROWS,  # the rows of the plan's "check" timings
        "attention": attention,  # SDPA or the native tiles for a prompt's attention (None: no native path)
        "attention_rows": ATTENTION_ROWS,
        "cache": str(cache_file()),
        "problems": problems,
        "machine": machine(),
    }


def run(
    name: str | None,
    quant: str = "none",
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    runs: int = 3,
    compare: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> dict:
    path = model_dir_for_bench(name)
    result = bench(path, quant or "none", prompt_tokens, new_tokens, runs, device or "cpu", dtype or "auto")
    result["machine"] = machine()
    if compare == "transformers":
        ref = compare_transformers(path, prompt_tokens, new_tokens, runs)
        result["compare"] = {"transformers": ref}
        best = max(ref.values(), key=lambda r: r["decode_tok_s"])
        result["decode_ratio_vs_best_transformers"] = round(result["decode_tok_s"] / best["decode_tok_s"], 2)
        result["decode_ratio_vs_transformers_fp32"] = round(result["decode_tok_s"] / ref["float32"]["decode_tok_s"], 2)
    return result
