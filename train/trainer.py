"""The trainer: AdamW, warmup then cosine, gradient accumulation, clipping, mixed precision,
torch.compile, gradient checkpointing, MoE router losses, distillation, evaluation and exact resume.

One optimizer step = `grad_accum` micro-batches of `batch_size` rows of `seq_len` tokens. The
learning rate is a pure function of the step, the data a pure function of the position, and
the checkpoint holds the optimizer and RNG states, so a run resumed from a checkpoint computes
bit-for-bit what the uninterrupted run would have (same device, threads and speed switches).

Speed switches, measured interleaved on a 2-core AVX-512/AMX CPU (`bench.compare`; demi-tiny's
12.6M shape, 8 x 1024 tokens a step, median tokens/s): plain AdamW 1,140; fused AdamW (one kernel
for all parameters, always used where torch has it) 1,302; bf16 autocast 2,467; torch.compile
(inductor) in fp32 1,467; compile + bf16 4,062; compile + bf16 + gradient checkpointing 3,277.
bf16 autocast runs the matmuls on the CPU's bf16 units (AMX) with fp32 master weights and
optimizer state, so "auto" precision is bf16 on CPUs that have such units and on CUDA, fp32
elsewhere; "auto" compile is on for dense models and runs of 300 steps or more (compiling takes
10-60 s).

Under torchrun (`dist`, see distributed.py) every rank runs this same loop on its slice of each
micro-batch, inside DDP or FSDP2: the losses it logs are means over the ranks, rank 0 alone logs
and writes, checkpoints are sharded (checkpoints.py) and the exported model is one ordinary
checkpoint, gathered on rank 0.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from demi.model.config import ModelConfig
from demi.model.decoder import Transformer, attention_mask
from demi.model.loading import save_model
from demi.model.scaffold import random_model
from demi.train import checkpoints, distributed
from demi.train.data import DataOptions, PackedData, Position, RowSource, take_shard
from demi.train.distributed import SINGLE, DistEnv
from demi.train.errors import ResumeError, TrainConfigError
from demi.train.moe import collect_losses, enable_moe_training


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip: float = 1.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto | fp32 | bf16
    compile: str = "auto"  # auto | on | off
    grad_checkpointing: bool = False
    threads: int = 0  # 0: physical cores
    eval_every: int = 200
    eval_rows: int = 64
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    moe_capacity_factor: float = 1.25
    moe_aux_weight: float = 0.01
    moe_z_weight: float = 0.001
    distill_alpha: float = 0.5  # weight of the KL term; 1 - alpha goes to cross-entropy
    distill_temperature: float = 2.0
    save_dtype: str = "float32"  # dtype of the final model's safetensors: float32 | bfloat16
    # > 0: the run's whole wall time in seconds. After the first steps (inside the warmup, where
    # the schedule does not depend on the total) `steps` is set to what fits, and the run ends
    # there, or at the budget if it is reached first.
    time_budget_s: float = 0.0
    eval_fim_lines: int = 0  # held-out lines completed greedily at each evaluation (fim_probe.py)
    prefetch: str = "auto"  # build the next epoch's rows in a thread: auto (on CUDA) | on | off

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "eval_rows", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be at least 1")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup_steps < 0:
            raise TrainConfigError("lr must be > 0, min_lr_ratio in [0, 1], warmup_steps >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise TrainConfigError("precision must be auto, fp32 or bf16")
        if self.compile not in ("auto", "on", "off"):
            raise TrainConfigError("compile must be auto, on or off")
        if self.save_dtype not in ("float32", "bfloat16"):
            raise TrainConfigError("save_dtype must be float32 or bfloat16")
        if not 0 <= self.distill_alpha <= 1 or self.distill_temperature <= 0:
            raise TrainConfigError("distill_alpha must be in [0, 1] and the temperature > 0")
        if self.time_budget_s < 0 or (self.time_budget_s and self.warmup_steps < BUDGET_MIN_WARMUP):
            raise TrainConfigError(
                f"a time budget must be > 0 and needs warmup_steps >= {BUDGET_MIN_WARMUP} "
                "(the steps are fitted to it while the schedule is still warming up)"
            )
        if self.eval_fim_lines < 0:
            raise TrainConfigError("eval_fim_lines must be >= 0")
        if self.prefetch not in ("auto", "on", "off"):
            raise TrainConfigError("prefetch must be auto, on or off")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


BUDGET_MIN_WARMUP = 3
BUDGET_PROBE_STEPS = 10  # steps timed (the first, which compiles, left out) before fitting `steps` to a budget
BUDGET_MARGIN = 0.97  # share of the time left that the fitted steps may fill


# Settings that change which tokens a step sees: a resume must keep them (and the global batch,
# batch_size x grad_accum x world size, which `Trainer.resume` checks on its own).
_RESUME_FIXED = ("seed",)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine from `lr` to `lr * min_lr_ratio` at `steps`."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def init_model(cfg: ModelConfig, seed: int = 0, std: float = 0.02) -> Transformer:
    """A fresh decoder for training: normal(0, std) weights, output projections scaled by
    1/sqrt(2 * layers) (GPT-2), unit norms, zero biases. Deterministic for a seed."""
    return random_model(cfg, seed, std, residual_std=std / math.sqrt(2 * cfg.num_hidden_layers)).train()


def forward_hidden(model: Transformer, tokens: Tensor, checkpointing: bool = False) -> Tensor:
    """Final-normed hidden states for full sequences from position 0, optionally recomputing each
    block's activations in the backward pass (gradient checkpointing) instead of storing them."""
    t = tokens.shape[1]
    x = model.model.embed_tokens(tokens)
    cos, sin = model.rotary_table(x.device).lookup(0, t, x.device)
    mask = attention_mask(0, t, model.config.sliding_window, x.device)
    for layer in model.model.layers:
        if checkpointing:
            x = grad_checkpoint(layer, x, cos, sin, 0, mask, None, None, use_reentrant=False)
        else:
            x = layer(x, cos, sin, 0, mask, None, None)
    return model.model.norm(x)


