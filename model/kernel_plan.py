"""Which matmul kernels a quantized model uses on this CPU, decided by timing them here.

What is fastest depends on the CPU far more than on its class: a bf16 matmul is ~5x slower than
fp32 where bf16 is emulated (AVX2, AVX-512 without BF16/AMX) and faster where it is not, torch's
int8 GEMV is compute-bound on some cores and not on others. So on the first quantized load on a
machine, a short calibration (at most ~2 s) times the real candidates at the model's own matmul
shapes, for decode (one row; near ties between native paths go to the one whose CHECK_ROWS rows,
a speculative check or a batch step, run fastest) and for prefill (a block of rows), and picks the
fastest per phase:

  int8 decode:   torch's `_weight_int8pack_mm` | each native path this CPU runs (native_kernels)
  int8 prefill:  fp32 matmul of the dequantized weight | bf16 matmul | torch's int8 GEMM
                 (`int8mm`: activations to int8 per row, oneDNN's VNNI/AMX kernels) | each native path
  int4:          torch's int4 kernels (one layout for both phases) | a native path for decode with
                 the native path, an fp32 or bf16 matmul of the dequantized weight, or int8mm for
                 prefill

The activations (embeddings, norms, attention, the KV cache) stay fp32 whatever the prefill matmul:
a bf16 prefill converts each layer's rows for its matmul alone, so decode keeps the one-call native
stack (which takes fp32 rows: model/decode_stack.py) and a batched or speculative row stays bit for
bit its lone step. Only torch's own int4 kernels, which take bf16 rows, run bf16 activations.
Plans are cached as JSON in the user cache directory, one file per CPU model, flags, thread count,
torch version and kernel source; a corrupt or foreign file is ignored with a warning and replaced,
and a calibration interrupted by Ctrl-C writes nothing (the file is replaced atomically, after the
measurement), and one measured while other processes took more than a quarter of the CPU is used
but not cached. `DEMI_KERNEL` forces a kernel family (native_kernels.forced) and is part of the cache key.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from demi.model import native_kernels as nk
from demi.model.config import ModelConfig

log = logging.getLogger("demi.model")

# 5: int8 activations fp32 with a bf16 prefill; 6: rows_at_once; 7: int4 bf16; 8: C dequantize;
# 9: check rows rank decode near-ties; 10: int8 native kernels on packed weights (packed.c)
PLAN_VERSION = 10
CALIBRATION_SECONDS = 2.0
# Rows timed for prefill. Kernels rank differently at 64 rows than at the 512-row chunks a 0.5B
# model prefills in (the native int8 kernel beat fp32 at 64 and lost at 512, measured), so this is
# near the real regime at a cost the calibration budget allows.
PREFILL_ROWS = 256
PREFILL_CHUNK = 512  # rows a float prefill converts a weight for (the engine's smallest prefill chunk)
MAX_CALIBRATION_ELEMS = 8 * 2**20  # a weight shape is timed on at most this many elements (rows cut)
# A speculative check or a batch step runs a few rows through the decode path (tiles of rows where a
# path has them): native decode paths within CHECK_SLACK of the fastest lone step (near ties, such as
# avx2 and avx512vnni on an AMD EPYC Zen 4) are ranked by CHECK_ROWS rows (there the avx512vnni tiles
# took 44 ms for a 0.5B check of 5 rows against the avx2 tiles' 52, for a lone step within 4%). With
# the packed int8 kernels (packed.c) the two lone steps are equal (12.4 ms for the 0.5B layers, side by
# side) and 4 / 8 rows cost 14.3 / 20.0 ms on avx512vnni against 16.1 / 28.5 on avx2; `demi bench` decoded
# 66.5 / 54.1 tok/s on avx2 and 53.4 / 62.6 on avx512vnni in two rounds: lone steps this close are noise
# on a shared VM, check rows 2x apart are not. The calibration read them 18-29% apart, partly because
# the path timed right after torch's paid for it (fixed by turning the order, `_timed_together`); after
# the fix still 8-15% (avx512vnni 0.511 / 0.637 against avx2 0.446 / 0.590 ms a row a layer, two runs).
CHECK_ROWS, CHECK_SLACK = 8, 0.25
# The score that ranks int4 layouts: a 1,000-token prompt and 32 new tokens (a FIM request).
SCORE_PROMPT, SCORE_NEW = 1000, 32


# Prefill kernels that are torch's own matmuls rather than a native path's.
TORCH_PREFILLS = ("fp32", "bf16", "int8mm")
# A native decode candidate read one weight row at a time (rows_at_once 1) is named path + this.
ONE_ROW = "/1row"


@dataclass
class KernelPlan:
    mode: str  # int8 | int4
    activations: str  # float32 | bfloat16
    decode: str  # torch | a native path name
    prefill: str  # fp32 | bf16 | int8mm | torch | a native path name
    # A float prefill converts each weight that has no kept copy once per call; below this many rows
    # that costs more than the native kernel saves, so such shorter prefills take the decode kernel.
    float_prefill_rows: int = 0
    # weight rows the native decode kernel reads side by side: 4 or 1 (native_kernels.linear_q8's one_row)
    rows_at_once: int = 4
    source: str = "guess"  # measured | cache | guess | busy (measured under load: the guess's kernels)
    seconds: float = 0.0
    # share of the machine's CPU time other processes took while this was measured (None: unknown)
    others_share: float | None = None
    times_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> candidate -> ms

    @property
    def activation_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.activations == "bfloat16" else torch.float32

    def as_dict(self) -> dict:
        return asdict(self)


def has_bf16_hardware() -> bool:
    """Whether bf16 matmuls run on real units here (AVX-512 BF16, AMX, ARM BF16), as a first guess."""
    flags = nk.cpu_flags()
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def any_native_library() -> ctypes.CDLL | None:
    """The first native library this CPU loads (for int8mm's glue), or None."""
    return next((lib for p in nk.candidate_paths() if (lib := nk.library(p)) is not None), None)


@cache
def guess(mode: str) -> KernelPlan:
    """A plan without measuring: what modules built outside `load_model` use (tests, tools)."""
    bf16 = has_bf16_hardware()
    decode = next((p for p in nk.candidate_paths() if nk.library(p) is not None), "torch")
    if mode == "int4":
        torch_int4 = decode == "torch"  # its kernels take bf16 rows
        return KernelPlan(
            "int4", "bfloat16" if bf16 and torch_int4 else "float32", decode, "torch" if torch_int4 else "fp32"
        )
    return KernelPlan("int8", "float32", decode, "bf16" if bf16 else "fp32")


# --- shapes and candidates -------------------------------------------------------------------


def matmul_shapes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(N, K) of a layer's quantized matmuls as Demi runs them (q/k/v and gate/up fused)."""
    hd = cfg.head_dim
    inter = cfg.intermediate_size
    return [
        ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd, cfg.hidden_size),
        (cfg.hidden_size, cfg.num_attention_heads * hd),
        (2 * inter, cfg.hidden_size),
        (cfg.hidden_size, inter),
    ]


