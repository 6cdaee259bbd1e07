"""`demi train ...` (fetch, corpus, tokenizer, run, distill, tiny, gpu, curve, bench) and `demi eval fim|passk`.

Progress and notes go to stderr; `--json` prints one JSON object on stdout at the end. Under
torchrun (`torchrun --nproc_per_node N -m demi train run ...`) only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from demi.cli.main import UsageError, emit_json

SHAPES: dict[str, dict[str, Any] | None] = {
    # name: decoder shape (vocab_size comes from the tokenizer)
    "tiny": None,  # demi-tiny's own shape (train/tiny.py)
    "small": dict(
        model_type="qwen2",
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=1e5,
        qkv_bias=True,
        tie_word_embeddings=True,
    ),
    "micro": dict(
        model_type="qwen2",
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=1e4,
        qkv_bias=True,
        tie_word_embeddings=True,
    ),
}


MAX_CORPUS_HELP = (
    "size the corpus to the compute: the same share of every package's files, fitted so that their code "
    "on disk comes to about this many MB"
)


def register(sub, common, ev: argparse._SubParsersAction) -> None:
    """`demi train ACTION`, and `demi eval fim|passk` added to `ev`: the `eval` command's
    sub-command table, made by commands_engine and handed over by main.build_parser."""
    from demi.cli.commands_engine import eval_quant_help

    train = sub.add_parser(
        "train",
        help="build corpora and tokenizers, train and distill models",
        description="Demi's training pipeline (see train/).",
    )
    tsub = train.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    fetch = tsub.add_parser(
        "fetch",
        parents=[common(model=False)],
        help="fetch permissively licensed packages from the Python and npm registries into a corpus store",
        description="Fetch the packages of the shipped lists (most downloaded first) with pip (wheels) and "
        "npm (tarballs), check each package's license, and unpack the permissive ones' code into --dest. "
        "Resumable: packages already in the store are skipped.",
    )
    fetch.add_argument("--dest", type=Path, default=None, help="the store (default: the user cache's demi/registry)")
    fetch.add_argument("--only", choices=["pypi", "npm"], help="one registry (default: both, interleaved)")
    fetch.add_argument("--pypi-list", type=Path, help="package list for pip (default: the shipped one)")
    fetch.add_argument("--npm-list", type=Path, help="package list for npm (default: the shipped one)")
    fetch.add_argument("--limit", type=int, help="only the first N packages of each list")
    fetch.add_argument("--max-seconds", type=float, help="stop starting new packages after this long")
    fetch.add_argument("--max-mb", type=float, help="stop once the store holds this many MB of code")
    fetch.add_argument("--jobs", type=int, default=4, help="packages fetched at once (default 4)")
    fetch.add_argument("--retry-failed", action="store_true", help="try again the packages that failed before")
    fetch.add_argument(
        "--retry-refused",
        action="store_true",
        help="fetch again the packages whose license was refused (after Demi's license rules changed)",
    )
    fetch.add_argument("--pip-arg", action="append", default=[], help="an extra argument for pip download (repeatable)")
    fetch.add_argument("--npm-arg", action="append", default=[], help="an extra argument for npm pack (repeatable)")
    fetch.set_defaults(func=cmd_fetch)

    corpus = tsub.add_parser(
        "corpus",
        parents=[common(model=False)],
        help="read, filter and deduplicate a corpus; print or write its manifest",
    )
    _corpus_args(corpus)
    corpus.add_argument("--out", type=Path, help="write the manifest JSON here")
    corpus.set_defaults(func=cmd_corpus)

    tok = tsub.add_parser(
        "tokenizer", parents=[common(model=False)], help="train a byte-level BPE tokenizer with Demi's special tokens"
    )
    _corpus_args(tok)
    tok.add_argument("--out", type=Path, required=True, help="directory for tokenizer.json + tokenizer_config.json")
    tok.add_argument("--vocab-size", type=int, default=8192)
    tok.set_defaults(func=cmd_tokenizer)

    run = tsub.add_parser(
        "run",
        parents=[common(model=False)],
        help="train a model on a corpus (resumable)",
        description="Train a decoder on source directories. A new --out builds the corpus "
        "snapshot, manifest and tokenizer first; --resume continues a run from its "
        "latest checkpoint.",
    )
    _run_args(run)
    run.set_defaults(func=cmd_run, distill=False)

    dist = tsub.add_parser(
        "distill",
        parents=[common(model=False)],
        help="train a student on a teacher's temperature-softened logits plus cross-entropy",
    )
    dist.add_argument("--teacher", required=True, help="teacher model directory (same tokenizer as the student)")
    dist.add_argument("--alpha", type=float, default=0.5, help="weight of the KL term (default 0.5)")
    dist.add_argument("--temperature", type=float, default=2.0)
    _run_args(dist)
    dist.set_defaults(func=cmd_run, distill=True)

    tiny = tsub.add_parser(
        "tiny",
        parents=[common(model=False)],
        help="reproduce demi-tiny from scratch (resumable)",
        description="Build demi-tiny: permissive Python from this machine, fixed seed. Rerun "
        "the same command to resume from the latest checkpoint.",
    )
    tiny.add_argument("--out", type=Path, required=True, help="run directory")
    tiny.add_argument("--until", type=int, help="stop at this step (continue later with the same command)")
    tiny.add_argument("--steps", type=int, help="change the total number of steps")
    tiny.add_argument(
        "--ship",
        type=Path,
        metavar="DIR",
        help="after training, copy the model with its manifest and model card into DIR "
        "(model/builtin/demi-tiny); checks licenses and the 40 MB budget",
    )
    _speed_args(tiny)
    tiny.set_defaults(func=cmd_tiny)

    gpu = tsub.add_parser(
        "gpu",
        parents=[common(model=False)],
        help="the GPU recipe: a 62M-parameter demi on the whole registry corpus in a time budget (resumable)",
        description="Prepare (corpus, tokenizer: CPU work) and train demi-gpu: 62M parameters, bf16, "
        "torch.compile, fused AdamW, steps fitted to --time-budget. Rerun the same command to resume.",
    )
    gpu.add_argument("--out", type=Path, required=True, help="run directory")
    gpu.add_argument("--registry", type=Path, help="the `demi train fetch` store (needed for a new run)")
    gpu.add_argument("--time-budget", type=float, default=600.0, help="seconds of training in all (default 600)")
    gpu.add_argument("--no-stdlib", action="store_true", help="leave this Python's standard library out")
    gpu.add_argument("--prepare-only", action="store_true", help="build the run directory and stop (no training)")
    gpu.add_argument("--max-corpus-mb", type=float, metavar="MB", help=MAX_CORPUS_HELP)
    gpu.add_argument("--scale", choices=["full", "test"], default="full", help=argparse.SUPPRESS)
    _speed_args(gpu)
    gpu.set_defaults(func=cmd_gpu, device="cuda")

    curve = tsub.add_parser(
        "curve",
        parents=[common(model=False)],
        help="a run's held-out loss and exact match against tokens seen: RUN/curve.json, a table, the model card",
    )
    curve.add_argument("--run", type=Path, required=True, help="run directory")
    curve.add_argument("--card", type=Path, help="write the table into this model card (between its markers)")
    curve.set_defaults(func=cmd_curve)

    exp = tsub.add_parser(
        "export",
        parents=[common(model=False)],
        help="write a run's latest (or a given) checkpoint as a model directory",
    )
    exp.add_argument("--run", type=Path, required=True, help="run directory")
    exp.add_argument("--to", type=Path, required=True, help="new model directory")
    exp.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the latest)")
    exp.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32")
    exp.set_defaults(func=cmd_export)

    bench = tsub.add_parser("bench", parents=[common(model=False)], help="trainer speed in tokens/s")
    bench.add_argument("--shape", default="tiny", choices=["tiny", "small", "micro"])
    bench.add_argument("--seq-len", type=int, default=512)
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--steps", type=int, default=6)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--compile", choices=["on", "off"], default="off")
    bench.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    bench.add_argument("--grad-checkpointing", action="store_true")
    bench.add_argument("--threads", type=int, default=0)
    bench.set_defaults(func=cmd_bench)

    fim = ev.add_parser(
        "fim",
        parents=[common()],
        help="FIM line exact match and edit similarity",
        description="Put the cursor at the start of a code line or after a word in it, ask the "
        "model (through demi complete's prompt) for the rest of the line, and score "
        "exact match and edit similarity.",
    )
    fim.add_argument("files", nargs="*", metavar="PATH", help="files or directories (their *.py files)")
    fim.add_argument("--run", type=Path, help="use a training run's held-out files")
    fim.add_argument("--samples", type=int, default=100)
    fim.add_argument("--seed", type=int, default=0)
    fim.add_argument("--max-tokens", type=int, default=48)
    fim.set_defaults(func=cmd_eval_fim)
    eval_quant_help(fim)

    pk = ev.add_parser(
        "passk",
        parents=[common()],
        help="execution-based pass@k on HumanEval-format JSONL",
        description="Generate completions for each problem and run each against its tests in a "
        "sandboxed subprocess with a timeout and no network.",
    )
    pk.add_argument("--problems", type=Path, help="HumanEval-format JSONL (default: Demi's tiny built-in set)")
    pk.add_argument("--samples", "-n", type=int, default=1, help="completions per problem")
    pk.add_argument("--k", default="1", help="comma-separated k values (each <= --samples)")
    pk.add_argument("--temperature", type=float, default=None, help="default: 0 (greedy) for n=1, else 0.8")
    pk.add_argument("--max-tokens", type=int, default=256)
    pk.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--limit", type=int, default=None, help="only the first N problems")
    pk.set_defaults(func=cmd_eval_passk)
    eval_quant_help(pk)


def _corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus", action="append", default=[], metavar="DIR", help="a directory (or file) of source files; repeatable"
    )
    p.add_argument("--stdlib", action="store_true", help="add this Python's standard library (PSF-2.0)")
    p.add_argument(
        "--site-packages",
        action="store_true",
        help="add the installed distributions (license from each one's METADATA)",
    )
    p.add_argument("--license", help="the SPDX license of the --corpus directories (else read from a LICENSE file)")
    p.add_argument("--ext", action="append", default=[], help="file extension to include (default .py); repeatable")
    p.add_argument(
        "--permissive-only",
        action="store_true",
        help="leave out sources that are not MIT/BSD/Apache/PSF/ISC (required for a shipped model)",
    )
    p.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave out unreadable, binary or non-UTF-8 files instead of stopping",
    )
    p.add_argument(
        "--registry",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="add every package of a `demi train fetch` store (license per package); repeatable",
    )
    p.add_argument("--near-dup", type=float, default=0.85, help="near-duplicate Jaccard threshold (0 turns it off)")
    p.add_argument("--heldout", type=float, default=0.02, help="share of files (or packages) held out for evaluation")
    p.add_argument(
        "--heldout-by",
        choices=["file", "package"],
        default="file",
        help="hold out single files, or whole packages so held-out code shares no package with training",
    )
    p.add_argument("--max-corpus-mb", type=float, metavar="MB", help=MAX_CORPUS_HELP)


def _speed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default=None, help="torch.compile (default auto)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="bf16 autocast (default auto: on a CPU the faster of fp32 and bf16 in a short measurement, "
        "cached per CPU; on CUDA bf16)",
    )
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in the backward pass (less memory, ~30%% slower)",
    )
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument(
        "--eval-fim-lines",
        type=int,
        default=None,
        metavar="N",
        help="at each evaluation also complete N held-out lines greedily (exact match, for the curve)",
    )
    p.add_argument("--ckpt-every", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--parallel",
        choices=["none", "ddp", "fsdp"],
        default=None,
        help="under torchrun: ddp (a model replica per process; the default with several processes) or "
        "fsdp (parameters, gradients and optimizer state sharded over the processes, for models that do "
        "not fit on one device)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


def _run_args(p: argparse.ArgumentParser) -> None:
    _corpus_args(p)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--resume-from", type=Path, help="continue from this checkpoint directory")
    p.add_argument("--until", type=int, help="stop at this step (resume later)")
    p.add_argument(
        "--shape",
        default="small",
        choices=_shape_names(),
        help="model shape: tiny, small, micro or a preset (demiurgic-1b, ...; default small)",
    )
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int)
    p.add_argument("--experts", type=int, default=0, help="mixture of experts: number of experts (mixtral layout)")
    p.add_argument("--experts-per-token", type=int, default=2)
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--tokenizer", type=Path, help="use this tokenizer directory instead of training one")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps (default 1000; with --resume: change the total)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--fim-rate", type=float, default=0.5)
    p.add_argument("--spm-rate", type=float, default=0.5)
    p.add_argument("--repo-rate", type=float, default=0.1)
    p.add_argument("--no-pairs", action="store_true", help="no docstring <-> code chat samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dtype", choices=["float32", "bfloat16"], default="float32")
    _speed_args(p)


# -- helpers -------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"demi: {msg}", file=sys.stderr, flush=True)


def _sources(args: argparse.Namespace) -> list:
    from demi.train.corpus import directory_source, site_packages_sources, stdlib_source

    exts = tuple(e if e.startswith(".") else f".{e}" for e in args.ext) or (".py",)
    sources = [directory_source(d, license=args.license, extensions=exts) for d in args.corpus]
    if args.stdlib:
        sources.append(stdlib_source())
    if args.site_packages:
        sources += site_packages_sources()
    if args.registry:
        from demi.train.registry import registry_sources

        for store in args.registry:
            sources += registry_sources(store)
    if not sources:
        raise UsageError("give at least one --corpus DIR (or --stdlib / --site-packages / --registry DIR)")
    return sources


def _corpus_settings(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        permissive_only=args.permissive_only,
        on_bad="skip" if args.skip_bad_files else "error",
        near_threshold=args.near_dup or None,
        heldout_fraction=args.heldout,
        heldout_by=args.heldout_by,
        max_total_bytes=_corpus_bytes(args),
    )


def _corpus_bytes(args: argparse.Namespace) -> int | None:
    mb = getattr(args, "max_corpus_mb", None)
    if mb is None:
        return None
    if mb <= 0:
        raise UsageError("demi train: --max-corpus-mb must be more than 0")
    return int(mb * 1_000_000)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "threads": args.threads,
        "compile": args.compile,
        "precision": args.precision,
        "grad_checkpointing": args.grad_checkpointing,
        "eval_every": args.eval_every,
        "ckpt_every": args.ckpt_every,
        "eval_fim_lines": args.eval_fim_lines,
    }


def _device(args: argparse.Namespace) -> str:
    from demi.model.loading import resolve_device

    return str(resolve_device(args.device))  # a DemiUserError when CUDA is asked for and absent


@contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[tuple[Any, str]]:
    """(DistEnv, device) for this process: under torchrun it joins the process group for the
    command's length; a rank that waited for rank 0's failure exits quietly with its code
    (rank 0 prints the one line)."""
    from demi.train import distributed

    env, device = distributed.init(args.parallel, _device(args))
    try:
        yield env, device
    except distributed.PeerError as exc:
        raise SystemExit(2 if exc.user else 1) from None
    finally:
        distributed.shutdown(env)


def _exit_rank(env: Any, code: int) -> int:
    """`code`, or the end of a torchrun rank without the interpreter's teardown (see
    distributed.exit_rank)."""
    from demi.train import distributed

    return distributed.exit_rank(env, code)


def _print_summary(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    if args.json:
        emit_json(summary)
        return
    ev = f", eval loss {summary['eval_loss']:.4f}" if summary.get("eval_loss") is not None else ""
    loss = f"{summary['loss']:.4f}" if summary.get("loss") is not None else "-"
    print(
        f"step {summary['step']}/{summary['steps']}: loss {loss}{ev}; "
        f"{summary['tokens_seen']:,} tokens in {summary['seconds']:.0f} s"
    )
    if summary.get("model_dir"):
        print(f"model saved in {summary['model_dir']}")
    elif not summary.get("finished"):
        print(
            f"stopped at step {summary['step']} (checkpoint written); continue with the same command"
            f"{'' if args.train_command in ('tiny', 'gpu') else ' and --resume'} ({summary['run']})"
        )


# -- commands -------------------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    from demi.train.registry import REGISTRIES, Fetcher, todo_from_lists

    if args.jobs < 1 or (args.limit is not None and args.limit < 1):
        raise UsageError("demi train fetch: --jobs and --limit must be >= 1")
    dest = args.dest
    if dest is None:
        import platformdirs

        dest = Path(platformdirs.user_cache_dir("demi")) / "registry"
    registries = [args.only] if args.only else list(REGISTRIES)
    lists = {r: p for r, p in (("pypi", args.pypi_list), ("npm", args.npm_list)) if p is not None}
    todo = todo_from_lists(registries, lists, limit=args.limit)
    fetcher = Fetcher(dest, pip_args=args.pip_arg, npm_args=args.npm_arg)

    def done(item, count: int, total: int) -> None:
        what = (
            f"{item.files} files, {item.bytes / 1e6:.2f} MB, {item.license.get('spdx')}"
            if item.ok and item.license.get("permissive")
            else f"excluded: license {item.license.get('spdx')!r}"
            if item.ok
            else f"failed: {item.error}"
        )
        _log(f"[{count}/{total}] {item.registry} {item.name or item.spec} {item.version}: {what}")

    report = fetcher.fetch_many(
        todo,
        jobs=args.jobs,
        max_seconds=args.max_seconds,
        max_bytes=int(args.max_mb * 1e6) if args.max_mb else None,
        on_done=done if not args.json else None,
        retry_failed=args.retry_failed,
        retry_refused=args.retry_refused,
    )
    if args.json:
        emit_json(report)
        return 0
    for reg in registries:
        r = report[reg]
        print(
            f"{reg}: {r['packages']} packages, {r['files']} files, {r['bytes'] / 1e6:.1f} MB of code; "
            f"{r['excluded_by_license']} excluded by license, {r['failed']} failed"
            + (f", {r['no_pure_wheel']} without a pure-Python wheel" if r.get("no_pure_wheel") else "")
        )
    left = f"; {report['pending']} not fetched yet (run it again to go on)" if report["pending"] else ""
    print(f"store: {report['dest']} ({report['attempted']} packages this time, {report['seconds']:.0f} s{left})")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from demi.train.corpus import ManifestOnly, build_corpus, source_summary, write_manifest

    progress = None if args.json else _log
    corpus = build_corpus(_sources(args), **_corpus_settings(args), sink=ManifestOnly(), progress=progress)
    if args.out:
        write_manifest(corpus, args.out)
    if args.json:
        emit_json(
            corpus.manifest
            if not args.out
            else {
                "manifest": str(args.out),
                **{k: corpus.manifest[k] for k in ("files", "train_files", "heldout_files", "bytes", "shippable")},
            }
        )
        return 0
    for row in source_summary(corpus):
        note = f"  EXCLUDED: {row['excluded']}" if row["excluded"] else ""
        print(
            f"{row['name']:24s} {row['version']:12s} {row['license'][:32]:32s} {row['files']:6d} files "
            f"{row['bytes'] / 1e6:8.2f} MB{note}"
        )
    m = corpus.manifest
    print(
        f"{m['files']} files ({m['heldout_files']} held out), {m['bytes'] / 1e6:.1f} MB; "
        f"duplicates removed: {m['dedup']['exact_removed']} exact, {m['dedup']['near_removed']} near; "
        f"skipped {m['skipped_count']}; shippable: {m['shippable']}"
    )
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from demi.model.bpe_train import train_bpe_tokenizer
    from demi.train.corpus import build_corpus

    corpus = build_corpus(_sources(args), **{**_corpus_settings(args), "heldout_fraction": 0.0})
    tok = train_bpe_tokenizer((d.text for d in corpus.train), args.out, vocab_size=args.vocab_size)
    out = {"tokenizer": str(args.out), "vocab_size": tok.vocab_size, "files": len(corpus.train)}
    emit_json(out) if args.json else print(f"tokenizer with {tok.vocab_size} tokens in {args.out}")
    return 0


# A preset's fields that come from the run's tokenizer (or do not describe the weights' shape).
_NOT_SHAPE = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "quantization_config")


def _shape_names() -> list[str]:
    from demi.model.presets import preset_names

    return sorted(SHAPES) + preset_names()


def _shape_fields(shape: str) -> dict[str, Any]:
    """The decoder fields of a --shape (a fresh dict): one of SHAPES, or a preset of
    `demi models` (demiurgic-1b, ...), its vocabulary size coming from the tokenizer."""
    if shape not in SHAPES:
        import dataclasses

        from demi.model.presets import get_preset

        cfg = get_preset(shape)
        dense = not cfg.is_moe  # (a dense preset leaves the expert counts at 0)
        return {
            f.name: getattr(cfg, f.name)
            for f in dataclasses.fields(cfg)
            if f.name not in _NOT_SHAPE and not (dense and f.name.startswith("num_experts"))
        }
    fields = SHAPES[shape]
    if fields is None:  # tiny
        from demi.train.tiny import tiny_model_fields

        return tiny_model_fields()
    return dict(fields)


def _model_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _shape_fields(args.shape)
    for flag, key in (
        ("layers", "num_hidden_layers"),
        ("hidden", "hidden_size"),
        ("intermediate", "intermediate_size"),
        ("heads", "num_attention_heads"),
        ("kv_heads", "num_key_value_heads"),
    ):
        if getattr(args, flag) is not None:
            fields[key] = getattr(args, flag)
    fields["max_position_embeddings"] = max(fields.get("max_position_embeddings", 0), args.seq_len)
    if args.experts:
        if not 0 < args.experts_per_token <= args.experts:
            raise UsageError("--experts-per-token must be between 1 and --experts")
        fields.update(
            model_type="mixtral",
            num_experts=args.experts,
            num_experts_per_tok=args.experts_per_token,
            qkv_bias=False,
            router="softmax",
        )
    for key, value in fields.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1 and key.startswith("num_"):
            raise UsageError(f"{key} must be at least 1")
    return fields


def cmd_run(args: argparse.Namespace) -> int:
    from demi.train import distributed
    from demi.train.pipeline import train_run

    with _process_group(args) as (env, device):
        distributed.on_main(env, lambda: _prepare_run(args, env.world_size))
        summary = train_run(
            args.out,
            steps=args.steps,
            until=args.until,
            progress=not args.no_progress,
            resume_from=args.resume_from,
            log=_log,
            overrides=_overrides(args),
            device=device,
            dist=env,
        )
    if env.is_main:
        _print_summary(args, summary)
    return _exit_rank(env, 130 if summary.get("interrupted") else 0)


def _prepare_run(args: argparse.Namespace, world_size: int) -> None:
    """Check the arguments against --out and, for a new run, build its corpus snapshot, manifest,
    tokenizer and run.json (rank 0 alone under torchrun)."""
    from demi.train.pipeline import RunSpec, prepare_run

    run_json = args.out / "run.json"
    if run_json.is_file() and not (args.resume or args.resume_from):
        raise UsageError(
            f"demi train: {args.out} already holds a run; pass --resume to continue it or choose a new --out"
        )
    if not run_json.is_file():
        if args.resume or args.resume_from:
            from demi.train.errors import ResumeError

            raise ResumeError(f"{args.out}: no run to resume (no run.json)")
        teacher = None
        tokenizer = args.tokenizer
        if args.distill:
            teacher = str(Path(args.teacher).resolve())
            _check_model_dir(teacher)
            if tokenizer is not None:  # refuse a mismatch now, not after reading the corpus
                _check_teacher_vocab(teacher, tokenizer)
            tokenizer = tokenizer or Path(teacher)
        steps = args.steps or 1000
        warmup = args.warmup if args.warmup is not None else max(1, steps // 20)
        train = dict(
            steps=steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            lr=args.lr,
            warmup_steps=warmup,
            weight_decay=args.weight_decay,
            clip=args.clip,
            seed=args.seed,
            save_dtype=args.save_dtype,
            moe_capacity_factor=args.capacity_factor,
            **{k: v for k, v in _overrides(args).items() if v is not None},
        )
        if args.distill:
            train.update(distill_alpha=args.alpha, distill_temperature=args.temperature)
        if world_size > 1:  # batch_size and grad_accum are per process, for this many
            train["world_size"] = world_size
        spec = RunSpec(
            model=_model_fields(args),
            train=train,
            vocab_size=args.vocab_size,
            teacher=teacher,
            data=dict(
                seq_len=args.seq_len,
                fim_rate=args.fim_rate,
                spm_rate=args.spm_rate,
                repo_rate=args.repo_rate,
                seed=args.seed,
            ),
            corpus={**_corpus_settings(args), "pairs": not args.no_pairs},
            name=args.out.name,
        )
        _validate(spec)
        prepare_run(args.out, spec, _sources(args), tokenizer_dir=tokenizer, log=_log)


def _validate(spec) -> None:
    """Catch bad settings before the corpus is read (that can take a minute)."""
    from demi.model.config import ModelConfig
    from demi.train.data import DataOptions
    from demi.train.trainer import TrainConfig

    TrainConfig.from_dict(spec.train)
    DataOptions(**spec.data)
    try:
        ModelConfig(**spec.model, vocab_size=spec.vocab_size)
    except TypeError as exc:
        raise UsageError(f"demi train: bad model shape: {exc}") from None


def _check_model_dir(path: str) -> None:
    from demi.model.config import load_config

    load_config(path)  # a ConfigError (exit 2) when it is not a model directory


def _check_teacher_vocab(teacher: str, tokenizer_dir: Path) -> None:
    from demi.model.config import load_config
    from demi.model.tokenizer import Tokenizer
    from demi.train.pipeline import check_teacher

    tok = Tokenizer.from_dir(tokenizer_dir)
    check_teacher(teacher, tok, load_config(teacher).replace(vocab_size=tok.vocab_size))


def cmd_tiny(args: argparse.Namespace) -> int:
    from demi.train.tiny import build_tiny, ship

    with _process_group(args) as (env, device):
        summary = build_tiny(
            args.out,
            until=args.until,
            steps=args.steps,
            progress=not args.no_progress,
            log=_log,
            overrides=_overrides(args),
            device=device,
            dist=env,
        )
    if not env.is_main:
        return _exit_rank(env, 130 if summary.get("interrupted") else 0)
    if args.ship and summary.get("finished"):
        card = Path(__file__).resolve().parent.parent / "MODEL_CARD.md"
        summary["shipped"] = ship(args.out, args.ship, card)
        _log(f"shipped {summary['shipped']['bytes'] / 1e6:.1f} MB to {args.ship}")
    _print_summary(args, summary)
    return _exit_rank(env, 130 if summary.get("interrupted") else 0)


def cmd_gpu(args: argparse.Namespace) -> int:
    from demi.train.gpu_recipe import build_gpu

    if args.time_budget <= 0:
        raise UsageError("demi train gpu: --time-budget must be > 0 seconds")
    if args.prepare_only:  # the corpus and the tokenizer are CPU work: a machine without a GPU prepares
        args.device = "cpu"
    with _process_group(args) as (env, device):
        summary = build_gpu(
            args.out,
            registry=args.registry,
            scale=args.scale,
            time_budget_s=args.time_budget,
            stdlib=not args.no_stdlib,
            max_corpus_bytes=_corpus_bytes(args),
            prepare_only=args.prepare_only,
            progress=not args.no_progress,
            log=_log,
            overrides=_overrides(args),
            device=device,
            dist=env,
        )
    if not env.is_main:
        return _exit_rank(env, 130 if summary.get("interrupted") else 0)
    if summary.get("prepared"):
        emit_json(summary) if args.json else print(f"run prepared in {args.out}; train it with --device cuda")
        return _exit_rank(env, 0)
    _print_summary(args, summary)
    return _exit_rank(env, 130 if summary.get("interrupted") else 0)


def cmd_curve(args: argparse.Namespace) -> int:
    from demi.train.curve import read_curve, render_markdown, update_card, write_curve

    curve = read_curve(args.run)
    path = write_curve(args.run, curve)
    changed = update_card(args.card, curve) if args.card else False
    if args.json:
        emit_json({**curve, "curve_json": str(path), "card_updated": changed})
        return 0
    print(render_markdown(curve), end="")
    print(f"\n{path} written" + (f"; {args.card} updated" if changed else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from demi.train.pipeline import export_checkpoint

    out = export_checkpoint(args.run, args.to, args.checkpoint, args.save_dtype)
    emit_json({"model_dir": str(out)}) if args.json else print(f"model written to {out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from demi.model.config import ModelConfig
    from demi.train.bench import measure

    fields = _shape_fields(args.shape)
    fields["max_position_embeddings"] = max(fields["max_position_embeddings"], args.seq_len)
    r = measure(
        ModelConfig(**fields, vocab_size=8192),
        args.seq_len,
        args.batch_size,
        args.steps,
        args.warmup,
        compile=args.compile,
        precision=args.precision,
        grad_checkpointing=args.grad_checkpointing,
        threads=args.threads,
    ).as_dict()
    if args.json:
        emit_json(r)
    else:
        print(
            f"{r['params'] / 1e6:.2f}M params, seq {r['seq_len']} x batch {r['batch_size']}, "
            f"{'compiled' if r['compiled'] else 'eager'}, {r['precision']}, "
            f"{'fused' if r['fused_adamw'] else 'plain'} AdamW, {r['threads']} threads: "
            f"{r['tok_s']:,.0f} tok/s ({r['step_s']:.3f} s/step; warm-up {r['warmup_s']:.1f} s; "
            f"other processes used {100 * r['others_cpu']:.0f}% of the CPU meanwhile)"
        )
    return 0


def _engine(args: argparse.Namespace):
    """The evaluated engine: full precision unless --quant (see commands_engine.eval_engine)."""
    from demi.cli.commands_engine import eval_engine

    return eval_engine(args)


def _fim_files(args: argparse.Namespace) -> list[tuple[str, str]]:
    from demi.assistant.files import read_text_file

    files: list[tuple[str, str]] = []
    if args.run:
        import gzip

        path = args.run / "corpus" / "heldout.jsonl.gz"
        if not path.is_file():
            raise UsageError(f"demi eval fim: {args.run} is not a training run with held-out files")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            files += [(d["path"], d["text"]) for d in map(json.loads, f)]
    for name in args.files:
        p = Path(name)
        if p.is_dir():
            for source in sorted(p.rglob("*.py")):
                if "__pycache__" not in source.parts:
                    files.append((source.relative_to(p).as_posix(), read_text_file(source)))
        else:
            files.append((p.name, read_text_file(p)))
    if not files:
        raise UsageError("demi eval fim: give files or directories, or --run RUN for its held-out files")
    return files


def cmd_eval_fim(args: argparse.Namespace) -> int:
    from demi.assistant.context import FimContext
    from demi.train.evaluate import evaluate_fim, line_samples

    if args.samples < 1 or args.max_tokens < 1:
        raise UsageError("demi eval fim: --samples and --max-tokens must be >= 1")
    files = _fim_files(args)  # bad files fail before the model loads
    samples = line_samples(files, args.samples, seed=args.seed)
    if not samples:
        raise UsageError("demi eval fim: no code lines to complete in those files")
    engine = _engine(args)
    if getattr(engine, "fim_template", None) is None:
        from demi.model.errors import DemiUserError

        raise DemiUserError(f"{engine.name} has no FIM tokens; `demi eval fim` needs a FIM model")

    def infill(prefix: str, suffix: str, path: str) -> str:
        return engine.infill(FimContext(prefix, suffix, path), stop=["\n"], max_new_tokens=args.max_tokens).text

    res = evaluate_fim(infill, samples)
    from demi.cli.commands_engine import precision, precision_line

    res.update(model=engine.name, fim=engine.fim_template.family, files=len(files), **precision(engine))
    if args.json:
        emit_json(res)
    else:
        print(
            f"{res['samples']} lines from {len(files)} files: exact match {res['exact_match']:.3f}, "
            f"edit similarity {res['edit_similarity']:.3f}  ({res['seconds']:.1f} s; {precision_line(res)})"
        )
        for kind, r in res["by_kind"].items():
            if r["samples"]:
                print(
                    f"  {kind:10s} {r['samples']:4d}  exact {r['exact_match']:.3f}  edit sim {r['edit_similarity']:.3f}"
                )
    return 0


def cmd_eval_passk(args: argparse.Namespace) -> int:
    from demi.assistant.engines import Sampling
    from demi.train.passk import STOP_STRINGS, evaluate, load_problems, truncate_completion

    try:
        ks = sorted({int(k) for k in str(args.k).split(",") if k.strip()})
    except ValueError:
        raise UsageError("demi eval passk: --k takes comma-separated integers, e.g. 1,10") from None
    if not ks or min(ks) < 1 or max(ks) > args.samples:
        raise UsageError("demi eval passk: every k must be between 1 and --samples")
    if args.timeout <= 0 or args.max_tokens < 1:
        raise UsageError("demi eval passk: --timeout must be > 0 and --max-tokens >= 1")
    problems = load_problems(args.problems)[: args.limit]
    engine = _engine(args)
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 0.8)
    completions: dict[str, list[str]] = {}
    for pi, p in enumerate(problems):
        outs = []
        for i in range(args.samples):
            sampling = Sampling(
                temperature=temperature, top_p=0.95 if temperature else 1.0, seed=args.seed + 1000 * pi + i
            )
            r = engine.complete(p["prompt"], max_new_tokens=args.max_tokens, sampling=sampling, stop=list(STOP_STRINGS))
            outs.append(truncate_completion(r.text))
        completions[p["task_id"]] = outs
    res = evaluate(problems, completions, ks=ks, timeout=args.timeout)
    from demi.cli.commands_engine import precision, precision_line

    res.update(model=engine.name, temperature=temperature, **precision(engine))
    if args.json:
        emit_json(res)
    else:
        scores = "  ".join(f"{k} {res[k]:.3f}" for k in res if k.startswith("pass@"))
        print(
            f"{res['problems']} problems x {args.samples} samples: {scores}  "
            f"(sandbox: {res['isolation']}; {precision_line(res)})"
        )
    return 0
