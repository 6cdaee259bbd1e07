"""Trainer speed: tokens per second of full training steps (forward, backward, AdamW) on random
token rows, for a model shape and a set of speed switches.

Steps on a shared machine are noisy, so the speed reported is from the fastest of the measured
steps' sliding medians (`window` steps), after `warmup` steps that include compiling.

    python -m demi.train.bench --preset tiny --compile on --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from demi.model.config import ModelConfig
from demi.train.data import DataOptions, Position
from demi.train.trainer import TrainConfig, Trainer, init_model


class RandomRows:
    """Stands in for PackedData: uniformly random token rows, no held-out data."""

    def __init__(self, vocab: int, seq_len: int, seed: int = 0):
        self.options = DataOptions(seq_len=seq_len)
        self.vocab, self.gen = vocab, torch.Generator().manual_seed(seed)

    def take(self, pos: Position, n: int) -> tuple[torch.Tensor, Position]:
        rows = torch.randint(0, self.vocab, (n, self.options.seq_len + 1), generator=self.gen)
        return rows, Position(pos.epoch, pos.row + n)

    def eval_rows(self, max_rows: int) -> torch.Tensor:
        return torch.empty((0, self.options.seq_len + 1), dtype=torch.long)


@dataclass
class BenchResult:
    params: int
    seq_len: int
    batch_size: int
    compiled: bool
    precision: str
    fused_adamw: bool
    grad_checkpointing: bool
    threads: int
    tok_s: float
    step_s: float
    warmup_s: float
    peak_rss_mb: float
    others_cpu: float  # share of the machine's CPU other processes used while measuring (noise)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure(
    cfg: ModelConfig,
    seq_len: int = 512,
    batch_size: int = 8,
    steps: int = 8,
    warmup: int = 3,
    window: int = 3,
    compile: str = "off",
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    threads: int = 0,
    fused: bool = True,
    seed: int = 0,
) -> BenchResult:
    model = init_model(cfg, seed)
    tcfg = TrainConfig(
        steps=10**6,
        batch_size=batch_size,
        warmup_steps=10,
        compile=compile,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
        threads=threads,
        eval_every=0,
        ckpt_every=0,
    )
    trainer = Trainer(model, RandomRows(cfg.vocab_size, seq_len, seed), tcfg, "/nonexistent", progress=False)
    if not fused and trainer.fused:
        groups = trainer.optimizer.param_groups
        plain = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups]
        trainer.optimizer = torch.optim.AdamW(plain, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps)
        trainer.fused = False
    t0 = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step()
    warm = time.perf_counter() - t0
    times = []
    busy0, own0, t_start = _machine_busy(), _own_cpu(), time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t_start
    others = max(0.0, (_machine_busy() - busy0) - (_own_cpu() - own0)) / (wall * (os.cpu_count() or 1))
    medians = [statistics.median(times[i : i + window]) for i in range(max(1, len(times) - window + 1))]
    step_s = min(medians)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(
        sum(p.numel() for p in model.parameters()),
        seq_len,
        batch_size,
        trainer.compiled,
        "bf16" if trainer.amp is not None else "fp32",
        trainer.fused,
        grad_checkpointing,
        torch.get_num_threads(),
        batch_size * seq_len / step_s,
        step_s,
        warm,
        rss,
        round(others, 3),
    )


def _machine_busy() -> float:
    """CPU seconds all processes have used (from /proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def compare(
    cfg: ModelConfig,
    variants: dict[str, dict[str, Any]],
    seq_len: int = 512,
    batch_size: int = 8,
    rounds: int = 6,
    steps_per_round: int = 2,
    warmup: int = 3,
    seed: int = 0,
    threads: int = 0,
) -> dict[str, dict[str, float | str]]:
    """Speed of several switch settings measured *interleaved* in one process (a few steps of each
    in turn), so that load from other processes on a shared machine hits them all alike.

    `variants` maps a label to Trainer settings (compile, precision, grad_checkpointing, fused).
    Returns per label: median and best tokens/s over the rounds, and the warm-up seconds."""
    trainers, warm = {}, {}
    for label, v in variants.items():
        model = init_model(cfg, seed)
        tcfg = TrainConfig(
            steps=10**6,
            batch_size=batch_size,
            warmup_steps=10,
            compile=v.get("compile", "off"),
            precision=v.get("precision", "fp32"),
            grad_checkpointing=v.get("grad_checkpointing", False),
            eval_every=0,
            ckpt_every=0,
            threads=threads,
        )
        t = Trainer(model, RandomRows(cfg.vocab_size, seq_len, seed), tcfg, "/nonexistent", progress=False)
        if not v.get("fused", True) and t.fused:
            groups = t.optimizer.param_groups
            t.optimizer = torch.optim.AdamW(
                [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in groups],
                lr=tcfg.lr,
                betas=(tcfg.beta1, tcfg.beta2),
            )
            t.fused = False
        t0 = time.perf_counter()
        for _ in range(warmup):
            t.train_step()
        warm[label] = time.perf_counter() - t0
        trainers[label] = t
    per_round: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(rounds):
        for label, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                t.train_step()
            per_round[label].append(steps_per_round * batch_size * seq_len / (time.perf_counter() - t0))
    return {
        k: {
            "median_tok_s": statistics.median(v),
            "best_tok_s": max(v),
            "warmup_s": round(warm[k], 1),
            "compiled": trainers[k].compiled,
            "precision": "bf16" if trainers[k].amp else "fp32",
            "fused_adamw": trainers[k].fused,
        }
        for k, v in per_round.items()
    }


def main(argv: list[str] | None = None) -> int:
    from demi.train.tiny import tiny_model_config

    ap = argparse.ArgumentParser(prog="python -m demi.train.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=["tiny", "5m"])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", default="off", choices=["on", "off"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--no-fused", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--compare",
        action="store_true",
        help="interleave: plain AdamW, fused, bf16, compile, compile+bf16 (+ grad checkpointing)",
    )
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    cfg = tiny_model_config() if args.preset == "tiny" else five_m_config()
    if args.compare:
        variants: dict[str, dict[str, Any]] = {
            "eager fp32, plain AdamW": {"fused": False},
            "eager fp32, fused AdamW": {},
            "eager bf16 autocast": {"precision": "bf16"},
            "compiled fp32": {"compile": "on"},
            "compiled bf16": {"compile": "on", "precision": "bf16"},
            "compiled bf16 + grad ckpt": {"compile": "on", "precision": "bf16", "grad_checkpointing": True},
        }
        res = compare(cfg, variants, args.seq_len, args.batch_size, args.rounds, threads=args.threads)
        params = sum(p.numel() for p in init_model(cfg).parameters())
        print(
            json.dumps(
                {"params": params, "seq_len": args.seq_len, "batch_size": args.batch_size, "results": res}, indent=1
            )
        )
        return 0
    r = measure(
        cfg,
        args.seq_len,
        args.batch_size,
        args.steps,
        args.warmup,
        compile=args.compile,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        threads=args.threads,
        fused=not args.no_fused,
    )
    print(json.dumps(r.as_dict()))
    return 0


def five_m_config(vocab: int = 8192) -> ModelConfig:
    """The ~5M-parameter shape the first speed numbers were taken on (hidden 256, 6 layers)."""
    return ModelConfig(
        model_type="qwen2",
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        qkv_bias=True,
        tie_word_embeddings=True,
        rope_theta=1e4,
    )


if __name__ == "__main__":
    raise SystemExit(main())
