"""Load a checkpoint into the decoder: check it fits, build on the meta device, assign weights.

Nothing is allocated before the memory estimate says yes, and no weight is initialised
twice: the module tree is built on `meta` and every tensor is the checkpoint's own,
converted once to the dtype asked for.

What is read: config.json and the safetensors files (see checkpoint.py: never pickle). A model's
own Python code (`auto_map` in config.json, `modeling_*.py`) is never imported or run
(`trust_remote_code` does not exist here): a supported `model_type` runs on Demi's own decoder
and such files are ignored (MiniMax-M2's repository ships them, and Demi implements it itself);
an unsupported one is a one-line error that says the model needs code Demi will not run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from demi.model import decode_ops, kernel_plan
from demi.model.checkpoint import TensorInfo, dequantize_fp8_blocks, iter_tensors, read_index, save_checkpoint
from demi.model.config import ModelConfig, load_config
from demi.model.decoder import Transformer
from demi.model.errors import CheckpointError, ConfigError, DemiUserError, InsufficientMemoryError
from demi.model.fusion import fuse_modules, fuse_state_dict, unfuse_state_dict
from demi.model.info import cache_bytes
from demi.model.quantize import (
    DEFAULT_GROUP,
    check_mode,
    check_quantization_config,
    module_from_stored,
    quantizable,
    quantize_linear,
    quantized_tensors,
)
from demi.progress import report

log = logging.getLogger("demi.model")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# The stages a load reports (demi/progress.py), besides "reading weights" or "quantizing weights to
# MODE" (one step per tensor) and "building MODE layers" (one per quantized layer).
PLAN_STAGE = "choosing kernels"  # the kernel plan: read from its cache, or measured (seconds) on a miss
# Checkpoint tensors that are not weights of the decoder and are safe to skip.
# MiniMax's lightning layers store their decay constants too; Demi computes them from the config.
_IGNORED_SUFFIXES = (
    "rotary_emb.inv_freq",
    ".weight_scale_inv",
    ".input_scale",
    ".slope_rate",
    ".query_decay",
    ".key_decay",
    ".diagonal_decay",
)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device, cfg: ModelConfig) -> torch.dtype:
    """`auto`: fp32 on CPU (its matmuls are fastest there), the checkpoint's half type on CUDA."""
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        if device.type == "cpu":
            return torch.float32
        return torch.float16 if cfg.torch_dtype in ("float16", "fp16") else torch.bfloat16
    if name not in DTYPES:
        raise DemiUserError(f"unknown dtype {name!r}; choose one of auto, float32, bfloat16, float16")
    return DTYPES[name]


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DemiUserError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DemiUserError(f"unknown device {name!r}") from exc


