"""The demi-tiny recipe: Demi's built-in model, reproduced from scratch by one command.

    demi train tiny --out runs/demi-tiny            # start, or resume where the last session stopped
    demi train tiny --out runs/demi-tiny --until 2000   # stop at step 2000 (resume later)

Corpus: CPython's standard library (PSF-2.0) and every pure-Python distribution in this
interpreter's site-packages whose METADATA declares MIT, BSD, Apache-2.0, PSF or ISC (others are
listed in the manifest as excluded), deduplicated, one source capped so no package dominates,
2% of files held out. Docstring <-> code chat pairs are drawn from the training files.
Tokenizer: 8192-token byte-level BPE with Demi's special tokens. Model: a qwen2-style decoder
(tied embeddings, GQA) of about 12.6M parameters, saved in bf16 (about 25 MB). Data: FIM on half
of the code samples, two thirds of those SPM (the order demi-tiny is sent), 1024-token rows;
after step 3,600 a second mix (`TINY_PHASES`) with editor-shaped holes. `make tiny` runs 1,800,
then 3,600, then 4,800 steps, as the shipped model was trained.
Everything is seeded; the run directory keeps a snapshot of the corpus, so a resume in a later
session trains on the same files even if the installed packages changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from demi.model.config import ModelConfig
from demi.train import distributed
from demi.train.corpus import site_packages_sources, stdlib_source
from demi.train.distributed import SINGLE, DistEnv
from demi.train.errors import TrainConfigError
from demi.train.pipeline import RunSpec, load_run, prepare_run, train_run
from demi.train.trainer import write_json

TINY_SEED = 1234
MB = 1_000_000
MAX_SHIPPED_BYTES = 40 * MB  # the model directory as it goes into the repository
SHIPPED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "training.json")


def tiny_model_config(vocab_size: int = 8192) -> ModelConfig:
    return ModelConfig(**tiny_model_fields(), vocab_size=vocab_size)


def tiny_model_fields() -> dict[str, Any]:
    """The shape. Training sequences are 1,024 tokens and the model cannot read further unscaled
    (held-out line exact match with 1,536-token prompts: 1 in 120, against 13 with 1,024-token
    ones), so YaRN (factor 2 over 1,024) gives it 2,048 positions: 9 in 120 at 1,536 tokens, and
    FIM exact match on the held-out set unchanged within noise (14.0% against 14.4%). A static
    scaling, unlike dynamic NTK (8 in 120), rotates every position the same way whatever the
    prompt's length, so cached keys stay exact when a prefix is reused."""
    return dict(
        model_type="qwen2",
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 1024},
        rope_theta=1e5,
        rms_norm_eps=1e-6,
        qkv_bias=True,
        tie_word_embeddings=True,
    )


def tiny_spec() -> RunSpec:
    return RunSpec(
        name="demi-tiny",
        model=tiny_model_fields(),
        vocab_size=8192,
        train=dict(
            steps=1800,
            batch_size=16,
            grad_accum=1,
            lr=2e-3,
            min_lr_ratio=0.1,
            warmup_steps=150,
            weight_decay=0.1,
            clip=1.0,
            precision="auto",
            compile="auto",
            eval_every=250,
            eval_rows=64,
            eval_fim_lines=48,  # the curve's exact match (fim_probe.py), a few seconds per evaluation
            ckpt_every=100,
            keep_checkpoints=2,
            log_every=25,
            seed=TINY_SEED,
            save_dtype="bfloat16",
        ),
        data=dict(
            seq_len=1024,
            fim_rate=0.5,
            spm_rate=0.67,
            file_sep_rate=0.5,
            repo_rate=0.1,
            max_repo_files=2,
            seed=TINY_SEED,
        ),
        corpus=dict(
            permissive_only=True,
            on_bad="skip",
            near_threshold=0.85,
            heldout_fraction=0.02,
            pairs=True,
            max_source_bytes={"cpython-stdlib": 40 * MB, "*": 12 * MB},
        ),
        phases=TINY_PHASES,
    )