class TrainingForward(nn.Module):
    """The decoder's training forward (logits for full sequences from position 0) as one module
    call: DDP and FSDP2 act in a module's forward, so they wrap this. Its state dict is the
    decoder's with `PREFIX` in front."""

    def __init__(self, decoder: Transformer, checkpointing: bool = False):
        super().__init__()
        self.decoder = decoder
        self.checkpointing = checkpointing

    def forward(self, tokens: Tensor) -> Tensor:
        return self.decoder.lm_head(forward_hidden(self.decoder, tokens, self.checkpointing and self.training))


PREFIX = "decoder."


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al.),
    averaged over tokens."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).flatten(0, -2)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1).flatten(0, -2)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def cpu_has_bf16_units() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def have_compiler() -> bool:
    return any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++"))


def resolve_speed(cfg: TrainConfig, device: torch.device, moe: bool) -> tuple[bool, torch.dtype | None]:
    """(compile?, autocast dtype or None) for the settings, the device and the model."""
    if cfg.compile == "on":
        compiled = True
    elif cfg.compile == "off":
        compiled = False
    else:  # the first steps cost ~10-60 s of compiling: worth it for a long run of a dense model
        compiled = (not moe) and cfg.steps >= 300 and (device.type == "cuda" or have_compiler())
    if cfg.precision == "bf16":
        amp = torch.bfloat16
    elif cfg.precision == "fp32":
        amp = None
    elif device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    else:  # measured faster eagerly too on an AMX CPU: 12.6M model 2,467 vs 1,302 tok/s (bench.compare)
        amp = torch.bfloat16 if cpu_has_bf16_units() else None
    return compiled, amp


