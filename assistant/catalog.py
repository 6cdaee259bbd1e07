"""What models there are and what they need: the data behind `demi models`, `models info`, `pull`, `doctor`."""

from __future__ import annotations

import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from demi.model.config import ModelConfig, load_config
from demi.model.errors import DemiError, ModelNotFoundError
from demi.model.info import INT4_GROUP_SIZE, format_info, model_info
from demi.model.plan import plan_for
from demi.model.presets import PRESETS, get_preset
from demi.model.registry import builtin_models, cached_hub_models, hub_snapshot, offline, resolve_model_dir


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
    data = {"name": label, "model_type": cfg.model_type, **info.as_dict(), "int4_group": INT4_GROUP_SIZE}
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


def quantize(src: str, dst: str, mode: str, group: int | None = None) -> tuple[Path, int]:
    """Write `src` quantized to `mode` into `dst`; `group` None is the engine's int4 default, the group
    `models info` counts with. Returns the new directory and the group used."""
    from demi.model.quantized_checkpoint import quantize_checkpoint

    group = group or INT4_GROUP_SIZE
    return quantize_checkpoint(resolve_model_dir(src, download=False), dst, mode, group), group


def pull(repo_id: str) -> Path:
    """Download hub model `repo_id` into the local hub cache (the files `HUB_FILES` names: weights as
    safetensors, JSON configs, tokenizer and chat-template files) and return its directory; a model
    already cached is not fetched again. Offline it is a one-line error saying so."""
    try:
        return hub_snapshot(repo_id, download=True)
    except ModelNotFoundError:
        if not offline():
            raise
        raise ModelNotFoundError(
            f"cannot download {repo_id}: offline mode is on (HF_HUB_OFFLINE or DEMI_OFFLINE is set) and it is not "
            f"in the local hub cache; unset it and run `demi pull {repo_id}` with network access"
        ) from None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def doctor(flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Facts about this install that explain most problems: versions, devices, memory, the model and
    how it would load. `flags` are the command line's settings, as `load_config` takes them (model,
    device, dtype, context, quant ...): the report resolves them as a command that loads the model does."""
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
    from demi.assistant.config import Config, ConfigFileError
    from demi.assistant.config import load_config as load_settings

    settings: Config | None = None
    model = (flags or {}).get("model")
    try:
        settings = load_settings(flags)
        checks["config"] = settings.as_dict()
        model = settings["model"]
    except ConfigFileError as exc:
        checks["config"] = {"problem": str(exc)}
    found: tuple[Path, ModelConfig] | None = None
    try:
        path = resolve_model_dir(model, download=False)
        cfg = load_config(path)
        found = path, cfg
        checks["model"] = {"name": model or "(default)", "path": str(path), "ok": True, "model_type": cfg.model_type}
    except (DemiError, ModelNotFoundError) as exc:
        checks["model"] = {"name": model or "(default)", "ok": False, "problem": str(exc)}
    checks["load"], plan = _load_report(settings, found)
    checks["cpu"] = _cpu_report(plan, found[1] if found else None)
    checks["ok"] = checks["packages"]["torch"] is not None and checks["model"]["ok"] and checks["load"]["ok"]
    return checks


def _load_report(settings: Any, found: tuple[Path, ModelConfig] | None) -> tuple[dict[str, Any], Any]:
    """How the model would load with these settings (the engine's own choice, `choose_load`, and its
    memory check) and the kernel plan it would run: ({device, dtype, quant, context, memory_needed_bytes,
    sources, ok} or {ok: False, problem}, the plan or None)."""
    if settings is None:
        return {"ok": False, "problem": "the config file has a problem (see config)"}, None
    if found is None:
        return {"ok": False, "problem": "no model to load (see model)"}, None
    path, cfg = found
    from demi.model.checkpoint import read_index
    from demi.model.engine import DEFAULT_CONTEXT
    from demi.model.loading import check_fits, choose_load, estimate_bytes

    keys = ("device", "dtype", "quant", "context")
    report: dict[str, Any] = {"sources": {k: settings.sources[k] for k in keys}}
    try:  # as engine_from_config, then LocalModel.load, pass the settings on
        choice = choose_load(
            cfg,
            settings["dtype"],
            settings["device"] or "cpu",
            settings["context"] or DEFAULT_CONTEXT,
            settings["quant"] or "auto",
        )
        need = estimate_bytes(read_index(path), cfg, choice.dtype, choice.context, choice.mode)
        report |= {
            "device": str(choice.device),
            "dtype": str(choice.dtype).replace("torch.", ""),
            "quant": choice.mode,
            "context": choice.context,
            "memory_needed_bytes": need,
        }
        check_fits(need, choice.device, f"{path.name} in {report['dtype']} with {choice.mode}")
    except Exception as exc:  # doctor reports, never crashes: a bad device, quantization or memory
        return report | {"ok": False, "problem": str(exc).strip().splitlines()[0]}, None
    return report | {"ok": True}, choice.plan


def _cpu_report(plan: Any, cfg: ModelConfig | None = None) -> dict[str, Any]:
    """The CPU's features, the native kernels it runs (or why not), the kernel plan the model
    would load with (measured here once, then cached; None: no quantized CPU layers to plan) and
    how its prompts attend (SDPA or the native tiles, measured the same way)."""
    from demi.model import native_kernels
    from demi.model.bench import cpu_features
    from demi.model.kernel_plan import BUSY_SHARE

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
    if plan is not None:
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
    if cfg is not None and usable:
        from dataclasses import asdict

        from demi.model.kernel_plan import ATTENTION_ROWS, attention_for

        path = plan.decode if plan is not None and plan.decode in usable else usable[0]
        report["attention"] = asdict(attention_for(cfg, path)) | {"rows": ATTENTION_ROWS}
    return report