def available_memory(device: torch.device) -> int:
    """Bytes free for new allocations on `device` (MemAvailable for CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_bytes(
    tensors: dict[str, TensorInfo], cfg: ModelConfig, dtype: torch.dtype, context: int, mode: str = "none"
) -> int:
    """Weights in `dtype` (projections at 1 or 0.5 byte when quantized) plus a KV cache for
    `context` tokens plus 10% working room."""
    elem = torch.tensor([], dtype=dtype).element_size()
    per_quant = {"int8": 1.0, "int4": 0.5, "nf4": 0.5}.get(mode)
    if (cfg.quantization_config or {}).get("quant_method") == "demi":
        per_quant = None  # stored quantized: the file sizes are the memory sizes
    total = 0.0
    for name, t in tensors.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        linear = name.endswith(".weight") and is_projection(name[: -len(".weight")])
        if per_quant and linear:
            total += t.numel * per_quant
        elif (cfg.quantization_config or {}).get("quant_method") == "demi" and t.dtype in ("I8", "U8"):
            total += t.numel
        else:
            total += t.numel * elem
    if per_quant and cfg.tie_word_embeddings and "lm_head.weight" not in tensors:
        total += cfg.vocab_size * cfg.hidden_size * per_quant  # the LM head's own quantized copy
    kv = cache_bytes(cfg, context, elem)  # softmax layers' keys and values, lightning layers' states
    return int((total + kv) * 1.1)


def check_fits(need: int, device: torch.device, what: str) -> None:
    if os.environ.get("DEMI_SKIP_MEMORY_CHECK"):
        return
    free = available_memory(device)
    if need > free:
        raise InsufficientMemoryError(
            f"{what} needs about {need / 2**30:.1f} GiB on {device.type} but only {free / 2**30:.1f} GiB "
            "is free; try --dtype bfloat16, a quantized mode (--quant int8 or int4) or a smaller model"
        )


@dataclass(frozen=True)
class LoadChoice:
    """How `load_model` runs a checkpoint, settled before any weight is read (`demi doctor` shows it)."""

    device: torch.device
    mode: str  # the quantization: none, int8, int4 or nf4
    dtype: torch.dtype  # of everything not quantized
    context: int  # the positions the memory check counts a KV cache for
    plan: kernel_plan.KernelPlan | None  # the CPU's int8/int4 kernels; None otherwise


def choose_load(
    cfg: ModelConfig,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "cpu",
    context: int | None = None,
    quant: str | None = "none",
    group: int = DEFAULT_GROUP,
) -> LoadChoice:
    """The device, quantization, dtype, context and kernel plan `load_model` uses for `cfg` and these
    arguments (a bad device or quantization is a DemiUserError here)."""
    device = device if isinstance(device, torch.device) else resolve_device(device)
    mode = _quant_mode(cfg, quant, device)
    plan = None
    if mode in ("int8", "int4") and device.type == "cpu":  # measured on a first load: seconds
        report(PLAN_STAGE, 0, 1)
        plan = kernel_plan.plan_for(cfg, mode, group)
        report(PLAN_STAGE, 1, 1)
    if mode != "none" and dtype in (None, "auto"):
        chosen = plan.activation_dtype if plan else torch.bfloat16
    else:
        chosen = resolve_dtype(dtype, device, cfg)
    return LoadChoice(device, mode, chosen, min(context or cfg.context_limit, cfg.context_limit), plan)


def load_model(
    model_dir: str | Path,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "cpu",
    context: int | None = None,
    quant: str | None = "none",
    group: int = DEFAULT_GROUP,
    fuse: bool = True,
) -> Transformer:
    """Build the decoder for `model_dir` and fill it with the checkpoint's weights.

    With `quant` int8/int4 (or a checkpoint `demi models quantize` wrote) the projections and
    the LM head are stored quantized. On CUDA the rest of the model runs in bf16; on a CPU the
    kernel plan (kernel_plan.py, measured once per machine) picks the matmul kernels and whether
    the rest runs in bf16 (where bf16 matmuls are fast) or fp32 (where they are emulated).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    cfg = checked_config(model_dir)
    choice = choose_load(cfg, dtype, device, context, quant, group)
    device, mode, dtype, ctx, plan = choice.device, choice.mode, choice.dtype, choice.context, choice.plan
    tensors = read_index(model_dir)
    what = f"{model_dir.name} in {str(dtype).replace('torch.', '')}" + (f" with {mode}" if mode != "none" else "")
    check_fits(estimate_bytes(tensors, cfg, dtype, ctx, mode), device, what)
    with torch.device("meta"):
        model = Transformer(cfg)
    targets = quantized_linears(model) if mode != "none" else []
    state = _read_state(model, tensors, dtype, device, mode, group, targets)
    if fuse:  # the inference layout, chosen here once (fusion.py)
        state = fuse_state_dict(state)
        fuse_modules(model)
        targets = quantized_linears(model) if mode != "none" else []
    building = f"building {mode} layers"  # int4 packing and the int8 head's int4 shadow take time
    if targets:
        report(building, 0, len(targets))
    for i, name in enumerate(targets, 1):
        stored = {k[len(name) + 1 :]: state.pop(k) for k in list(state) if k.startswith(name + ".weight")}
        bias = state.pop(f"{name}.bias", None)
        if mode == "nf4":
            module = quantize_linear(_linear(stored["weight"], bias), "nf4", group, name)
        else:
            module = module_from_stored(stored, bias, device, head=name == "lm_head", plan=plan)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, module)
        report(building, i, len(targets))
    model.load_state_dict(state, strict=False, assign=True)
    if mode == "none":
        model.tie_weights()
    model.quantization = mode  # type: ignore[assignment]  # nn.Module's __setattr__ takes tensors and modules
    model.kernel_plan = plan  # type: ignore[assignment]
    decode_ops.attach(model)
    _return_freed_memory()
    return model.eval()


