"""demi-gpu: a larger demi (about 62M parameters) trained on the whole registry corpus in ten
minutes of one H200-class GPU.

    # here, with the registries reachable: the corpus store (Python and npm packages)
    demi train fetch --dest ~/.cache/demi/registry
    # here: corpus snapshot, manifest, tokenizer and run.json (CPU work, no GPU needed)
    demi train gpu --registry ~/.cache/demi/registry --out runs/demi-gpu --prepare-only
    # on the GPU machine (the run directory copied there): ten minutes, then RUN/model
    demi train gpu --out runs/demi-gpu --device cuda

The model: a qwen2-style decoder, hidden 640, 12 layers, SwiGLU 1,728, 10 query / 2 key-value
heads, a 16,384-token BPE learned from the corpus (tied embeddings): 62M parameters. Training:
rows of 2,048 tokens, 64 a step (131k tokens), AdamW fused, bf16 autocast, torch.compile, the
next epoch's rows built in a thread while the GPU trains; `--time-budget` (600 s) fits the number
of steps to the budget after the first ten steps and ends the run there (see
`TrainConfig.time_budget_s`). The data mix is demi-tiny's second one from the start (60% FIM, half
of it with an editor's hole), held-out 2% by package, no source over 8 MB. Evaluations log the
held-out loss and the greedy exact match of 32 held-out lines (`demi train curve` makes the table).

`scale="test"` is the same recipe and code path at a size a CPU runs in seconds (a 2-layer
model, 128-token rows): the end-to-end test of this command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from demi.train import distributed
from demi.train.corpus import Source, stdlib_source
from demi.train.distributed import SINGLE, DistEnv
from demi.train.errors import TrainConfigError
from demi.train.pipeline import RunSpec, load_run, prepare_run, train_run
from demi.train.registry import registry_sources

GPU_SEED = 2025
MB = 1_000_000
SCALES = ("full", "test")


def gpu_model_fields(scale: str = "full") -> dict[str, Any]:
    if scale == "test":
        return dict(
            model_type="qwen2",
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_theta=1e4,
            rms_norm_eps=1e-6,
            qkv_bias=True,
            tie_word_embeddings=True,
        )
    return dict(
        model_type="qwen2",
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=12,
        num_attention_heads=10,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=1e5,
        rms_norm_eps=1e-6,
        qkv_bias=True,
        tie_word_embeddings=True,
    )


def gpu_spec(scale: str = "full", time_budget_s: float = 600.0) -> RunSpec:
    if scale not in SCALES:
        raise TrainConfigError(f"scale is one of {', '.join(SCALES)}")
    test = scale == "test"
    return RunSpec(
        name="demi-gpu" if not test else "demi-gpu-test",
        model=gpu_model_fields(scale),
        vocab_size=16384 if not test else 512,
        train=dict(
            steps=100_000 if not test else 24,  # a ceiling: the time budget fits the real number
            batch_size=64 if not test else 4,
            grad_accum=1,
            lr=1.2e-3 if not test else 3e-3,
            min_lr_ratio=0.1,
            warmup_steps=150 if not test else 4,
            weight_decay=0.1,
            clip=1.0,
            precision="bf16" if not test else "auto",
            compile="on" if not test else "off",
            prefetch="auto" if not test else "on",
            eval_every=250 if not test else 6,
            eval_rows=256 if not test else 8,
            eval_fim_lines=32 if not test else 4,
            ckpt_every=500 if not test else 6,
            keep_checkpoints=2,
            log_every=25 if not test else 1,
            seed=GPU_SEED,
            save_dtype="bfloat16",
            time_budget_s=time_budget_s,
        ),
        data=dict(
            seq_len=2048 if not test else 128,
            fim_rate=0.6,
            spm_rate=0.67,
            line_fim_rate=0.5,
            file_sep_rate=0.5,
            repo_rate=0.1,
            max_repo_files=2,
            seed=GPU_SEED,
        ),
        corpus=dict(
            permissive_only=True,
            on_bad="skip",
            near_threshold=0.85,
            heldout_fraction=0.02 if not test else 0.25,
            heldout_by="package",
            pairs=True,
            max_source_bytes={"cpython-stdlib": 40 * MB, "*": 8 * MB},
            tokenizer_bytes=200 * MB,
        ),
    )


def gpu_sources(registry: str | Path, stdlib: bool = True) -> list[Source]:
    """The fetched registry packages, and this Python's standard library unless `stdlib` is False."""
    return ([stdlib_source()] if stdlib else []) + registry_sources(registry)


def build_gpu(
    out: str | Path,
    registry: str | Path | None = None,
    scale: str = "full",
    time_budget_s: float = 600.0,
    stdlib: bool = True,
    max_corpus_bytes: int | None = None,
    prepare_only: bool = False,
    progress: bool = True,
    log=print,
    overrides: dict[str, Any] | None = None,
    device: str = "cuda",
    dist: DistEnv = SINGLE,
) -> dict[str, Any]:
    """Prepare the run (first time: needs `registry`) and train it within the time budget;
    rerunning resumes. Returns the trainer's summary (or what was prepared). `max_corpus_bytes`
    sizes a new run's corpus (`build_corpus`'s `max_total_bytes`): the whole store is about
    1.7 GB, as much as ten minutes of an H200 trains on."""
    out = Path(out)

    def prepare() -> None:
        if (out / "run.json").is_file():
            log(f"{out}: continuing the {load_run(out).name} run")
            return
        if registry is None:
            raise TrainConfigError(f"{out} holds no run yet: give --registry DIR (a `demi train fetch` store)")
        spec = gpu_spec(scale, time_budget_s)
        if max_corpus_bytes is not None:
            spec.corpus["max_total_bytes"] = max_corpus_bytes
        prepare_run(out, spec, gpu_sources(registry, stdlib), log=log)

    distributed.on_main(dist, prepare)
    if prepare_only:
        return {"run": str(out), "prepared": True, "finished": False, "interrupted": None}
    return train_run(out, progress=progress, log=log, overrides=overrides, device=device, dist=dist)