def _timed_together(
    fns: dict[str, Callable[[], object]], deadline: float, reps: int, warm: dict[str, Callable[[], object]]
) -> dict[str, float]:
    """Best-of-`reps` milliseconds of each candidate, the candidates taking turns rep by rep (after a
    warm-up call each): a burst of load from another process then falls on all of them alike and
    best-of skips it, where timing one candidate's reps after another's let a burst land on one
    candidate alone and cache a plan that picked the wrong kernel."""
    for name in fns:
        warm.get(name, fns[name])()
    best = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for rep in range(reps if names else 0):  # (a shape no candidate takes: none to time)
        # the order turns by one each rep: a candidate timed right after another pays for what that one
        # left behind (after torch's int8 GEMV, whichever native path came next read 15-20% slower,
        # measured on Zen 4 with the order reversed), so no candidate always follows the same one
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            t = time.perf_counter()
            fns[name]()
            best[name] = min(best[name], time.perf_counter() - t)
        if time.perf_counter() > deadline:
            break
    return {name: v * 1e3 for name, v in best.items()}


# A plan measured while other processes took more than this share of the machine's CPU time is used
# for that run but not cached: the next load measures again (a calibration during a build or a test
# run once cached a plan whose decode kernel was 100x off).
BUSY_SHARE = 0.25


