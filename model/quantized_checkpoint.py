"""`demi models quantize`: write a checkpoint that loads quantized without quantizing again.

Start-up matters for an editor plugin: quantizing a model at every load costs seconds, reading
int8 from disk costs nothing extra. Everything that is not a quantized projection is stored
in bf16, the dtype the quantized model runs in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from demi.model.checkpoint import read_index, save_checkpoint
from demi.model.config import load_config
from demi.model.decoder import Transformer
from demi.model.errors import DemiUserError
from demi.model.loading import _read_state, quantized_linears
from demi.model.quantize import DEFAULT_GROUP, quantization_config

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


def quantize_checkpoint(
    src: str | Path, dst: str | Path, mode: str, group: int = DEFAULT_GROUP, max_shard_bytes: int = 2 * 2**30
) -> Path:
    """Quantize `src` (any loadable checkpoint, FP8 included) into `dst`; returns `dst`."""
    src, dst = Path(src), Path(dst)
    if mode not in ("int8", "int4"):
        raise DemiUserError(f"demi models quantize writes int8 or int4, not {mode!r}")
    if dst.exists() and any(dst.iterdir()):
        raise DemiUserError(f"{dst}: exists and is not empty; choose a new directory")
    cfg = load_config(src)
    quantized = cfg.quantization_config or {}
    if quantized.get("quant_method") == "demi":
        raise DemiUserError(f"{src}: already quantized by Demi ({quantized['mode']})")
    with torch.device("meta"):
        model = Transformer(cfg)
    state = _read_state(
        model, read_index(src), torch.bfloat16, torch.device("cpu"), mode, group, quantized_linears(model)
    )
    save_checkpoint(state, dst, max_shard_bytes)
    raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
    raw["quantization_config"] = quantization_config(mode, group)
    raw["torch_dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst
