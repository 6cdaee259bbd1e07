"""The trainer's precision and compile settings, chosen by timing them on this machine, as the
inference kernel plan (`demi.model.kernel_plan`) chooses its kernels.

What is fastest depends on the CPU: bf16 autocast runs the matmuls on bf16 units where the CPU
has them (AMX, AVX-512 BF16) and is emulated, and slower than fp32, where it does not (AVX2);
torch.compile's gain differs from CPU to CPU and model to model. So `--precision auto` and
`--compile auto` on a CPU time a few full training steps (forward, backward, AdamW) of each
candidate, fp32 and bf16 autocast, eager and, for a run long enough to repay compiling (a dense
model, at least `COMPILE_MIN_STEPS` steps, a C compiler here), compiled, at the run's model shape
and sequence length on random rows. The candidates take turns step by step and each keeps its
fastest step, so a burst of load from other processes (this machine may be shared) falls on all
of them alike and best-of skips it. The choice is cached per CPU (the kernel plan's cache key:
CPU model, flags, threads, torch version) and model shape, in the user cache's plans folder; one
measured while other processes took over a quarter of the CPU is used but not cached. A resumed
run keeps the settings it started with (its checkpoint records them), so resume stays exact.
On CUDA nothing is measured: bf16 where the GPU supports it, and compile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from demi.model import kernel_plan
from demi.model.config import ModelConfig

log = logging.getLogger("demi.train")

SPEED_PLAN_VERSION = 1
COMPILE_MIN_STEPS = 300  # compiling costs 10-60 s on a CPU: worth it for a run this long or longer
MEASURE_TOKENS = 2048  # tokens per timed step (whole rows of the run's sequence length)
MEASURE_ROUNDS = 3


@dataclass
class SpeedPlan:
    precision: str  # fp32 | bf16
    compile: bool
    source: str  # measured | cache | fixed (one candidate) | rule (CUDA, or several processes)
    tok_s: dict[str, float] = field(default_factory=dict)  # candidate -> tokens/s of its best step
    seconds: float = 0.0  # what the measurement took
    others_share: float | None = None  # other processes' share of the CPU meanwhile

    @property
    def label(self) -> str:
        return f"{'compiled' if self.compile else 'eager'} {self.precision}"

    def describe(self) -> str:
        if self.source in ("fixed", "rule"):
            why = "as set" if self.source == "fixed" else "the rule for this device"
            return f"speed: {self.label} ({why})"
        times = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(self.tok_s.items(), key=lambda kv: -kv[1]))
        busy = f"; other processes took {100 * self.others_share:.0f}% of the CPU" if self.others_share else ""
        where = "cached" if self.source == "cache" else f"measured in {self.seconds:.0f} s{busy}"
        return f"speed: {self.label}, the fastest of {times} tokens/s ({where})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def candidates(precision: str, compile: str, steps: int, moe: bool) -> list[tuple[str, bool]]:
    """(precision, compiled) pairs worth timing for the settings asked for."""
    precisions = ["fp32", "bf16"] if precision == "auto" else [precision]
    if compile == "auto":
        from demi.train.trainer import have_compiler

        compiles = [False] + ([True] if not moe and steps >= COMPILE_MIN_STEPS and have_compiler() else [])
    else:
        compiles = [compile == "on"]
    return [(p, c) for c in compiles for p in precisions]


def _label(precision: str, compiled: bool) -> str:
    return f"{'compiled' if compiled else 'eager'} {precision}"


def measure(
    cfg: ModelConfig,
    seq_len: int,
    options: list[tuple[str, bool]],
    threads: int = 0,
    tokens: int = MEASURE_TOKENS,
    rounds: int = MEASURE_ROUNDS,
) -> SpeedPlan:
    """Time every candidate (one warm-up step each, then `rounds` steps taking turns) and pick the
    fastest by its best step. The caller's random state is left as it was."""
    from demi.train.bench import compare

    rows = max(1, tokens // seq_len)
    variants = {_label(p, c): {"precision": p, "compile": "on" if c else "off"} for p, c in options}
    started, before = time.perf_counter(), kernel_plan._cpu_ticks()
    with torch.random.fork_rng(devices=[]):
        res = compare(cfg, variants, seq_len, rows, rounds=rounds, steps_per_round=1, warmup=1, threads=threads, seed=0)
    tok_s = {k: round(float(v["best_tok_s"]), 1) for k, v in res.items()}
    best = max(tok_s, key=lambda k: tok_s[k])
    return SpeedPlan(
        str(res[best]["precision"]),
        bool(res[best]["compiled"]),  # a compile that failed here trained eagerly: so will the run
        "measured",
        tok_s,
        round(time.perf_counter() - started, 1),
        kernel_plan.others_share(before),
    )


def _entry(cfg: ModelConfig, seq_len: int, options: list[tuple[str, bool]]) -> str:
    shape = (
        f"{cfg.model_type}:h{cfg.hidden_size}:l{cfg.num_hidden_layers}:i{cfg.intermediate_size}:"
        f"a{cfg.num_attention_heads}/{cfg.num_key_value_heads}:v{cfg.vocab_size}:e{cfg.num_experts}"
    )
    return f"{shape}:s{seq_len}:" + ",".join(_label(p, c) for p, c in options)


def cache_key() -> dict[str, Any]:
    """The kernel plan's key (CPU model, flags, threads, torch, ...) marked as a training plan."""
    return {**kernel_plan.cache_key(), "plan": "train-speed", "train_version": SPEED_PLAN_VERSION}


def plan_speed(
    cfg: ModelConfig,
    seq_len: int,
    precision: str = "auto",
    compile: str = "auto",
    steps: int = 1000,
    device: str | torch.device = "cpu",
    threads: int = 0,
    remeasure: bool = False,
    tokens: int = MEASURE_TOKENS,
) -> SpeedPlan:
    """The settings a run should train with: measured (or cached) on a CPU, by rule on CUDA."""
    device = torch.device(device)
    if device.type != "cpu":
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return SpeedPlan("bf16" if bf16 else "fp32", compile != "off", "rule")
    options = candidates(precision, compile, steps, cfg.is_moe)
    if len(options) == 1:
        return SpeedPlan(options[0][0], options[0][1], "fixed")
    if threads:
        torch.set_num_threads(threads)
    key = cache_key()
    path = kernel_plan.cache_file(key)
    name = _entry(cfg, seq_len, options)
    entries = kernel_plan.read_entries(path, key, label=None)
    cached = entries.get(name)
    if isinstance(cached, dict) and not remeasure:
        try:
            return SpeedPlan(**{**cached, "source": "cache"})
        except TypeError:
            pass
    plan = measure(cfg, seq_len, options, threads, tokens)
    if plan.others_share is not None and plan.others_share > kernel_plan.BUSY_SHARE:
        log.info("the training speed plan was measured on a busy machine: used, not cached")
        return plan
    entries[name] = plan.as_dict()
    try:
        kernel_plan.write_entries(path, key, entries, prefix=".train-plan-")
    except OSError as exc:
        log.warning("could not save the training speed plan to %s (%s)", path, exc)
    return plan