def _return_freed_memory() -> None:
    """Hand the heap glibc keeps after loading back to the system. Reading, converting and
    quantizing leave gigabytes of freed temporaries that malloc keeps for reuse: measured on the
    0.5B shape, RSS after an int8 load was 3.7 GiB against 1.5 GiB held (benchmarks/RESULTS-memory.md),
    so a server sat at twice its memory. Elsewhere (no glibc) it does nothing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def code_files(model_dir: Path) -> list[str]:
    """The model's own Python code: `*.py` files and the modules `auto_map` in config.json names."""
    names = {p.name for p in model_dir.glob("*.py")}
    try:
        raw = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    auto_map = raw.get("auto_map") if isinstance(raw, dict) else None
    if isinstance(auto_map, dict):
        for ref in auto_map.values():
            for r in ref if isinstance(ref, list) else [ref]:
                if isinstance(r, str) and "." in r:
                    names.add(r.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(names)


def checked_config(model_dir: Path) -> ModelConfig:
    """`load_config`, saying so when an unsupported model needs its own code (which Demi never runs);
    for a supported model_type that code is ignored and Demi's own decoder is used."""
    code = code_files(model_dir)
    try:
        cfg = load_config(model_dir)
    except ConfigError as exc:
        if code and "unsupported model_type" in str(exc):
            raise ConfigError(
                f"{model_dir}: this model needs its own Python code ({', '.join(code[:3])}), which "
                f"Demi never runs (no trust_remote_code); {exc}"
            ) from None
        raise
    if code:
        log.info(
            "ignoring %s in %s: Demi never runs a model's own code; using its %s decoder",
            ", ".join(code),
            model_dir,
            cfg.model_type,
        )
    return cfg


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = torch.nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        lin.bias = torch.nn.Parameter(bias, requires_grad=False)
    return lin


def _quant_mode(cfg: ModelConfig, quant: str | None, device: torch.device) -> str:
    """The quantization to load with: the checkpoint's own if it is Demi-quantized, else `quant`."""
    qc = cfg.quantization_config or {}
    if qc.get("quant_method") == "demi":
        stored = check_quantization_config(qc)
        if quant not in (None, "none", "auto", stored):
            log.warning("this checkpoint is quantized to %s; ignoring --quant %s", stored, quant)
        return stored
    quant = quant or "none"
    if quant == "auto":
        from demi.model.plan import auto_quant

        quant = auto_quant(cfg, device)
    return check_mode(quant, device)


# Projections `quantize.quantizable` does not know by name, quantized like the others: StarCoder2's
# MLP input (`mlp.c_fc`; its `c_proj` ends in _proj) and MiniMax's lightning output gate.
_MORE_PROJECTIONS = ("c_fc", "output_gate")


def is_projection(name: str) -> bool:
    """Whether the Linear `name` is quantized: `quantizable`'s projections, experts and head, and
    the family projections named in _MORE_PROJECTIONS."""
    return quantizable(name) or name.rsplit(".", 1)[-1] in _MORE_PROJECTIONS


def quantized_linears(model: Transformer) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and is_projection(n)]


