"""Load a checkpoint into the decoder: check it fits, build on the meta device, assign weights.

Nothing is allocated before the memory estimate says yes, and no weight is initialised
twice: the module tree is built on `meta` and every tensor is the checkpoint's own,
converted once to the dtype asked for.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .checkpoint import TensorInfo, dequantize_fp8_blocks, iter_tensors, read_index, save_checkpoint
from .config import ModelConfig, load_config
from .decoder import Transformer
from .errors import CheckpointError, DemiUserError, InsufficientMemoryError

log = logging.getLogger("demi.model")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# Checkpoint tensors that are not weights of the decoder and are safe to skip.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".weight_scale_inv", ".input_scale")


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


def estimate_bytes(tensors: dict[str, TensorInfo], cfg: ModelConfig, dtype: torch.dtype,
                   context: int) -> int:
    """Weights in `dtype` plus a KV cache for `context` tokens plus 10% working room."""
    elem = torch.tensor([], dtype=dtype).element_size()
    weights = sum(t.numel for name, t in tensors.items() if not name.endswith(_IGNORED_SUFFIXES))
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * context * elem
    return int((weights * elem + kv) * 1.1)


def check_fits(need: int, device: torch.device, what: str) -> None:
    if os.environ.get("DEMI_SKIP_MEMORY_CHECK"):
        return
    free = available_memory(device)
    if need > free:
        raise InsufficientMemoryError(
            f"{what} needs about {need / 2**30:.1f} GiB on {device.type} but only {free / 2**30:.1f} GiB "
            "is free; try --dtype bfloat16, a quantized mode (--quant int8 or int4) or a smaller model")


def load_model(model_dir: str | Path, dtype: str | torch.dtype | None = "auto",
               device: str | torch.device | None = "cpu", context: int | None = None) -> Transformer:
    """Build the decoder for `model_dir` and fill it with the checkpoint's weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    cfg = load_config(model_dir)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = resolve_dtype(dtype, device, cfg)
    tensors = read_index(model_dir)
    ctx = min(context or cfg.context_limit, cfg.context_limit)
    check_fits(estimate_bytes(tensors, cfg, dtype, ctx), device, f"{model_dir.name} in {dtype}".replace(
        "torch.", ""))
    with torch.device("meta"):
        model = Transformer(cfg)
    state = _read_state(model, tensors, dtype, device)
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def _read_state(model: Transformer, tensors: dict[str, TensorInfo], dtype: torch.dtype,
                device: torch.device) -> dict[str, torch.Tensor]:
    expected = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"checkpoint is missing {', '.join(missing[:3])}{more} "
                              f"(does config.json match the weights?)")
    unexpected = [k for k in tensors if k not in expected and not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        log.info("ignoring %d checkpoint tensors the decoder does not use, e.g. %s",
                 len(unexpected), unexpected[0])
    for name, param in expected.items():
        if tuple(tensors[name].shape) != tuple(param.shape):
            raise CheckpointError(f"weight {name} has shape {list(tensors[name].shape)} but the config "
                                  f"implies {list(param.shape)}")
    fp8 = [k for k in expected if tensors[k].dtype.startswith("F8_")]
    scale_names = {k: k[: -len("weight")] + "weight_scale_inv" for k in fp8}
    absent = [s for s in scale_names.values() if s not in tensors]
    if absent:
        raise CheckpointError(f"fp8 weight without its block scales: {absent[0]} is not in the checkpoint")
    scales = dict(iter_tensors(tensors, list(scale_names.values())))  # small: one per 128x128 block
    block = (model.config.quantization_config or {}).get("weight_block_size")
    state = {}
    for name, t in iter_tensors(tensors, list(expected)):
        if name in scale_names:
            try:
                t = dequantize_fp8_blocks(t, scales[scale_names[name]], block)
            except CheckpointError as exc:
                raise CheckpointError(f"{name}: {exc}") from None
        keep_fp32 = name.endswith("e_score_correction_bias")
        state[name] = t.to(device=device, dtype=torch.float32 if keep_fp32 else dtype)
    return state


def save_model(model: Transformer, out_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors in Hugging Face layout (tied lm_head stored once)."""
    out_dir = Path(out_dir)
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_checkpoint(state, out_dir, max_shard_bytes)
    (out_dir / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2), encoding="utf-8")
