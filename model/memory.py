"""Inference memory on a CPU: an estimate per component, and the resident memory a fresh process
measures after loading the model and after a prefill of the whole context (`demi models memory`).

The estimate follows what `load_model` and `LocalModel` build on a CPU, from the config, the
quantization mode and the kernel plan (not the checkpoint's storage figures of `info.weight_bytes`):

- ``runtime``: the interpreter, torch, Demi and the libraries a load pulls in (building the model on
  torch's meta device imports sympy and some 800 modules: about 70 MiB), ``RUNTIME_BYTES``, measured
  with torch 2.13's CPU build on Linux. Another build of torch differs; the measured figure says by how much.
- ``tokenizer``: the `tokenizers` object, about 2.6 times tokenizer.json plus 3 MiB (fitted on
  Demi's 4k-token BPE, 4.4 MiB, and Qwen2.5's 151k-token one, 49 MiB).
- ``weights``: every tensor of the model as loaded: in the activation dtype unquantized (fp32 on a
  CPU without bf16 units; a tied LM head is the embedding); quantized, each projection's
  `Int8Linear` (int8 weight, fp32 and bf16 scales, a bias in bf16 and fp32) or `Int4Linear` (the
  native kernels' packing with fp32 scales and offsets, or torch's with bf16 scales and zeros and
  rows padded to 16), and the LM head's own quantized copy of a tied embedding (an int8 head of 4096
  rows or more is a `RescoredHead`: the int8 rows plus an int4 shadow); embeddings and norms stay in
  the activation dtype.
- ``kv``: the KV cache (or a lightning layer's state) of one sequence at ``context`` positions, in
  the model's dtype (`info.cache_bytes`): allocated at the first request, whole.
- ``activations``: what a prefill chunk (`engine.prefill_chunk_for` rows) leaves resident above the
  model and its KV cache at its peak: ``12 H + 7 I`` values a row (``ACT_PER_ROW_H``,
  ``ACT_PER_ROW_I``: the live minimum is ``2 H + 4 I``, the rest attention's copies that the
  allocator keeps), ``4 I`` more with the int8mm prefill, the rotary table, and the float copy of the
  largest weight a prefill dequantizes per call (int8 with an fp32/bf16 prefill beyond the kept
  copies, int4 with a native decode and a float prefill).
- ``caches``: what the kernels keep after a prefill: int8 layers with an fp32/bf16 prefill keep a
  float copy of their weight, in layer order while `quantize.PREFILL_COPY_BUDGET` (96 MiB) lasts.
- ``load_transient``: what a load holds above the loaded model at its peak: the checkpoint's pages
  (safetensors maps the file; every page read stays resident until the file is closed, and counts in
  RSS as file-backed memory the kernel could drop) and, quantizing while loading, the temporaries of
  the largest matrix (its fp32 copy if stored in half precision, two fp32 intermediates, the integer
  result: the tied LM head's copy is quantized last, from the fp32 embedding, while the file is still
  mapped). Not counted, and not predictable: freed temporaries the allocator keeps. On the 0.5B
  shape quantizing to int8 from an fp32 file, two identical loads peaked 1.7 GiB apart (4.1 and
  5.8 GiB), so the load's peak is reported beside its estimate but not held to a bound.

The measurement (`measure`, run by `profile` in a fresh process so the figures are the model's own)
reads /proc/self/status: VmRSS, and VmHWM for peaks, reset between phases (`/proc/self/clear_refs`),
split into anonymous and file-backed pages. "held" is the RSS after glibc's `malloc_trim`: what the
process still uses, not what the C allocator freed and kept for reuse (after a load that is up to
1.7 GiB on the 0.5B shape, and it varies run to run: torch's CPU allocator is glibc's malloc).
Tensor bytes are counted too (every tensor the modules hold, the KV cache, the kept prefill copies):
the difference to RSS is the allocator's and the libraries'.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from demi.model.config import ModelConfig
from demi.model.errors import DemiError, DemiUserError
from demi.model.info import INT4_GROUP_SIZE, cache_bytes, tensor_groups

MiB = 2**20
RUNTIME_BYTES = 300 * MiB  # Python + torch 2.13 CPU + Demi + what a load imports (measured, see above)
TOKENIZER_FACTOR, TOKENIZER_BASE = 2.6, 3 * MiB
# Values per prefill row a layer's forward leaves resident at its peak, fitted on demi-tiny (1,023 rows)
# and the 0.5B shape (512 rows) in fp32. The live minimum is 2H + 4I (the residual stream, its normed
# copy, the MLP's gate and up projections and their product); the rest is attention's copies (q, k, v
# made contiguous, RoPE's temporaries, the output and its transposed copy) that the allocator keeps
# for reuse instead of returning. int8mm prefill adds its int32 and rescaled outputs.
ACT_PER_ROW_H, ACT_PER_ROW_I, INT8MM_PER_ROW_I = 12, 7, 4
NATIVE_BLOCK = 32  # native_kernels.QBLOCK: K and int4 groups in multiples of it (no torch import here)
_DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2}  # safetensors' float dtypes a checkpoint stores weights in
_STATUS = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon", "RssFile": "file"}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component (see the module docstring) and the totals each phase should reach."""

    quant: str
    dtype: str
    context: int
    prefill_rows: int
    runtime: int
    tokenizer: int
    weights: int
    kv: int
    activations: int
    caches: int
    load_transient: int

    @property
    def after_load(self) -> int:
        return self.runtime + self.tokenizer + self.weights

    @property
    def load_peak(self) -> int:
        return self.after_load + self.load_transient

    @property
    def prefill_peak(self) -> int:
        return self.after_load + self.kv + self.activations + self.caches

    @property
    def after_prefill(self) -> int:
        return self.after_load + self.kv + self.caches

    def as_dict(self) -> dict[str, Any]:
        totals = {k: getattr(self, k) for k in ("after_load", "load_peak", "prefill_peak", "after_prefill")}
        return {**asdict(self), "totals": totals}