class Progress:
    """One status line on a terminal (redrawn), or a line every `every` steps otherwise."""

    def __init__(self, total: int, stream=None, every: int = 10, enabled: bool = True):
        self.total, self.every, self.enabled = total, every, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, step: int, loss: float, tok_s: float, eta_s: float, extra: str = "") -> None:
        if not self.enabled or (not self.tty and step % self.every and step != self.total):
            return
        eta_s = max(0, int(eta_s))
        eta = f"{eta_s // 3600}:{eta_s % 3600 // 60:02d}:{eta_s % 60:02d}" if eta_s < 86400 * 30 else "?"
        width = 24
        done = int(width * step / max(1, self.total))
        bar = "#" * done + "." * (width - done)
        line = f"step {step}/{self.total} [{bar}] loss {loss:.4f}  {tok_s:,.0f} tok/s  ETA {eta}" + (
            f"  {extra}" if extra else ""
        )
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class StepResult:
    loss: float  # the total loss that was minimized
    ce: float  # cross-entropy alone
    lr: float
    grad_norm: float
    extra: dict[str, float]


class Trainer:
    """Trains `model` on `data`, checkpointing into `run_dir/checkpoints`."""

    def __init__(
        self,
        model: Transformer,
        data: RowSource,
        cfg: TrainConfig,
        run_dir: str | Path,
        teacher: Transformer | None = None,
        progress: bool = True,
        device: str | torch.device = "cpu",
        on_step: Callable[[int, StepResult], None] | None = None,
        dist: DistEnv = SINGLE,
        on_budget: Callable[[int], None] | None = None,
    ):
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = torch.device(device)
        self.dist = dist
        seq = data.options.seq_len
        if seq > model.config.max_position_embeddings:
            raise TrainConfigError(
                f"seq_len {seq} is over the model's max_position_embeddings ({model.config.max_position_embeddings})"
            )
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        else:
            from demi.model.threads import use_physical_cores

            use_physical_cores(adapt=False)  # (an eval pass must not leave training on fewer threads)
        self.model = model.to(self.device).train()
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.moe_blocks = enable_moe_training(self.model, cfg.moe_capacity_factor) if model.config.is_moe else []
        self.compiled, self.amp = resolve_speed(cfg, self.device, bool(self.moe_blocks))
        net = TrainingForward(self.model, cfg.grad_checkpointing)
        # DDP or FSDP2 under torchrun (FSDP2 shards the parameters in place: the optimizer below
        # gets the shards); the plain module otherwise.
        self.net = distributed.wrap(net, list(self.model.model.layers), dist, self.amp, bool(self.moe_blocks))
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim >= 2]
        no_decay = [p for n, p in named if p.ndim < 2]
        # The optimizer's parameters in order, by name: how a single-process checkpoint numbers them.
        self._param_names = [n for n, p in named if p.ndim >= 2] + [n for n, p in named if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        betas = (cfg.beta1, cfg.beta2)
        try:
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, fused=True)
            self.fused = True
        except (RuntimeError, TypeError):  # a torch or device without the fused kernel
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps)
            self.fused = False
        self.step = 0
        self.position = Position()
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.wall = 0.0  # the training loops' wall time, evaluations and checkpoints included
        self.budget_steps: int | None = None  # the steps fitted to `time_budget_s`, once fitted
        self.on_budget = on_budget
        self.on_step = on_step
        self.progress = Progress(cfg.steps, every=cfg.log_every, enabled=progress and dist.is_main)
        self._loss_fn = self._loss
        self._compile_checked = False
        if self.compiled:
            self._loss_fn = torch.compile(self._loss)
        self._eval_rows = data.eval_rows(cfg.eval_rows)
        self.last_eval: float | None = None
        self.fim_probe = None
        heldout, encoder = getattr(data, "heldout", None), getattr(data, "encoder", None)
        if cfg.eval_fim_lines and heldout and encoder is not None and not dist.active:
            from demi.train.fim_probe import FimProbe

            self.fim_probe = FimProbe(heldout, encoder, data.options.seq_len, cfg.eval_fim_lines, cfg.seed)
        self.prefetching = cfg.prefetch == "on" or (cfg.prefetch == "auto" and self.device.type == "cuda")

    # -- one step -----------------------------------------------------------------------------

    def _loss(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logits = self.net(x).float()
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if teacher_logits is None:
            return ce, ce
        kl = distill_loss(logits, teacher_logits, self.cfg.distill_temperature)
        return self.cfg.distill_alpha * kl + (1 - self.cfg.distill_alpha) * ce, ce

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def train_step(self) -> StepResult:
        cfg = self.cfg
        lr = lr_at(self.step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        total = ce_total = 0.0
        extra: dict[str, float] = {}
        rank, world = self.dist.rank, self.dist.world_size
        for i in range(cfg.grad_accum):
            rows, self.position = take_shard(self.data, self.position, cfg.batch_size, rank, world)
            rows = rows.to(self.device)
            x, y = rows[:, :-1], rows[:, 1:]
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad(), self._autocast():
                    teacher_logits = self.teacher(x).float()
            last = i == cfg.grad_accum - 1
            with distributed.accumulating(self.net, self.dist, last):
                with self._autocast():
                    loss, ce = self._run_loss(x, y, teacher_logits)
                if self.moe_blocks:
                    moe = collect_losses(self.moe_blocks)
                    loss = loss + cfg.moe_aux_weight * moe["balance"] + cfg.moe_z_weight * moe["z"]
                    for k, v in moe.items():
                        extra[f"moe_{k}"] = extra.get(f"moe_{k}", 0.0) + float(v.detach()) / cfg.grad_accum
                (loss / cfg.grad_accum).backward()
            total += float(loss.detach()) / cfg.grad_accum
            ce_total += float(ce.detach()) / cfg.grad_accum
            self.tokens_seen += x.numel() * world
        if self.dist.active:  # what the whole global batch scored, as one process would report it
            total, ce_total, *rest = distributed.mean([total, ce_total, *extra.values()], self.dist)
            extra = dict(zip(extra, rest))
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = grad_norm(params, cfg.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepResult(total, ce_total, lr, norm, extra)

    def _run_loss(self, x: Tensor, y: Tensor, teacher_logits: Tensor | None) -> tuple[Tensor, Tensor]:
        if self._loss_fn is self._loss or self._compile_checked:
            return self._loss_fn(x, y, teacher_logits)
        try:
            out = self._loss_fn(x, y, teacher_logits)
        except Exception as exc:  # inductor without a compiler, an unsupported op: train eagerly
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            self.progress.message(f"demi: torch.compile failed ({type(exc).__name__}: {first}); training eagerly")
            self._loss_fn, self.compiled = self._loss, False
            self.optimizer.zero_grad(set_to_none=True)
            return self._loss(x, y, teacher_logits)
        self._compile_checked = True
        return out

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean cross-entropy per token on the held-out rows (None without held-out data)."""
        rows = self._eval_rows
        if len(rows) == 0:
            return None
        net = distributed.unwrapped(self.net)  # (FSDP2's forward gathers the shards: every rank runs it)
        net.eval()
        total, count = 0.0, 0
        bs, rank, world = self.cfg.batch_size, self.dist.rank, self.dist.world_size
        batches = math.ceil(len(rows) / bs)
        try:
            # Rank r scores batches r, r + world, ...; all run the same number of forwards (a rank
            # out of batches repeats the first one and counts nothing), as FSDP2 needs.
            for first in range(0, batches, world):
                index = first + rank
                batch = rows[(index if index < batches else 0) * bs :][:bs].to(self.device)
                with self._autocast():
                    logits = net(batch[:, :-1]).float()
                if index < batches:
                    total += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
                    count += batch[:, 1:].numel()
        finally:
            net.train()
        summed, tokens = distributed.total([total, count], self.dist)
        self.last_eval = summed / tokens
        return self.last_eval

    # -- checkpoints ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "position": [self.position.epoch, self.position.row],
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "train_config": self.cfg.as_dict(),
            "data_options": self.data.options.as_dict(),
            "model_config": self.model.config.to_hf(),
            "last_eval": self.last_eval,
            "wall": self.wall,
            "budget_steps": self.budget_steps,
            "world_size": self.dist.world_size,
            "parallel": self.dist.mode,
        }

    def save_checkpoint(self) -> Path:
        if self.dist.active:
            return checkpoints.save_sharded(
                self.run_dir, self.step, self.net, self.optimizer, self.state(), self.dist, self.cfg.keep_checkpoints
            )
        return checkpoints.save(
            self.run_dir, self.step, self.model, self.optimizer, self.state(), self.cfg.keep_checkpoints
        )

    def resume(self, path: str | Path | None = None, new_phase: bool = False) -> bool:
        """Restore from `path` or the run's latest checkpoint; False when there is none.

        `new_phase`: the checkpoint ends a data phase and this trainer's data is the next one's
        (see `start_phase`), so its data options may differ and the data starts from the top."""
        path = Path(path) if path else checkpoints.latest_checkpoint(self.run_dir)
        if path is None:
            return False
        saved = checkpoints.load_state(path, self.dist)
        old = saved.get("train_config", {})
        changed = [k for k in _RESUME_FIXED if k in old and old[k] != getattr(self.cfg, k)]
        was = (old.get("batch_size", self.cfg.batch_size), old.get("grad_accum", self.cfg.grad_accum))
        was_world = int(saved.get("world_size", 1))
        now = (self.cfg.batch_size, self.cfg.grad_accum, self.dist.world_size)
        if math.prod(was) * was_world != math.prod(now):
            changed.append(
                f"global batch (batch_size x grad_accum x world size: saved {was[0]} x {was[1]} x {was_world} = "
                f"{math.prod(was) * was_world}, now {now[0]} x {now[1]} x {now[2]} = {math.prod(now)})"
            )
        if not new_phase and _with_defaults(saved.get("data_options")) != self.data.options.as_dict():
            changed.append("data options (seq_len, FIM rates, seed)")
        if _weights_shape(saved.get("model_config")) != _weights_shape(self.model.config.to_hf()):
            changed.append("model shape")
        if changed:
            raise ResumeError(
                f"{path}: cannot resume with different {', '.join(changed)} (start a new run directory instead)"
            )
        if checkpoints.is_sharded(saved):
            state = checkpoints.restore_sharded(path, self.net, self.optimizer, saved)
        elif self.dist.active:
            state = checkpoints.restore_full(path, self.net, self.optimizer, self._param_names, saved, PREFIX)
        else:
            state = checkpoints.restore(path, self.model, self.optimizer)
        self.step = int(state["step"])
        self.position = Position() if new_phase else Position(*state["position"])
        self.tokens_seen = int(state["tokens_seen"])
        self.elapsed = float(state["elapsed"])
        self.wall = float(state.get("wall", self.elapsed))
        self.budget_steps = state.get("budget_steps")
        self.last_eval = state.get("last_eval")
        return True

    def start_phase(self, data: PackedData) -> None:
        """Go on with other data (a later phase of the run's mix), from its first row. The held-out
        rows stay: the loss stays comparable across phases."""
        if data.options.seq_len != self.data.options.seq_len:
            raise TrainConfigError("a data phase cannot change seq_len")
        self.data, self.position = data, Position()

    # -- the loop -----------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def train(self, until: int | None = None, handle_signals: bool = False) -> dict[str, Any]:
        """Run steps up to `until` (default: cfg.steps), checkpointing every `ckpt_every` steps and
        at the end; returns a summary.

        With `handle_signals` (the CLI), SIGINT or SIGTERM finishes the current step, writes a
        checkpoint and returns (`interrupted` in the summary); a second signal stops at once."""
        with _StopOnSignal(handle_signals) as stop:
            return self._train(until, stop)

    def _train(self, until: int | None, stop: _StopOnSignal) -> dict[str, Any]:
        cfg = self.cfg
        whole_run = until is None or until >= cfg.steps
        until = min(until or cfg.steps, cfg.steps)
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.data.options.seq_len
        smooth = None
        window: list[tuple[float, int]] = []  # (seconds, tokens) of recent steps, for tok/s
        started_at = self.step
        result = None
        wall_mark = time.perf_counter()
        step_times: list[float] = []
        while self.step < until:
            t0 = time.perf_counter()
            result = self.train_step()
            dt = time.perf_counter() - t0
            self.elapsed += dt
            step_times.append(dt)
            self._maybe_prefetch()
            window = (window + [(dt, tokens_per_step)])[-20:]
            # The first steps include compiling: leave them out of the speed once there are others.
            recent = window[1:] if len(window) > 1 and self.step - started_at <= 20 else window
            tok_s = sum(t for _, t in recent) / max(1e-9, sum(s for s, _ in recent))
            smooth = result.loss if smooth is None else 0.9 * smooth + 0.1 * result.loss
            if not math.isfinite(result.loss):
                raise FloatingPointError(f"the loss became {result.loss} at step {self.step}; try a lower --lr")
            record = {
                "step": self.step,
                "loss": round(result.loss, 5),
                "ce": round(result.ce, 5),
                "lr": result.lr,
                "grad_norm": round(result.grad_norm, 4),
                "tokens": self.tokens_seen,
                "tok_s": round(tok_s, 1),
                **{k: round(v, 5) for k, v in result.extra.items()},
            }
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                ev = self.evaluate()
                if ev is not None:
                    record["eval_loss"] = round(ev, 5)
                if self.fim_probe is not None:
                    em = self.fim_probe.exact_match(self.model)
                    if em is not None:
                        record["fim_exact"], record["fim_lines"] = round(em, 4), len(self.fim_probe)
            if self.step % cfg.log_every == 0 or self.step == until or "eval_loss" in record:
                self._log(record)
            eta = (cfg.steps - self.step) * tokens_per_step / max(tok_s, 1e-9)
            extra = f"eval {self.last_eval:.4f}" if self.last_eval is not None else ""
            self.progress.update(self.step, smooth, tok_s, eta, extra)
            if self.on_step is not None:
                self.on_step(self.step, result)
            if distributed.any_rank(bool(stop.requested), self.dist) and not stop.requested:
                stop.requested = "a signal to another rank"  # every rank stops after the same step
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < until:
                self.save_checkpoint()
            now = time.perf_counter()
            self.wall += now - wall_mark
            wall_mark = now
            if cfg.time_budget_s:
                fitted = self._fit_budget(step_times, started_at)
                if fitted is not None and (whole_run or fitted <= self.step):
                    until = min(until, fitted)
            if stop.requested:
                self.progress.message(
                    f"demi: stopping at step {self.step} ({stop.requested}); checkpoint written, resume to continue"
                )
                break
        if self.step > started_at:
            self.save_checkpoint()
        self.wall += time.perf_counter() - wall_mark
        self.progress.close()
        return {
            "step": self.step,
            "steps": cfg.steps,
            "tokens_seen": self.tokens_seen,
            "loss": result.loss if result else None,
            "eval_loss": self.last_eval,
            "seconds": round(self.elapsed, 2),
            "wall_seconds": round(self.wall, 2),
            "time_budget_s": cfg.time_budget_s or None,
            "compiled": self.compiled,
            "precision": "bf16" if self.amp is not None else "fp32",
            "fused_adamw": self.fused,
            "threads": torch.get_num_threads(),
            "finished": self.step >= cfg.steps,
            "interrupted": stop.requested,
        }

    def _fit_budget(self, step_times: list[float], started_at: int) -> int | None:
        """With a time budget: once `BUDGET_PROBE_STEPS` steps of this session are timed (inside
        the warmup), fit `steps` to the time left; later, end the run at the step where the
        budget runs out. Returns the new total when it changed, else None."""
        cfg = self.cfg
        if self.budget_steps is None:
            probe = min(BUDGET_PROBE_STEPS, cfg.warmup_steps)
            if self.step - started_at < probe and self.step < cfg.warmup_steps:
                return None
            timed = sorted(step_times[1:] or step_times)  # the first step compiled
            step_s = timed[len(timed) // 2]
            evals = cfg.eval_rows / (cfg.batch_size * cfg.grad_accum * max(1, cfg.eval_every)) / 3
            left = max(0.0, cfg.time_budget_s * BUDGET_MARGIN - self.wall)
            steps = max(self.step + 1, min(cfg.steps, self.step + int(left / (step_s * (1 + evals)))))
            return self._set_steps(steps, f"{step_s:.3f} s a step fits {steps} steps in the time budget")
        if self.wall >= cfg.time_budget_s and self.step < cfg.steps:
            return self._set_steps(self.step, f"the time budget of {cfg.time_budget_s:.0f} s is spent")
        return None

    def _set_steps(self, steps: int, why: str) -> int:
        self.budget_steps = self.cfg.steps = steps
        self.progress.total = steps
        self.progress.message(f"demi: {why}; the run ends at step {steps}")
        if self.on_budget is not None:
            self.on_budget(steps)
        return steps

    def _maybe_prefetch(self) -> None:
        """Past the middle of an epoch, have the data build the next one in a thread."""
        prefetch = getattr(self.data, "prefetch", None)
        if not self.prefetching or prefetch is None:
            return
        epoch_rows = getattr(self.data, "cached_rows", lambda epoch: None)(self.position.epoch)
        if epoch_rows is not None and self.position.row * 2 >= epoch_rows:
            prefetch(self.position.epoch + 1)

    def export(self, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
        """Save the model in Hugging Face layout (config.json, safetensors) plus the tokenizer files.
        Under torchrun every rank takes part (the weights are gathered) and rank 0 writes."""
        out = Path(out_dir)
        model = self.model
        if self.dist.active:
            gathered = self._gathered_model()
            if gathered is None:
                distributed.barrier(self.dist)
                return out
            model = gathered
        if self.cfg.save_dtype == "bfloat16":
            if model is self.model:  # the training weights stay fp32
                copy = Transformer(model.config)
                copy.load_state_dict(model.state_dict())
                model = copy
            model = model.to(torch.bfloat16)
            model.config = model.config.replace(torch_dtype="bfloat16")
        else:
            model.config = model.config.replace(torch_dtype="float32")
        save_model(model, out)
        if tokenizer_dir is not None:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                src = Path(tokenizer_dir) / name
                if src.is_file() and src.resolve() != (out / name).resolve():
                    shutil.copyfile(src, out / name)
        distributed.barrier(self.dist)
        return out

    def _gathered_model(self) -> Transformer | None:
        """The whole model in fp32 on rank 0's CPU (None on the other ranks), gathered from the
        shards or DDP's replica: what `export` saves."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return None
        with torch.device("meta"):
            model = Transformer(self.model.config)
        model.load_state_dict({k.removeprefix(PREFIX): cast(Tensor, v).float() for k, v in full.items()}, assign=True)
        model.tie_weights()
        return model.eval()


def grad_norm(params: list[Tensor], clip: float) -> float:
    """The global gradient norm, clipping to `clip` first when it is > 0. FSDP2's gradients are
    shards (DTensors): their norm is reduced over the ranks into the whole gradient's."""
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


class _StopOnSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self, enabled: bool):
        import threading

        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        import signal

        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal

        if self.requested:  # the second time: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


# How positions are encoded, not what the weights are: continued training may change these (to
# extend the context, or to train under the RoPE scaling a model ships with).
_POSITION_FIELDS = ("rope_scaling", "rope_parameters", "rope_theta", "max_position_embeddings")


def _weights_shape(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if k not in _POSITION_FIELDS}


def _with_defaults(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """Saved data options with the fields added since filled in by their defaults (which keep
    the data the same), so a checkpoint from before a new option resumes."""
    if not isinstance(saved, dict):
        return saved
    try:
        return DataOptions(**saved).as_dict()
    except (TypeError, TrainConfigError):
        return saved


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
