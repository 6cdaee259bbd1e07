"""One process of the distributed training tests, started by torchrun from
test_train_distributed.py (not a test itself): runs the jobs listed in a JSON file in order, each
a short Trainer run under DDP or FSDP2, fresh or resumed, rank 0 writing each job's losses and
summary. `build` is the one-process side's recipe too, so both train on the same rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from test_train_support import micro_config, module_text

from demi.model.tokenizer import Tokenizer
from demi.train import distributed
from demi.train.corpus import Document
from demi.train.data import DataOptions, PackedData
from demi.train.distributed import SINGLE, DistEnv
from demi.train.pairs import extract_pairs
from demi.train.trainer import StepResult, TrainConfig, Trainer, init_model

SETTINGS: dict[str, Any] = dict(
    steps=4,
    warmup_steps=1,
    lr=3e-3,
    compile="off",
    precision="fp32",
    eval_every=2,
    eval_rows=6,
    ckpt_every=2,
    log_every=1,
    threads=1,
)


def build_data(tok: Tokenizer) -> PackedData:
    docs = [Document("src", f"pkg/m{i}.py", module_text(i)) for i in range(12)]
    held = [Document("src", "pkg/held.py", module_text(40))]
    return PackedData(docs, tok, DataOptions(seq_len=32, seed=0), extract_pairs(docs), held)


def build(run_dir: Path, tok: Tokenizer, data: PackedData, dist: DistEnv = SINGLE, **changes: Any) -> Trainer:
    cfg = TrainConfig(**{**SETTINGS, **changes})
    return Trainer(init_model(micro_config(tok.vocab_size), seed=0), data, cfg, run_dir, progress=False, dist=dist)


def record(trainer: Trainer) -> dict[int, list[float]]:
    """Each step's loss and gradient norm, filled in as the trainer runs."""
    seen: dict[int, list[float]] = {}

    def on_step(step: int, result: StepResult) -> None:
        seen[step] = [result.loss, result.grad_norm]

    trainer.on_step = on_step
    return seen


def run_job(job: dict[str, Any], tok: Tokenizer, data: PackedData) -> DistEnv:
    env, _ = distributed.init(job["parallel"], "cpu")
    run_dir = Path(job["run_dir"])
    trainer = build(run_dir, tok, data, env, **job.get("settings", {}))
    seen = record(trainer)
    resumed = trainer.resume() if job.get("resume") else False  # from the run's latest checkpoint
    summary = trainer.train(until=job.get("until"))
    if job.get("export"):
        trainer.export(run_dir / "model")
    if env.is_main:
        out = {"losses": seen, "summary": summary, "resumed": resumed, "world_size": env.world_size}
        Path(job["out"]).write_text(json.dumps(out))
    return env


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(1)
    tok = Tokenizer.from_dir(spec["tok_dir"])
    data = build_data(tok)
    env = SINGLE
    for job in spec["jobs"]:
        env = run_job(job, tok, data)
    distributed.shutdown(env)
    distributed.exit_rank(env, 0)  # as `demi train` ends a rank: not through the interpreter's teardown


if __name__ == "__main__":
    main()