def _cpu_ticks(steal: bool = True) -> tuple[int, int, float] | None:
    """(busy, total) clock ticks of all CPUs since boot and this process's own CPU seconds (its
    finished children's too: a self-check child is this process's work), from Linux's /proc/stat;
    None elsewhere. `steal`: whether time the hypervisor gave another machine counts as busy."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, stolen = fields
    own = os.times()
    busy = user + nice + system + irq + softirq + (stolen if steal else 0)
    return busy, sum(fields), own.user + own.system + own.children_user + own.children_system


def cpu_mark(steal: bool = True) -> tuple[int, int, float] | None:
    """A point to measure `others_share` from (None where /proc/stat is missing)."""
    return _cpu_ticks(steal)


def others_share(before: tuple[int, int, float] | None, steal: bool = True) -> float | None:
    """Share of all CPUs' time since `before` (a `cpu_mark(steal)`) that went to other processes
    (and, with `steal`, to other virtual machines on the same host)."""
    after = _cpu_ticks(steal)
    if before is None or after is None or after[1] <= before[1]:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    others = (after[0] - before[0]) - (after[2] - before[2]) * hz
    return round(max(0.0, others / (after[1] - before[1])), 3)


def last_level_cache_bytes() -> int:
    """The largest CPU cache (Linux sysfs), or 32 MiB where it cannot be read."""
    best = 0
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
            best = max(
                best,
                int(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]] if text[-1] in "KMG" else int(text),
            )
        except (OSError, ValueError):
            continue
    return best or 32 * 2**20


class _Shape:
    """Random weights of one (N, K) shape, in every layout a candidate needs."""

    def __init__(self, n: int, k: int, mode: str, group: int):
        from demi.model.quantize import quantize_int4, quantize_int8

        self.n = -(-max(16, min(n, MAX_CALIBRATION_ELEMS // k)) // 16) * 16  # torch's int4 wants N % 16 == 0
        self.k, self.scale_up = k, n / self.n
        w = torch.randn(self.n, k)
        self.q8, self.s8 = quantize_int8(w)
        self.s8_bf16 = self.s8.to(torch.bfloat16)
        packer = any_native_library()
        self.p8 = nk.pack_q8(packer, self.q8) if mode == "int8" and packer and k % nk.QBLOCK == 0 else None
        if mode == "int4":
            self.group = group
            q4, s4, z4 = quantize_int4(w, group)
            self.q4, self.s4, self.z4 = q4, s4, z4
            self.native4 = nk.pack_q4(q4)
            self.s4f, self.z4f = nk.half(s4), nk.int4_offset(s4, z4)
            self.torch4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4.to(torch.int32).contiguous(), 2)
            self.sz = torch.stack([s4, z4], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def nbytes(self) -> int:
        return self.q8.numel() if not hasattr(self, "native4") else self.native4.numel()

    def packed8(self) -> torch.Tensor:
        assert self.p8 is not None, "native int8 candidates come with a library that packs"
        return self.p8

    def copy(self) -> _Shape:
        """The same weights in fresh memory: decode is timed streaming them from DRAM, not cache."""
        other = object.__new__(_Shape)
        other.__dict__.update(self.__dict__)
        other.q8 = self.q8.clone()
        other.p8 = None if self.p8 is None else self.p8.clone()
        if hasattr(self, "native4"):
            other.native4, other.torch4 = self.native4.clone(), self.torch4.clone()
        return other


def _sweep(copies: list[_Shape], one: Callable[[_Shape], object]) -> Callable[[], None]:
    def run() -> None:
        for c in copies:
            one(c)

    return run


def _int8_candidates(
    copies: list[_Shape], rows: int, dtype: torch.dtype, paths: list[str], decode_torch: bool, native_only: bool
) -> dict[str, Callable]:
    """The candidates for `rows` rows; `native_only`: the native paths alone (no torch kernel, and
    no float copy of the weight made only to be thrown away)."""
    s = copies[0]
    x = torch.randn(rows, s.k, dtype=dtype)
    out: dict[str, Callable] = {}
    if rows == 1 and decode_torch and not native_only:
        out["torch"] = _sweep(
            copies, lambda c: torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), c.q8, c.s8_bf16).to(dtype)
        )
    elif rows > 1 and not native_only:  # the weight's conversion is timed on its own (_conversions)
        w32, w16 = s.q8 * s.s8[:, None], s.q8.to(torch.bfloat16)
        out["fp32"] = _sweep(copies, lambda c: F.linear(x.float(), w32))
        out["bf16"] = _sweep(copies, lambda c: (F.linear(x.to(torch.bfloat16), w16) * c.s8_bf16).float())
        if int_mm_runs():
            glue = _loaded(paths[0]) if paths else None
            out["int8mm"] = _sweep(copies, lambda c: nk.linear_int_mm(glue, x, c.q8, c.s8, None))
    if s.k % nk.QBLOCK == 0:
        for p in paths:  # on packed weights, as Int8Linear holds them (no one-row variant)
            out[p] = _sweep(copies, _native_q8(_loaded(p), x))
    return out


@cache
def int_mm_runs() -> bool:
    """Whether torch has a CPU int8 GEMM here (`torch._int_mm`; older builds and some CPUs lack one)."""
    try:
        torch._int_mm(torch.ones(32, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


def _loaded(path: str) -> ctypes.CDLL:
    lib = nk.library(path)
    assert lib is not None, path  # the paths given are those nk.prepare loaded
    return lib


def _native_q8(lib: ctypes.CDLL, x: torch.Tensor) -> Callable[[_Shape], object]:
    return lambda c: nk.linear_q8p(lib, x, c.packed8(), c.s8, None, c.n)


def _native_q4(lib: ctypes.CDLL, x: torch.Tensor, one_row: bool = False) -> Callable[[_Shape], object]:
    return lambda c: nk.linear_q4(lib, x, c.native4, c.s4f, c.z4f, c.group, None, one_row=one_row)


def _int4_candidates(
    copies: list[_Shape], rows: int, dtype: torch.dtype, paths: list[str], decode_torch: bool, native_only: bool
) -> dict[str, Callable]:
    """As _int8_candidates, for int4 weights."""
    s = copies[0]
    x = torch.randn(rows, s.k, dtype=dtype)
    out: dict[str, Callable] = {}
    if (decode_torch or not paths) and not native_only:
        out["torch"] = _sweep(
            copies, lambda c: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), c.torch4, c.group, c.sz)
        )
    if rows > 1 and not native_only:
        w32 = nk.dequantize_q4(s.native4, s.s4f, s.z4f, s.group)
        w16 = w32.to(torch.bfloat16)  # (the conversion is timed on its own: _conversions)
        out["fp32"] = _sweep(copies, lambda c: F.linear(x.float(), w32))
        out["bf16"] = _sweep(copies, lambda c: F.linear(x.to(torch.bfloat16), w16).float())
        if paths and int_mm_runs():
            from demi.model.quantize import quantize_int8  # (quantize imports this module)

            q8, s8 = quantize_int8(w32)
            glue = _loaded(paths[0])
            out["int8mm"] = _sweep(copies, lambda c: nk.linear_int_mm(glue, x, q8, s8, None))
    for p in paths:
        out[p] = _sweep(copies, _native_q4(_loaded(p), x))
        if rows == 1:
            out[p + ONE_ROW] = _sweep(copies, _native_q4(_loaded(p), x, one_row=True))
    return out


def _conversions(s: _Shape, mode: str, lib: ctypes.CDLL | None = None) -> dict[str, Callable]:
    """What a float prefill pays once per chunk: converting the quantized weight (int4: in `lib`'s C
    pass, as Int4Linear does with its native library)."""
    if mode == "int4":
        from demi.model.quantize import quantize_int8

        return {
            "fp32": lambda: nk.dequantize_q4(s.native4, s.s4f, s.z4f, s.group, lib),
            "bf16": lambda: nk.dequantize_q4(s.native4, s.s4f, s.z4f, s.group, lib, torch.bfloat16),
            "int8mm": lambda: quantize_int8(nk.dequantize_q4(s.native4, s.s4f, s.z4f, s.group, lib)),
        }
    return {"fp32": lambda: s.q8 * s.s8[:, None], "bf16": lambda: s.q8.to(torch.bfloat16)}


def calibrate(cfg: ModelConfig, mode: str, group: int = 64, budget_s: float = CALIBRATION_SECONDS) -> KernelPlan:
    """Time every candidate at this model's shapes and return the fastest plan (see the module doc)."""
    start = time.perf_counter()
    ticks = _cpu_ticks()
    deadline = start + budget_s
    wanted = nk.candidate_paths()
    if len(wanted) > 1 and "generic" in wanted:  # scalar C never beats a vector path: not worth the time
        wanted.remove("generic")
    paths = nk.prepare(wanted)
    shapes = [(n, k) for n, k in matmul_shapes(cfg) if mode != "int4" or k % group == 0]
    built = [_Shape(n, k, mode, group) for n, k in shapes]
    make = _int4_candidates if mode == "int4" else _int8_candidates
    # decode reads every weight once per token: time each shape over as many copies as the model has
    # layers (up to twice the last-level cache), so a model too big for the cache streams from DRAM
    # here as it does for real (cache-resident timings favour compute-bound kernels that then lose)
    llc = last_level_cache_bytes()

    def copies_of(s: _Shape) -> int:
        b = max(1, s.nbytes())
        return max(1, min(cfg.num_hidden_layers, -(-2 * llc // b), 2**30 // (b * len(built))))

    decode_torch = nk.forced() in (None, "torch")  # a forced native path is what decode measures
    times: dict[str, dict[str, float]] = {"prefill": {}, "decode": {}, "check": {}, "convert": {}}
    counts: dict[tuple[str, str], int] = {}
    phases = [("prefill", PREFILL_ROWS, torch.float32), ("decode", 1, torch.float32)]
    if len(paths) > 1:  # a choice between native decode paths: their check rows too (weights in cache)
        phases.append(("check", CHECK_ROWS, torch.float32))
    torch.manual_seed(0)
    with torch.inference_mode():
        for phase, rows, dtype in phases:
            for s in built:
                copies = [s] + [s.copy() for _ in range(copies_of(s) - 1)] if phase == "decode" else [s]
                native_only = phase == "check"
                warm = make([s], min(rows, 16), dtype, paths, decode_torch, native_only)  # first-call costs, cheaply
                conversions = _conversions(s, mode, _loaded(paths[0]) if paths else None) if phase == "prefill" else {}
                fns = make(copies, rows, dtype, paths, decode_torch, native_only)
                measured = _timed_together(fns, deadline, 2, warm)
                converted = _timed_together(conversions, deadline, 2, {}) if conversions else {}
                for name in fns:
                    per_row_ms = measured[name] * s.scale_up / rows
                    if name in converted:
                        convert_ms = converted[name] * s.scale_up
                        times["convert"][name] = times["convert"].get(name, 0.0) + convert_ms
                        per_row_ms += convert_ms / PREFILL_CHUNK
                    times[phase][name] = times[phase].get(name, 0.0) + per_row_ms / len(copies)
                    counts[phase, name] = counts.get((phase, name), 0) + 1
                del copies
    # a candidate that cannot take every shape (K not a multiple of 32) does not serve every layer
    times = {
        ph: {c: v for c, v in t.items() if ph == "convert" or counts[ph, c] == len(built)} for ph, t in times.items()
    }
    plan = _choose(mode, {**times, "decode": _best_layouts(times["decode"])})
    if times["decode"].get(plan.decode + ONE_ROW, float("inf")) < times["decode"].get(plan.decode, float("inf")):
        plan.rows_at_once = 1
    plan.source, plan.seconds = "measured", round(time.perf_counter() - start, 3)
    plan.others_share = others_share(ticks)
    plan.times_ms = {ph: {k: round(v, 5) for k, v in t.items()} for ph, t in times.items()}
    return plan


def _best_layouts(decode: dict[str, float]) -> dict[str, float]:
    """Decode times per path, each its faster layout (four rows side by side or one at a time)."""
    return {p: min(t, decode.get(p + ONE_ROW, float("inf"))) for p, t in decode.items() if not p.endswith(ONE_ROW)}


def _best(times: dict[str, float]) -> str | None:
    return min(times, key=times.__getitem__) if times else None


def _crossover(times: dict[str, dict[str, float]], flt: str, native: str) -> int:
    """Rows above which a float prefill (conversion once, then a faster matmul) beats `native`."""
    convert = times.get("convert", {}).get(flt)
    if convert is None or native not in times["prefill"]:
        return 0
    per_row_float = times["prefill"][flt] - convert / PREFILL_CHUNK
    saved = times["prefill"][native] - per_row_float
    return int(convert / saved) + 1 if saved > 0 else 1 << 30


def _decode_path(dec: dict[str, float], check: dict[str, float], among: list[str]) -> str:
    """The fastest lone step of `among`, or of those within CHECK_SLACK of it the one whose check
    rows run fastest."""
    best = min(among, key=dec.__getitem__)
    near = [p for p in among if p in check and dec[p] <= dec[best] * (1 + CHECK_SLACK)]
    return min(near, key=check.__getitem__) if best in check and len(near) > 1 else best


def _choose(mode: str, times: dict[str, dict[str, float]]) -> KernelPlan:
    pre, dec, check = times["prefill"], times["decode"], times.get("check", {})
    if mode == "int8":
        prefill = _best(pre) or "fp32"
        decode = _best(dec) or "torch"
        if decode != "torch":
            decode = _decode_path(dec, check, [p for p in dec if p != "torch"])
        return KernelPlan(
            "int8", "float32", decode, prefill, _crossover(times, prefill, decode) if decode != "torch" else 0
        )
    native = [p for p in dec if p != "torch"]
    layouts = {"torch": ("torch", "torch")}
    if native:
        d = _decode_path(dec, check, native)
        layouts[d] = (d, min([d, "fp32", "bf16", "int8mm"], key=lambda c: pre.get(c, float("inf"))))

    def score(pair: tuple[str, str]) -> float:
        return pre.get(pair[1], float("inf")) * SCORE_PROMPT + dec.get(pair[0], float("inf")) * SCORE_NEW

    decode, prefill = min(layouts.values(), key=score)
    bf16 = decode == prefill == "torch" and has_bf16_hardware()  # torch's int4 kernels take bf16 rows
    return KernelPlan(
        "int4",
        "bfloat16" if bf16 else "float32",
        decode,
        prefill,
        _crossover(times, prefill, decode) if decode != "torch" and prefill in TORCH_PREFILLS else 0,
    )


# --- prompt attention ------------------------------------------------------------------------

# Prompt rows the attention choice is timed at (a short FIM prompt; the native tiles' lead over SDPA
# shrinks with length: 1.8x at 467 rows, 1.1x at 1,024 on a Zen 4 with AVX2 forced)
ATTENTION_ROWS = 256


@dataclass
class AttentionChoice:
    """How a prompt's attention runs: torch's SDPA or a native path's tiles (prefill_attention.py)."""

    kernel: str  # sdpa | a native path name
    times_ms: dict[str, float] = field(default_factory=dict)  # candidate -> ms for ATTENTION_ROWS rows
    source: str = "measured"  # measured | cache | forced (DEMI_ATTENTION)
    others_share: float | None = None


def _attention_entry(cfg: ModelConfig, path: str) -> str:
    return f"attention:{cfg.num_attention_heads}x{cfg.num_key_value_heads}x{cfg.head_dim}:{path}"


def measure_attention(cfg: ModelConfig, path: str, reps: int = 4) -> AttentionChoice:
    """Time one prompt's causal attention at this model's heads: SDPA against native path `path`."""
    from demi.model import prefill_attention  # (decoder imports it; this module is imported by quantize)

    hq, hkv, d, rows = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, ATTENTION_ROWS
    ticks = _cpu_ticks()
    torch.manual_seed(0)
    qkv = torch.randn(rows, (hq + 2 * hkv) * d)  # queries as the fused projection holds them
    q = qkv[:, : hq * d].view(1, rows, hq, d).transpose(1, 2)
    k, v = torch.randn(1, hkv, rows, d), torch.randn(1, hkv, rows, d)
    fns: dict[str, Callable[[], object]] = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv)
    }
    lib = nk.library(path)
    with torch.inference_mode():
        if lib is not None and prefill_attention.attend(lib, q, k, v, None) is not None:  # the head size fits
            fns[path] = lambda: prefill_attention.attend(lib, q, k, v, None)
        times = _timed_together(fns, time.perf_counter() + 1.0, reps, {})
    share = others_share(ticks)
    # measured under load, the winner is noise: SDPA then, so that two processes measuring at a busy
    # moment agree (their prompts' numbers would differ in the last bits, and greedy text with them)
    busy = share is not None and share > BUSY_SHARE
    kernel = "sdpa" if busy else min(times, key=times.__getitem__)
    return AttentionChoice(kernel, {n: round(t, 4) for n, t in times.items()}, others_share=share)


def attention_for(cfg: ModelConfig, path: str, remeasure: bool = False) -> AttentionChoice:
    """Whether this model's prompts attend through native path `path` (the one its decode uses) or SDPA
    on this machine: cached beside the kernel plans, measured on a miss (tens of milliseconds; not
    cached when other processes took over BUSY_SHARE of the CPU meanwhile). `DEMI_ATTENTION=sdpa` or
    `native` forces it (A/B benchmarks of one path)."""
    forced = os.environ.get("DEMI_ATTENTION", "").strip().lower()
    if forced in ("sdpa", "native"):
        return AttentionChoice("sdpa" if forced == "sdpa" else path, source="forced")
    if forced not in ("", "auto"):
        log.warning("DEMI_ATTENTION=%s is not sdpa, native or auto; ignored", forced)
    key = cache_key()
    file = cache_file(key)
    entries = read_entries(file, key)
    name = _attention_entry(cfg, path)
    cached = entries.get(name)
    if cached and not remeasure:
        try:
            choice = AttentionChoice(**cached)
            if choice.kernel in ("sdpa", path):
                choice.source = "cache"
                return choice
        except TypeError:
            pass
    choice = measure_attention(cfg, path)
    log.info("prompt attention for %s: %s (%s)", name, choice.kernel, choice.times_ms)
    if choice.others_share is None or choice.others_share <= BUSY_SHARE:
        entries[name] = asdict(choice)
        try:
            write_entries(file, key, entries)
        except OSError as exc:
            log.warning("could not save the attention choice to %s (%s)", file, exc)
    return choice


# --- the cache -----------------------------------------------------------------------------


def cache_key() -> dict:
    """What a measured plan depends on besides the model's shapes."""
    flags = ",".join(sorted(nk.cpu_flags()))
    return {
        "version": PLAN_VERSION,
        "cpu": nk.cpu_model(),
        "machine": platform.machine(),
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": nk.source_version(),
        "forced": nk.forced() or "",
    }


def cache_file(key: dict | None = None) -> Path:
    import platformdirs

    key = key or cache_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("demi")) / "plans" / f"{digest}.json"