def _read_state(
    model: Transformer,
    tensors: dict[str, TensorInfo],
    dtype: torch.dtype,
    device: torch.device,
    mode: str = "none",
    group: int = DEFAULT_GROUP,
    targets: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Every tensor the model needs, converted; weights of `targets` quantized as they are read."""
    cfg = model.config
    prequantized = (cfg.quantization_config or {}).get("quant_method") == "demi"
    expected = dict(model.state_dict(keep_vars=True))
    tied_head = cfg.tie_word_embeddings and "lm_head.weight" not in tensors
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    if prequantized:  # stored names: <linear>.weight plus .weight_scale (and .weight_zero for int4)
        for name in targets:
            expected[f"{name}.weight"] = None  # no float shape to check: the stored layout differs
            if f"{name}.weight" in tensors and f"{name}.weight_scale" not in tensors:
                raise CheckpointError(f"quantized checkpoint is missing {name}.weight_scale")
            for extra in ("weight_scale", "weight_zero"):
                if f"{name}.{extra}" in tensors:
                    expected[f"{name}.{extra}"] = None
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(
            f"checkpoint is missing {', '.join(missing[:3])}{more} (does config.json match the weights?)"
        )
    unexpected = [k for k in tensors if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        log.info("ignoring %d checkpoint tensors the decoder does not use, e.g. %s", len(unexpected), unexpected[0])
    for name, param in expected.items():
        if param is not None and tuple(tensors[name].shape) != tuple(param.shape):
            raise CheckpointError(
                f"weight {name} has shape {list(tensors[name].shape)} but the config implies {list(param.shape)}"
            )
    fp8 = [k for k in expected if tensors[k].dtype.startswith("F8_")]
    scale_names = {k: k[: -len("weight")] + "weight_scale_inv" for k in fp8}
    absent = [s for s in scale_names.values() if s not in tensors]
    if absent:
        raise CheckpointError(f"fp8 weight without its block scales: {absent[0]} is not in the checkpoint")
    scales = dict(iter_tensors(tensors, list(scale_names.values())))  # small: one per 128x128 block
    block = (cfg.quantization_config or {}).get("weight_block_size")
    quantize_now = {f"{n}.weight" for n in targets} if mode in ("int8", "int4") and not prequantized else set()
    own_head = tied_head and "lm_head" in targets
    stage = f"quantizing weights to {mode}" if quantize_now else "reading weights"
    total = len(expected) + own_head
    report(stage, 0, total)
    state: dict[str, torch.Tensor] = {}
    for done, (name, t) in enumerate(iter_tensors(tensors, list(expected)), 1):
        if name in scale_names:
            try:
                t = dequantize_fp8_blocks(t, scales[scale_names[name]], block)
            except CheckpointError as exc:
                raise CheckpointError(f"{name}: {exc}") from None
        if prequantized and expected[name] is None:
            state[name] = t.to(device, copy=True)  # stored quantized tensors keep their dtype
        elif name in quantize_now:
            state.update(quantized_tensors(name, t, mode, group))
        else:
            keep_fp32 = name.endswith("e_score_correction_bias")
            # copy=True: safetensors returns lazily paged mmap views; file-backed pages can be evicted
            # and faulted back in mid-decode (a latency spike), so the weights get memory of their own.
            state[name] = t.to(device=device, dtype=torch.float32 if keep_fp32 else dtype, copy=True)
        report(stage, done, total)
    if own_head:  # the LM head gets its own quantized copy of the embedding
        emb = state["model.embed_tokens.weight"]
        state.update(
            quantized_tensors("lm_head.weight", emb, mode, group)
            if mode in ("int8", "int4")
            else {"lm_head.weight": emb}
        )
        report(stage, total, total)
    return state


def save_model(model: Transformer, out_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors in Hugging Face layout (tied lm_head stored once)."""
    out_dir = Path(out_dir)
    state = unfuse_state_dict(dict(model.state_dict()), model.config)
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_checkpoint(state, out_dir, max_shard_bytes)
    (out_dir / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2), encoding="utf-8")