def _int4_bytes(n: int, k: int, group: int, native: bool) -> int:
    """An Int4Linear's buffers: native packing (K/2 bytes a row, half scale and offset per group) or
    torch's (rows padded to 16, bf16 scale and zero per group)."""
    if native and group % NATIVE_BLOCK == 0 and k % NATIVE_BLOCK == 0:
        return n * k // 2 + 4 * n * (k // group)
    rows = n + (-n % 16)
    return rows * k // 2 + 4 * rows * (k // group)


def _quantized_bytes(n: int, k: int, mode: str, group: int, native: bool, shadow_native: bool, head: bool) -> int:
    """One quantized projection [n, k] as `load_model` builds it on a CPU (bias not included)."""
    if mode == "int4":
        g = next((g for g in (group, 128, 64, 32) if k % g == 0), None)
        if g is not None:
            return _int4_bytes(n, k, g, native)
    int8 = n * k + 4 * n + 2 * n  # int8 weight, fp32 scale, bf16 scale
    if head and n >= 4096:  # RescoredHead: the int8 rows and an int4 shadow (the plan's first guess)
        g = next(g for g in (64, 128, 32) if k % g == 0) if k % 32 == 0 else 0
        return int8 + (_int4_bytes(n, k, g, shadow_native) if g else 0)
    return int8