def _entry(cfg: ModelConfig, mode: str, group: int) -> str:
    return f"{mode}:g{group}:" + ",".join(f"{n}x{k}" for n, k in matmul_shapes(cfg))


def read_entries(path: Path, key: dict, label: str | None = "kernel plan") -> dict:
    """The cached entries, or {} for a corrupt or foreign file (with a warning naming `label`, or
    silently with None)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            raise ValueError("not a plan file")
    except (OSError, ValueError) as exc:
        if label:
            log.warning("%s cache %s is unreadable (%s); measuring again", label, path, exc)
        return {}
    if data.get("key") != key:
        if label:
            log.warning("%s cache %s was made for another machine or version; measuring again", label, path)
        return {}
    return data["entries"]


def write_entries(path: Path, key: dict, entries: dict, prefix: str = ".plan-") -> None:
    """Replace `path` atomically with `entries` under `key` (an interrupted write leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"key": key, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plan_for(cfg: ModelConfig, mode: str, group: int = 64, remeasure: bool = False) -> KernelPlan:
    """The cached plan for this model's shapes on this machine, measuring it on a miss; with
    `DEMI_PREFILL=fp32` its prefill is fp32 matmuls for every prompt longer than DECODE_ROWS rows
    (no measured crossover), so two processes with the same `DEMI_KERNEL` compute the same numbers
    whatever each measured (tests that compare runs; benchmarks of one path)."""
    plan = _measured_or_cached(cfg, mode, group, remeasure)
    wanted = os.environ.get("DEMI_PREFILL", "").strip().lower()
    if wanted in ("", "auto"):
        return plan
    if wanted != "fp32":
        log.warning("DEMI_PREFILL=%s is not a prefill this switch forces (fp32); ignored", wanted)
        return plan
    return replace(plan, prefill="fp32", float_prefill_rows=0, activations="float32")


def _measured_or_cached(cfg: ModelConfig, mode: str, group: int, remeasure: bool) -> KernelPlan:
    key = cache_key()
    path = cache_file(key)
    entries = read_entries(path, key)
    name = _entry(cfg, mode, group)
    cached = entries.get(name)
    if cached and not remeasure:
        try:
            plan = KernelPlan(**cached)
            usable = ("torch", *nk.candidate_paths())
            if plan.decode in usable and plan.prefill in (*TORCH_PREFILLS, *usable):
                plan.source = "cache"
                return plan
        except TypeError:
            pass
        log.warning("kernel plan cache %s holds an entry this version cannot use; measuring again", path)
    plan = calibrate(cfg, mode, group)
    log.info(
        "kernel plan for %s: decode %s, prefill %s, activations %s (%.2f s)",
        name,
        plan.decode,
        plan.prefill,
        plan.activations,
        plan.seconds,
    )
    if plan.others_share is not None and plan.others_share > BUSY_SHARE:
        # Under load the winner of a near tie is noise, and two processes (an editor's server and a CLI)
        # would each run their own noise, with answers that differ in the last bits: run fixed kernels
        # (the same in every process) until a quiet load measures. The native decode path serves every
        # row count then, prompts too: a prompt's tail recomputed after a prefix-cache hit gets the bits
        # its whole prefill gave (a float prefill beside the native decode made a batched run differ
        # from the same run alone, measured with every calibration counted as busy).
        log.info(  # (not a warning: a CLI prints those, and a busy machine is no fault of the user's)
            "other processes took %.0f%% of the CPU while the kernel plan was measured: running the default "
            "kernels for now, not caching it (the next load measures again)",
            100 * plan.others_share,
        )
        default = guess(mode)
        if default.decode != "torch":
            default = replace(default, prefill=default.decode, float_prefill_rows=0)
        return replace(default, source="busy", seconds=plan.seconds, others_share=plan.others_share,
                       times_ms=plan.times_ms)  # fmt: skip
    entries[name] = plan.as_dict()
    try:
        write_entries(path, key, entries)
    except OSError as exc:
        log.warning("could not save the kernel plan to %s (%s)", path, exc)
    return plan
