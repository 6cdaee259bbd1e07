"""Safetensors checkpoints: find the files, validate them from their headers, read and write tensors.

Only safetensors and JSON are ever read. Pickle is never opened, not even through
`torch.load(weights_only=True)`: that restricted unpickler has had bypasses (CVE-2025-32434), and
a format that needs one is not worth the risk for an offline tool; a directory that has only
pickle weights (`pytorch_model.bin`, `*.pt`, `*.pkl`, ...) is a one-line error that says to
convert it. Pickle files next to safetensors weights are never opened (Hugging Face repos often
ship both). Headers are parsed by hand (8-byte length + JSON) and every entry is checked (dtype,
shape, byte range) so a checkpoint is validated and sized before a single weight is read: a
truncated download or a tensor whose bytes do not match its shape is caught here, not halfway
through loading.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from demi.model.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}
# Weight formats Demi does not read, by suffix: named in the error when they are all there is.
FOREIGN_WEIGHTS = {
    ".bin": "PyTorch pickle",
    ".pt": "PyTorch pickle",
    ".pth": "PyTorch pickle",
    ".ckpt": "pickle",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".joblib": "pickle",
    ".gguf": "GGUF",
    ".ggml": "GGML",
    ".h5": "Keras HDF5",
    ".msgpack": "Flax msgpack",
    ".onnx": "ONNX",
    ".npz": "NumPy",
    ".npy": "NumPy",
}


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, from the shard index when there is one."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid shard index ({exc})") from exc
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{model_dir}: shard(s) listed in {INDEX_NAME} are missing: " + ", ".join(missing[:5])
            )
        return files
    if (model_dir / SINGLE_NAME).is_file():
        return [model_dir / SINGLE_NAME]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        foreign = sorted(p.name for p in model_dir.iterdir() if p.suffix.lower() in FOREIGN_WEIGHTS)
        if foreign:
            kinds = sorted({FOREIGN_WEIGHTS[Path(n).suffix.lower()] for n in foreign})
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            pickle = any("pickle" in k for k in kinds)
            why = "Demi never unpickles weights (unpickling can run code)" if pickle else "Demi reads only safetensors"
            raise CheckpointError(
                f"{model_dir}: no *.safetensors weights, only {', '.join(foreign[:3])}{more} "
                f"({', '.join(kinds)}); {why}: convert them to safetensors first"
            )
        raise CheckpointError(f"{model_dir}: no *.safetensors weights found")
    return files


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of one file; checks every entry and that the data is all there."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (n,) = struct.unpack("<Q", raw_len)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path}: truncated or corrupt safetensors header")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    out, data_end = {}, 0
    for name, meta in header.items():
        try:
            dtype, shape, (lo, hi) = meta["dtype"], tuple(meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt entry for {name!r} in the header") from None
        if (
            not all(type(d) is int and d >= 0 for d in shape)
            or not all(type(o) is int for o in (lo, hi))
            or not 0 <= lo <= hi
        ):
            raise CheckpointError(
                f"{path}: corrupt entry for {name!r} in the header (shape {meta['shape']}, "
                f"offsets {meta['data_offsets']})"
            )
        info = TensorInfo(path, dtype, shape)
        # A dtype not listed (packed 4-bit, complex, ...) is left to safetensors, and only matters
        # if the decoder needs that tensor.
        if dtype in DTYPE_BYTES and hi - lo != info.numel * DTYPE_BYTES[dtype]:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {hi - lo} bytes for shape {list(shape)} "
                f"in {dtype} ({info.numel * DTYPE_BYTES[dtype]} expected)"
            )
        data_end = max(data_end, hi)
        out[name] = info
    if 8 + n + data_end > size:
        raise CheckpointError(
            f"{path}: truncated: {size} bytes on disk, the header needs {8 + n + data_end} (an interrupted download?)"
        )
    return out


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "strerror", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_index(model_dir: Path) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint, by name, across shards."""
    tensors: dict[str, TensorInfo] = {}
    for path in checkpoint_files(model_dir):
        for name, info in read_header(path).items():
            if name in tensors:
                raise CheckpointError(
                    f"{model_dir}: tensor {name!r} is in both {tensors[name].file.name} and "
                    f"{path.name}; which one is meant is unclear"
                )
            tensors[name] = info
    return tensors


def iter_tensors(tensors: dict[str, TensorInfo], names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) for `names`, opening each shard once."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(tensors[name].file, []).append(name)
    for path, file_names in by_file.items():
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in file_names:
                    yield name, f.get_tensor(name)
        except (OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read tensors ({_first_line(exc)})") from exc


def dequantize_fp8_blocks(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | list[int] | None = None
) -> torch.Tensor:
    """FP8 (e4m3) weight with one scale per block, as MiniMax-M2 and DeepSeek ship.

    `block` is quantization_config's `weight_block_size` (128x128 when not given). It cannot be
    inferred from the scale's shape: a 320-row weight has 3 row blocks of 128, 128 and 64 rows.
    """
    out_dim, in_dim = weight.shape
    bo, bi = (int(b) for b in (block or (128, 128)))
    if tuple(scale_inv.shape) != (-(-out_dim // bo), -(-in_dim // bi)):
        raise CheckpointError(
            f"fp8 block scales of shape {list(scale_inv.shape)} do not fit a weight of "
            f"shape {[out_dim, in_dim]} in {bo}x{bi} blocks"
        )
    scale = scale_inv.float().repeat_interleave(bo, 0)[:out_dim].repeat_interleave(bi, 1)[:, :in_dim]
    return weight.float() * scale


def save_checkpoint(state: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int | None = None) -> None:
    """Write safetensors (sharded with an index past `max_shard_bytes`), atomically per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    if len(shards) == 1:
        _atomic_save(shards[0], out_dir / SINGLE_NAME)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _atomic_save(shard, out_dir / fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp = out_dir / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=2), encoding="utf-8")
    os.replace(tmp, out_dir / INDEX_NAME)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