def _projections(cfg: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(name, rows, columns, count) of every quantizable projection, the tied LM head's copy included."""
    out = [(g.name, g.shape[0], g.shape[1], g.count) for g in tensor_groups(cfg) if g.kind in ("linear", "lm_head")]
    if cfg.tie_word_embeddings:
        out.append(("lm_head.weight", cfg.vocab_size, cfg.hidden_size, 1))
    return out


def weight_bytes_loaded(
    cfg: ModelConfig,
    mode: str,
    act_bytes: int = 4,
    native: bool = True,
    shadow_native: bool = True,
    group: int = INT4_GROUP_SIZE,
) -> int:
    """Every tensor `load_model` keeps on a CPU for `mode` (none, int8, int4); see the docstring."""
    groups = tensor_groups(cfg)
    projected = {g.name[: -len(".weight")] for g in groups if g.kind in ("linear", "lm_head")}
    total = 0
    for g in groups:
        if mode != "none" and g.kind in ("linear", "lm_head"):
            continue  # counted below, quantized
        if g.kind == "buffer":  # MiniMax's correction bias: fp32
            per = 4 * g.numel
        elif g.kind == "bias" and mode != "none" and g.name[: -len(".bias")] in projected:
            per = 6 * g.numel  # a quantized projection's bias, bf16 and fp32
        else:
            per = act_bytes * g.numel
        total += per * g.count
    if mode != "none":
        for name, n, k, count in _projections(cfg):
            head = name == "lm_head.weight"
            total += count * _quantized_bytes(n, k, mode, group, native, shadow_native, head)
    return total


def _activation_bytes(cfg: ModelConfig, rows: int, act_bytes: int, int8mm: bool = False) -> int:
    """What a prefill of `rows` tokens adds above the loaded model besides the KV cache (see the docstring)."""
    inter = cfg.intermediate_size * (max(1, cfg.num_experts_per_tok) if cfg.is_moe else 1)
    per_row = ACT_PER_ROW_H * cfg.hidden_size + (ACT_PER_ROW_I + (INT8MM_PER_ROW_I if int8mm else 0)) * inter
    rotary = 2 * min(cfg.max_position_embeddings, 4096) * cfg.rotary_dim * 4
    return rows * per_row * act_bytes + rotary


def _prefill_copies(cfg: ModelConfig, copy_bytes: int, budget: int) -> int:
    """Bytes of the float weight copies int8 layers keep, claimed in layer order within `budget`."""
    per_layer = [n * k * copy_bytes for g in tensor_groups(cfg) if g.kind == "linear" for n, k in [g.shape]]
    layers = cfg.num_hidden_layers
    shapes = sorted(per_layer)  # each layer's projections; claimed one by one, layer after layer
    held = 0
    for _ in range(layers):
        for nbytes in shapes:
            if held + nbytes <= budget:
                held += nbytes
    return held


def estimate(
    cfg: ModelConfig,
    mode: str,
    context: int,
    *,
    plan: dict[str, Any] | None = None,
    act_bytes: int = 4,
    prefill_rows: int = 512,
    tokenizer_file_bytes: int = 0,
    checkpoint_bytes: int = 0,
    stored_bytes_per_weight: int = 4,
    prequantized: bool = False,
    copy_budget: int = 96 * MiB,
) -> MemoryEstimate:
    """The estimate for `mode` at `context` with a kernel `plan` (`KernelPlan.as_dict()`; None unquantized)."""
    decode = (plan or {}).get("decode", "torch")
    prefill = (plan or {}).get("prefill", "fp32")
    native = decode not in ("torch", "fp32", "bf16", "int8mm")
    shadow_native = native or bool((plan or {}).get("native_available", native))
    weights = weight_bytes_loaded(cfg, mode, act_bytes, native, shadow_native)
    rows = max(1, min(prefill_rows, context - 1))
    if native and rows < int((plan or {}).get("float_prefill_rows", 0)):
        prefill = decode  # too few rows to pay for a float weight: the decode kernel runs it (quantize.py)
    largest = max((n * k for _, n, k, _ in _projections(cfg)), default=0)
    layer_largest = max((g.shape[0] * g.shape[1] for g in tensor_groups(cfg) if g.kind == "linear"), default=0)
    caches = 0
    transient = 0
    if mode == "int8" and prefill in ("fp32", "bf16"):
        caches = _prefill_copies(cfg, 4 if prefill == "fp32" else 2, copy_budget)
        if caches < sum(n * k * c for name, n, k, c in _projections(cfg) if name != "lm_head.weight") * (
            4 if prefill == "fp32" else 2
        ):
            transient = layer_largest * 4
    elif mode == "int4" and native and prefill in ("fp32", "bf16", "torch"):
        # the dequantized weight, written by the native library straight in the prefill's dtype
        transient = layer_largest * (2 if prefill == "bf16" else 4)
    activations = _activation_bytes(cfg, rows, act_bytes, prefill == "int8mm") + transient
    load = checkpoint_bytes
    if mode in ("int8", "int4") and not prequantized:
        # the largest matrix's fp32 intermediates and integer result; a half-precision weight read from
        # the file is converted to fp32 first, a tied head is quantized from the fp32 embedding in memory
        tied_largest = cfg.tie_word_embeddings and largest == cfg.vocab_size * cfg.hidden_size
        temps = (8 + 1 + (4 if stored_bytes_per_weight < 4 and not tied_largest else 0)) * largest
        head_copy = (
            _quantized_bytes(cfg.vocab_size, cfg.hidden_size, mode, 64, native, shadow_native, True)
            if cfg.tie_word_embeddings
            else 0
        )
        load += temps - head_copy
    return MemoryEstimate(
        quant=mode,
        dtype="float32" if act_bytes == 4 else "bfloat16",
        context=context,
        prefill_rows=rows,
        runtime=RUNTIME_BYTES,
        tokenizer=int(TOKENIZER_FACTOR * tokenizer_file_bytes + TOKENIZER_BASE) if tokenizer_file_bytes else 0,
        weights=weights,
        kv=cache_bytes(cfg, context, act_bytes),
        activations=activations,
        caches=caches,
        load_transient=max(0, load),
    )


# --- measurement ------------------------------------------------------------------------------


def process_memory() -> dict[str, int]:
    """This process's resident memory in bytes (/proc/self/status): rss, peak, anon, file."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in _STATUS:
                    out[_STATUS[key]] = int(value.split()[0]) * 1024
    except OSError:  # not Linux: the peak from getrusage (KiB on Linux, bytes on macOS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak"] = out["rss"] = peak if sys.platform == "darwin" else peak * 1024
    return out


def reset_peak() -> bool:
    """Set VmHWM back to the current RSS, so the next phase's peak is its own (Linux 4.0 and later)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim() -> bool:
    """Give the C allocator's free memory back to the system (glibc's `malloc_trim`)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _snapshot(started: float | None = None) -> dict[str, Any]:
    """RSS, peak and their split, then "held": the RSS once the allocator gave back what it kept."""
    m: dict[str, Any] = process_memory()
    trim()
    m["held"] = process_memory().get("rss", m.get("rss", 0))
    if started is not None:
        m["seconds"] = round(time.perf_counter() - started, 2)
    return m


def tensor_bytes(module: Any) -> int:
    """Bytes of every tensor the modules hold: parameters, buffers and plain tensor attributes
    (an Int8Linear's bf16 scale and fp32 bias, its kept prefill copy), each storage once."""
    import torch

    seen: dict[int, int] = {}
    for m in module.modules():
        values = list(m._parameters.values()) + list(m._buffers.values()) + list(vars(m).values())
        for t in values:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def measure(model_dir: str | Path, quant: str = "none", context: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Load `model_dir` in this process and prefill `context - 1` tokens, recording memory at each
    phase. Meant for a fresh process (`profile` runs one): the figures include whatever it held before."""
    import torch

    from demi.model import kernel_plan
    from demi.model.decoder import Transformer
    from demi.model.engine import LocalModel
    from demi.model.generate import GenerationRequest
    from demi.model.loading import checked_config, load_model
    from demi.model.threads import use_physical_cores
    from demi.model.tokenizer import Tokenizer

    model_dir = Path(model_dir)
    use_physical_cores()
    cfg = checked_config(model_dir)
    if context < 2 or context > cfg.context_limit:
        raise DemiUserError(f"context must be between 2 and the model's {cfg.context_limit}, got {context}")
    if quant in ("int8", "int4"):
        kernel_plan.plan_for(cfg, quant)  # cached by the caller; a miss is measured here, before the baseline
    with torch.device("meta"):
        Transformer(cfg)  # the modules a load imports (the runtime's, not the weights')
    tokenizer = Tokenizer.from_dir(model_dir)
    phases = {"runtime": _snapshot()}
    resettable = reset_peak()
    started = time.perf_counter()
    model = load_model(model_dir, quant=quant, context=context)
    phases["load"] = _snapshot(started)
    local = LocalModel(model, tokenizer, model_dir.name, model_dir, context)
    weights = tensor_bytes(model)
    reset_peak()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, min(cfg.vocab_size, 4000), (context - 1,), generator=gen).tolist()
    started = time.perf_counter()
    for _ in local.run(GenerationRequest(ids, max_new_tokens=1)):
        pass
    phases["prefill"] = _snapshot(started)
    plan = getattr(model, "kernel_plan", None)
    plan_dict = (
        None if plan is None else {**plan.as_dict(), "native_available": kernel_plan.any_native_library() is not None}
    )
    return {
        "phases": phases,
        "peaks_per_phase": resettable,
        "tensors": {
            "weights": weights,
            "caches": tensor_bytes(model) - weights,
            "kv": sum(slot.cache.nbytes() for slot in local.prefix_cache.slots),
        },
        "quant": str(getattr(model, "quantization", "none")),
        "dtype": str(model.dtype).replace("torch.", ""),
        "plan": plan_dict,
        "prefill_rows": min(local.prefill_chunk, context - 1),
        "threads": torch.get_num_threads(),
    }


def measure_in_child(model_dir: Path, quant: str, context: int, timeout: float = 1800) -> dict[str, Any]:
    """`measure` in a fresh interpreter, so its peaks are the model's own and nothing of this process's."""
    cmd = [sys.executable, "-m", "demi.model.memory", str(model_dir), quant, str(context)]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise DemiError(f"measuring {model_dir.name} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        message = lines[-1] if lines else f"exit status {proc.returncode}"
        raise (DemiUserError if proc.returncode == 2 else DemiError)(message.removeprefix("error: "))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def profile(model_dir: str | Path, quant: str = "none", context: int = 1024) -> dict[str, Any]:
    """What a fresh process measures for `model_dir` at `quant` and `context`, beside the estimate for
    the kernel plan that load chose (the plan decides layouts: native or torch int4 packing, kept copies)."""
    from demi.model.checkpoint import read_index
    from demi.model.engine import prefill_chunk_for
    from demi.model.info import count_parameters
    from demi.model.loading import checked_config
    from demi.model.quantize import PREFILL_COPY_BUDGET

    model_dir = Path(model_dir)
    cfg = checked_config(model_dir)
    if quant not in ("none", "int8", "int4"):
        raise DemiUserError(f"memory profiles cover --quant none, int8 and int4 on a CPU, not {quant!r}")
    if context < 2 or context > cfg.context_limit:
        raise DemiUserError(f"--context must be between 2 and the model's {cfg.context_limit}, got {context}")
    tensors = read_index(model_dir)
    measured = measure_in_child(model_dir, quant, context)
    plan = measured["plan"]
    qc = cfg.quantization_config or {}
    float_bytes = [_DTYPE_BYTES[t.dtype] for t in tensors.values() if t.dtype in _DTYPE_BYTES]
    params = count_parameters(cfg).total
    est = estimate(
        cfg,
        measured["quant"],
        context,
        plan=plan,
        act_bytes=2 if measured["dtype"] == "bfloat16" else 4,
        prefill_rows=prefill_chunk_for(params),
        tokenizer_file_bytes=_size(model_dir / "tokenizer.json"),
        checkpoint_bytes=sum(_size(f) for f in {t.file for t in tensors.values()}),
        stored_bytes_per_weight=max(set(float_bytes), key=float_bytes.count) if float_bytes else 4,
        prequantized=qc.get("quant_method") == "demi",
        copy_budget=PREFILL_COPY_BUDGET,
    )
    return {
        "model": str(model_dir),
        "quant": measured["quant"],
        "dtype": measured["dtype"],
        "context": context,
        "parameters": params,
        "estimate": est.as_dict(),
        "measured": measured,
        "comparison": compare(est, measured),
    }


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def compare(est: MemoryEstimate, measured: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Estimate against measurement for each total (bytes, and the estimate's error as a fraction)."""
    p = measured["phases"]
    pairs = {
        "runtime": (est.runtime + est.tokenizer, p["runtime"]["held"]),
        "after_load": (est.after_load, p["load"]["held"]),
        "load_peak": (est.load_peak, p["load"]["peak"]),
        "prefill_peak": (est.prefill_peak, p["prefill"]["peak"]),
        "after_prefill": (est.after_prefill, p["prefill"]["held"]),
        "weights": (est.weights, measured["tensors"]["weights"]),
        "model_after_load": (est.weights, p["load"]["held"] - p["runtime"]["held"]),
        "prefill_above_load": (est.kv + est.activations + est.caches, p["prefill"]["peak"] - p["load"]["held"]),
    }
    return {
        k: {"estimate": e, "measured": m, "error": round((e - m) / m, 4) if m else math.nan}
        for k, (e, m) in pairs.items()
    }


def main(argv: list[str]) -> int:
    """`python -m demi.model.memory MODEL_DIR QUANT CONTEXT`: one JSON line of `measure` (the child)."""
    try:
        out = measure(argv[0], argv[1], int(argv[2]))
    except DemiUserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
