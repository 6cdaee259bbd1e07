"""What models there are and what they need: the data behind `demi models`, `models info`, `pull`, `doctor`."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from demi.model.config import ModelConfig, load_config
from demi.model.errors import DemiError, ModelNotFoundError
from demi.model.info import format_info, model_info
from demi.model.plan import plan_for
from demi.model.presets import PRESETS, get_preset
from demi.model.registry import builtin_models, cached_hub_models, hub_snapshot, resolve_model_dir


def list_models() -> dict[str, list[dict[str, Any]]]:
    """Built-in models, presets (shapes without weights) and models in the local hub cache."""
    return {
        "builtin": [{"name": n, "path": str(p)} for n, p in builtin_models().items()],
        "presets": [{"name": p.name, "description": p.description} for p in PRESETS.values()],
        "hub_cache": [{"name": rid, "bytes": size} for rid, size in cached_hub_models()],
    }


def config_for(name: str) -> tuple[str, ModelConfig]:
    """A preset's config, or the config.json of a model directory, built-in model or cached hub id."""
    key = name.strip().lower()
    if key in PRESETS:
        return PRESETS[key].name, get_preset(key)
    return name, load_config(resolve_model_dir(name, download=False))


def describe(name: str, context: int | None = None, target: str | None = None) -> tuple[str, dict[str, Any]]:
    """Human-readable table and JSON-ready figures for `demi models info` (and a deployment plan)."""
    label, cfg = config_for(name)
    info = model_info(cfg, context)
    data = {"name": label, "model_type": cfg.model_type, **info.as_dict()}
    text = format_info(label, cfg, context)
    if target:
        plan = plan_for(cfg, target, context)
        data["plan"] = plan
        lo, hi = plan["ram_gb"]
        text += (
            f"\n\nplan for {target} ({lo:g}-{hi:g} GB RAM): {plan['precision']} (--quant {plan['quant']}), "
            f"context {plan['context']}: weights {plan['weight_bytes'] / 2**30:.2f} GiB + KV "
            f"{plan['kv_bytes'] / 2**30:.2f} GiB = {plan['total_bytes'] / 2**30:.2f} GiB"
            + ("" if plan["fits_low_end"] else f"; does not fit in {lo:g} GB: use a smaller model")
        )
    return text, data


def quantize(src: str, dst: str, mode: str, group: int = 64) -> Path:
    from demi.model.quantized_checkpoint import quantize_checkpoint

    return quantize_checkpoint(resolve_model_dir(src, download=False), dst, mode, group)


def pull(repo_id: str) -> Path:
    return hub_snapshot(repo_id, download=True)


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def doctor(model: str | None = None) -> dict[str, Any]:
    """Facts about this install that explain most problems: versions, devices, memory, the model."""
    import torch

    from demi.model.loading import available_memory

    checks: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {
            p: _version(p)
            for p in ("torch", "safetensors", "tokenizers", "jinja2", "huggingface_hub", "platformdirs", "transformers")
        },
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "memory_available_gb": round(available_memory(torch.device("cpu")) / 2**30, 2),
        "builtin_models": sorted(builtin_models()),
    }
    from demi.assistant.config import ConfigFileError
    from demi.assistant.config import load_config as load_settings

    try:
        settings = load_settings({"model": model} if model else {})
        checks["config"] = settings.as_dict()
        model = settings["model"]
    except ConfigFileError as exc:
        checks["config"] = {"problem": str(exc)}
    try:
        path = resolve_model_dir(model, download=False)
        cfg = load_config(path)
        checks["model"] = {"name": model or "(default)", "path": str(path), "ok": True, "model_type": cfg.model_type}
    except (DemiError, ModelNotFoundError) as exc:
        checks["model"] = {"name": model or "(default)", "ok": False, "problem": str(exc)}
    checks["cpu"] = _cpu_report(cfg if checks["model"]["ok"] else None)
    checks["ok"] = checks["packages"]["torch"] is not None and checks["model"]["ok"]
    return checks


def _cpu_report(cfg: Any) -> dict[str, Any]:
    """The CPU's features, the native kernels it runs (or why not), and the model's kernel plan
    (measured here once, then cached)."""
    from demi.model import native_kernels
    from demi.model.bench import cpu_features
    from demi.model.kernel_plan import BUSY_SHARE, plan_for

    paths = native_kernels.runnable_paths()
    usable = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    report: dict[str, Any] = {
        "model": native_kernels.cpu_model(),
        "features": cpu_features(),
        "native_paths": paths,
        "native_usable": usable,
        "forced": native_kernels.forced(),
        "compiler": native_kernels.compiler(),
        "problems": {p: native_kernels.problem(p) for p in paths if native_kernels.problem(p)},
        # per usable path: "compiled here", "prebuilt (no C compiler)" or "prebuilt (compile failed: ...)"
        "origins": {p: native_kernels.origin(p) for p in usable},
    }
    if not report["compiler"] and usable:
        report["note"] = "no C compiler: the native kernels prebuilt with Demi's package are used"
    elif not report["compiler"]:
        report["note"] = (
            "torch (no C compiler and no usable prebuilt library): torch's kernels are used "
            "(install gcc or clang for the native ones)"
        )
    if cfg is not None:
        try:
            plan = plan_for(cfg, "int8")
            report["plan"] = {
                "mode": plan.mode,
                "decode": plan.decode,
                "prefill": plan.prefill,
                "activations": plan.activations,
                "source": plan.source,
                "others_share": plan.others_share,
                "busy": plan.others_share is not None and plan.others_share > BUSY_SHARE,
                "times_ms": plan.times_ms,
            }
        except Exception as exc:  # doctor reports, never crashes
            report["plan"] = {"problem": str(exc)}
    return report