# After 3,600 steps of uniform FIM holes, a phase where half the holes are an editor's (the rest
# of a line from the cursor, sometimes a few lines more: `fim.line_split_points`) and more
# samples are FIM: what completing the current line asks of the model.
TINY_PHASES = [{"from_step": 3600, "data": {"fim_rate": 0.6, "line_fim_rate": 0.5, "seed": TINY_SEED + 1}}]


def _adopt_phases(out: Path, spec: RunSpec, log) -> None:
    """A run prepared before the recipe had its later phases gets them, if it has not trained
    past where they begin (a run that has would have trained on other data)."""
    if spec.phases == TINY_PHASES:
        return
    from demi.train import checkpoints

    step = checkpoints.saved_step(checkpoints.latest_checkpoint(out))
    first = min(p["from_step"] for p in TINY_PHASES + spec.phases)
    if step > first:
        raise TrainConfigError(
            f"{out}: the run is at step {step}, past step {first} where the recipe's data "
            "phases differ from the run's; start a new run directory"
        )
    spec.phases = TINY_PHASES
    write_json(out / "run.json", spec.to_json())
    log(f"{out}: the recipe's data phases added to run.json")


def tiny_sources():
    return [stdlib_source(), *site_packages_sources()]


def prepare_tiny(out: str | Path, log=print) -> None:
    """The corpus, tokenizer and run.json the first time; the recipe's data phases adopted later."""
    out = Path(out)
    if not (out / "run.json").is_file():
        prepare_run(out, tiny_spec(), tiny_sources(), log=log)
    else:
        spec = load_run(out)
        log(f"{out}: continuing the {spec.name} run")
        _adopt_phases(out, spec, log)


def build_tiny(
    out: str | Path,
    until: int | None = None,
    steps: int | None = None,
    progress: bool = True,
    log=print,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    dist: DistEnv = SINGLE,
) -> dict[str, Any]:
    """Prepare (first time only) and train demi-tiny in `out`; resumable at any point. Under
    torchrun rank 0 prepares while the others wait, then all train."""
    distributed.on_main(dist, lambda: prepare_tiny(out, log))
    return train_run(
        Path(out), steps=steps, until=until, progress=progress, log=log, overrides=overrides, device=device, dist=dist
    )


def ship(run_dir: str | Path, dest: str | Path, card: str | Path | None = None) -> dict[str, Any]:
    """Copy a finished run's model into `dest` (e.g. model/builtin/demi-tiny) with its manifest
    (the attribution of every source) and model card, after checking that only permissive
    sources went in and that it fits the repository budget."""
    run, dest = Path(run_dir), Path(dest)
    model = run / "model"
    missing = [f for f in SHIPPED_FILES if not (model / f).is_file()]
    if missing:
        raise TrainConfigError(
            f"{run}: the run has no finished model ({', '.join(missing)} missing); train it to the end first"
        )
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    if not manifest.get("shippable"):
        bad = [s["name"] for s in manifest["sources"] if s["files"] and not s["license"]["permissive"]]
        raise TrainConfigError(f"{run}: not shippable: sources without a permissive license went in: {bad[:5]}")
    size = sum((model / f).stat().st_size for f in SHIPPED_FILES) + (run / "manifest.json").stat().st_size
    if size > MAX_SHIPPED_BYTES:
        raise TrainConfigError(
            f"{run}: {size / MB:.1f} MB is over the {MAX_SHIPPED_BYTES / MB:.0f} MB budget "
            "for a model in the repository (save in bfloat16?)"
        )
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in SHIPPED_FILES:
        shutil.copyfile(model / f, tmp / f)
    shutil.copyfile(run / "manifest.json", tmp / "manifest.json")
    if card is not None and Path(card).is_file():
        shutil.copyfile(card, tmp / "README.md")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return {"dest": str(dest), "bytes": size, "files": sorted(p.name for p in dest.iterdir())}
