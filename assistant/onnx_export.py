"""ONNX for the front ends: `demi models export --onnx` and `demi bench --engine onnxruntime`
(the engine's side is model/onnx_export.py and model/onnx_runner.py)."""

from __future__ import annotations

import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from demi.assistant.benchmark import model_dir_for_bench
from demi.model.config import load_config
from demi.model.errors import DemiUserError
from demi.model.onnx_export import OPSET, export_onnx, refusal, require_onnx
from demi.model.onnx_runner import bench_onnx
from demi.model.registry import resolve_model_dir
from demi.model.threads import use_physical_cores

VARIANTS = ("fp32", "int8")


def export(src: str, dst: str, int8: bool = True, opset: int | None = None) -> dict[str, Any]:
    """Export model `src` (a name, directory or cached hub id) into the new directory `dst`."""
    return export_onnx(resolve_model_dir(src, download=False), dst, int8, opset or OPSET)


def check_exportable(name: str | None) -> Path:
    """The bench's model directory, once it is known that it exports and onnxruntime is installed:
    a one-line user error otherwise, before anything is measured."""
    path = model_dir_for_bench(name)
    if why := refusal(load_config(path)):
        raise DemiUserError(why)
    require_onnx()
    return path


def bench_onnxruntime(path: Path, prompt_tokens: int, new_tokens: int, runs: int) -> dict[str, Any]:
    """Export `path` to a temporary directory and time onnxruntime on its fp32 and int8 graphs, with
    bench.py's prompt and the engine's thread count."""
    threads = use_physical_cores()
    with tempfile.TemporaryDirectory(prefix="demi-onnx-") as tmp:
        written = export_onnx(path, Path(tmp) / "onnx", int8=True)
        result: dict[str, Any] = bench_onnx(written["dir"], VARIANTS, prompt_tokens, new_tokens, runs, threads)
    result.update(
        onnxruntime=metadata.version("onnxruntime"),
        opset=written["opset"],
        export_s=written["seconds"],
        threads=threads,
    )
    return result
