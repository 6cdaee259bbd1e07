"""A training run on disk, from sources to a saved model, resumable across sessions.

    RUN/run.json                  every setting of the run (model shape, trainer, data and its later
                                  phases, corpus)
    RUN/corpus/train.jsonl.gz     the corpus snapshot the run trains on (so a resume sees the same
    RUN/corpus/heldout.jsonl.gz   files even if the machine's packages changed in between)
    RUN/manifest.json             what went in: package, version, license, files, tokens
    RUN/tokenizer/                tokenizer.json + tokenizer_config.json
    RUN/checkpoints/              training checkpoints (see checkpoints.py)
    RUN/log.jsonl                 loss, learning rate, tokens/s, eval loss
    RUN/model/                    the trained model in Hugging Face layout (at the end)

`prepare_run` does the first four once; `train_run` trains (resuming from the latest checkpoint
when there is one) and exports `RUN/model` when the last step is done.

Under torchrun, rank 0 alone prepares the run (the others wait, see `distributed.on_main`) and
every rank trains. `train.batch_size` and `train.grad_accum` in run.json are per process for the
`train.world_size` processes the run was made with; the global batch they make is the run's, so
a session on another number of processes changes the per-process batch or the accumulation to
keep it (`per_process_batch`) and the steps compute what they would have.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import shutil
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demi.model.config import ModelConfig
from demi.model.errors import DemiUserError
from demi.model.tokenizer import Tokenizer
from demi.train import checkpoints
from demi.train.corpus import Document, Source, build_corpus, set_token_counts, write_manifest
from demi.train.data import DataOptions, PackedData, SegmentEncoder
from demi.train.distributed import SINGLE, DistEnv
from demi.train.errors import CorpusError, ResumeError, TrainConfigError, VocabularyMismatchError
from demi.train.pairs import extract_pairs
from demi.train.speed_plan import SpeedPlan, plan_speed
from demi.train.trainer import TrainConfig, Trainer, init_model, write_json

RUN_FORMAT = "demi-train-run/1"


@dataclass
class CorpusOptions:
    permissive_only: bool = False
    on_bad: str = "error"  # error | skip
    near_threshold: float | None = 0.85
    heldout_fraction: float = 0.02
    pairs: bool = True  # docstring <-> code chat samples
    max_bytes: int = 512 * 1024
    max_source_bytes: dict[str, int] | int | None = None  # cap per source ("*": every other source)
    max_total_bytes: int | None = None  # the whole corpus: a sample of every source's files fitted to it
    heldout_by: str = "file"  # file | package (corpus.split_unit)
    tokenizer_bytes: int | None = None  # train the tokenizer on this much of the training text (all: None)


@dataclass
class RunSpec:
    """Everything a run is made of; stored as run.json."""

    model: dict[str, Any]  # ModelConfig fields (vocab_size is set from the tokenizer)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 8192
    teacher: str | None = None
    name: str = "run"
    # Later data mixes: [{"from_step": N, "data": {...}}] changes `data` for the steps after N
    # (each phase on top of the ones before), from the first row of the new mix.
    phases: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {
            "format": RUN_FORMAT,
            "name": self.name,
            "model": self.model,
            "train": self.train,
            "data": self.data,
            "corpus": self.corpus,
            "vocab_size": self.vocab_size,
            "teacher": self.teacher,
        }
        if self.phases:
            out["phases"] = self.phases
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunSpec:
        return cls(
            d["model"],
            d.get("train", {}),
            d.get("data", {}),
            d.get("corpus", {}),
            int(d.get("vocab_size", 8192)),
            d.get("teacher"),
            d.get("name", "run"),
            d.get("phases") or [],
        )

    def boundaries(self) -> list[int]:
        """The steps after which each later phase begins, checked to be increasing."""
        out: list[int] = []
        for p in self.phases:
            if (
                not isinstance(p, dict)
                or not isinstance(p.get("from_step"), int)
                or not isinstance(p.get("data"), dict)
            ):
                raise TrainConfigError(f"bad phase in run.json: {p!r} (want {{'from_step': N, 'data': {{...}}}})")
            if p["from_step"] <= (out[-1] if out else 0):
                raise TrainConfigError("phases in run.json must start at increasing steps above 0")
            if "seq_len" in p["data"]:
                raise TrainConfigError("a data phase cannot change seq_len")
            out.append(p["from_step"])
        return out

    def phase_at(self, step: int) -> int:
        """The phase the step after `step` trains in (0: the base data)."""
        return sum(1 for b in self.boundaries() if b <= step)

    def data_options(self, phase: int) -> DataOptions:
        fields = dict(self.data)
        for p in self.phases[:phase]:
            fields.update(p["data"])
        try:
            return DataOptions(**fields)
        except TypeError as exc:
            raise TrainConfigError(f"bad data settings in run.json: {exc}") from None


class _Snapshot:
    """The corpus snapshot's two files, written as `build_corpus` keeps each document (gzip, one
    JSON object a line), so the corpus is never in memory whole; they take their names only
    when `finish` is called, so an interrupted build leaves no snapshot that looks whole. A
    thread compresses (zlib lets go of the interpreter while it works) beside the reading and
    hashing; a bounded queue keeps it at most a few hundred files behind."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = {False: folder / "train.jsonl.gz", True: folder / "heldout.jsonl.gz"}
        self.files = {
            k: gzip.open(p.with_suffix(".tmp"), "wt", encoding="utf-8", compresslevel=6) for k, p in self.paths.items()
        }
        self.train_chars = 0
        self._queue: queue.Queue[tuple[bool, str] | None] = queue.Queue(maxsize=256)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write, name="corpus-snapshot", daemon=True)
        self._writer.start()

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.files[item[0]].write(item[1])
                except BaseException as exc:  # noqa: BLE001 - raised again in the builder's thread
                    self._error = exc

    def add(self, doc: Document, heldout: bool) -> None:
        if self._error is not None:
            raise CorpusError(f"cannot write the corpus snapshot: {self._error}")
        line = json.dumps({"source": doc.source, "path": doc.path, "text": doc.text}, ensure_ascii=False) + "\n"
        self._queue.put((heldout, line))
        if not heldout:
            self.train_chars += len(doc.text)

    def finish(self, ok: bool) -> None:
        self._queue.put(None)
        self._writer.join()
        for f in self.files.values():
            try:
                f.close()
            except OSError as exc:  # a full disk, say: the snapshot is not whole
                self._error = self._error or exc
        for path in self.paths.values():  # both files take their names, or neither
            if ok and self._error is None:
                os.replace(path.with_suffix(".tmp"), path)
            else:
                path.with_suffix(".tmp").unlink(missing_ok=True)
        if ok and self._error is not None:
            raise CorpusError(f"cannot write the corpus snapshot: {self._error}")


def _iter_docs(path: Path) -> Iterator[Document]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield Document(**json.loads(line))
    except (OSError, EOFError, ValueError, TypeError) as exc:
        raise ResumeError(f"{path}: corrupt corpus snapshot ({exc}); delete the run directory to start over") from None


def _read_docs(path: Path) -> list[Document]:
    return list(_iter_docs(path))


def heldout_documents(run_dir: str | Path) -> list[Document]:
    """The run's held-out files (its corpus snapshot's), for evaluation."""
    path = Path(run_dir) / "corpus" / "heldout.jsonl.gz"
    if not path.is_file():
        raise ResumeError(f"{run_dir}: not a training run with held-out files (no {path.name})")
    return _read_docs(path)


def load_run(run_dir: Path) -> RunSpec:
    path = Path(run_dir) / "run.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResumeError(f"{run_dir}: not a training run (no run.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{path}: corrupt ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != RUN_FORMAT:
        raise ResumeError(f"{path}: not a Demi training run")
    return RunSpec.from_json(raw)


def prepare_run(
    run_dir: str | Path, spec: RunSpec, sources: Sequence[Source], tokenizer_dir: str | Path | None = None, log=print
) -> dict[str, Any]:
    """Build the corpus snapshot, the manifest and the tokenizer, and write run.json; returns the
    manifest. The corpus streams from the sources to the snapshot (`build_corpus` with a sink),
    and the tokenizer's sample and the token counts stream back from it, so memory does not grow
    with the corpus.

    With `tokenizer_dir` the run uses that tokenizer (a teacher's, say) instead of training one.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    copts = CorpusOptions(**spec.corpus)
    seed = int(spec.train.get("seed", 0))
    snapshot = _Snapshot(run / "corpus")
    try:
        corpus = build_corpus(
            sources,
            permissive_only=copts.permissive_only,
            on_bad=copts.on_bad,
            near_threshold=copts.near_threshold,
            heldout_fraction=copts.heldout_fraction,
            seed=seed,
            max_bytes=copts.max_bytes,
            max_source_bytes=copts.max_source_bytes,
            max_total_bytes=copts.max_total_bytes,
            heldout_by=copts.heldout_by,
            sink=snapshot,
            progress=log,
        )
    except BaseException:
        snapshot.finish(ok=False)
        raise
    snapshot.finish(ok=True)
    m = corpus.manifest
    log(
        f"corpus: {m['files']} files ({m['train_files']} train, {m['heldout_files']} held out), "
        f"{m['bytes'] / 1e6:.1f} MB; removed {m['dedup']['exact_removed']} exact and "
        f"{m['dedup']['near_removed']} near duplicates; skipped {m['skipped_count']}"
    )
    train_path, heldout_path = snapshot.paths[False], snapshot.paths[True]
    tok_dir = run / "tokenizer"
    if tokenizer_dir is not None:
        tok_dir.mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            src = Path(tokenizer_dir) / name
            if not src.is_file():
                raise DemiUserError(f"{tokenizer_dir}: no {name}")
            shutil.copyfile(src, tok_dir / name)
        tok = Tokenizer.from_dir(tok_dir)
    else:
        from demi.model.bpe_train import train_bpe_tokenizer

        log(f"tokenizer: training a {spec.vocab_size}-token byte-level BPE")
        tok = train_bpe_tokenizer(
            _tokenizer_texts(_iter_docs(train_path), snapshot.train_chars, copts.tokenizer_bytes),
            tok_dir,
            vocab_size=spec.vocab_size,
            model_max_length=int(spec.model.get("max_position_embeddings", 4096)),
        )
    _count_tokens(m, tok, (train_path, heldout_path), log)
    write_manifest(corpus, run / "manifest.json")
    spec.model["vocab_size"] = tok.vocab_size
    write_json(run / "run.json", spec.to_json())
    return m


EXACT_TOKEN_COUNT_BYTES = 256 * 1024 * 1024  # a larger corpus has its tokens counted on a sample
TOKEN_SAMPLE_EVERY = 10


def _count_tokens(m: dict[str, Any], tok: Tokenizer, paths: Sequence[Path], log) -> None:
    """Each source's tokens in the manifest, and the characters per token. Up to
    EXACT_TOKEN_COUNT_BYTES every file is tokenized; past it (2 GB take minutes to tokenize on
    two cores, for a report) one file in TOKEN_SAMPLE_EVERY is, a source's count is its
    characters times its drawn files' tokens per character (the whole sample's where none of
    its files was drawn), and the manifest says so (`tokens_estimated`)."""
    enc = SegmentEncoder(tok)
    every = 1 if m["bytes"] <= EXACT_TOKEN_COUNT_BYTES else TOKEN_SAMPLE_EVERY
    chars: dict[str, int] = {}
    sample: dict[str, list[int]] = {}  # source -> [characters, tokens] of its drawn files

    def drawn() -> Iterator[Document]:
        for path in paths:
            for i, d in enumerate(_iter_docs(path)):
                chars[d.source] = chars.get(d.source, 0) + len(d.text)
                if i % every == every // 2:
                    yield d

    for batch in _batched(drawn(), 512):
        for d, n in zip(batch, enc.count_tokens([d.text for d in batch])):
            got = sample.setdefault(d.source, [0, 0])
            got[0] += len(d.text)
            got[1] += n
    if every == 1:
        totals = {name: got[1] for name, got in sample.items()}
    else:
        overall = sum(t for _, t in sample.values()) / max(1, sum(c for c, _ in sample.values()))
        totals = {
            name: round(c * (sample[name][1] / sample[name][0] if name in sample else overall))
            for name, c in chars.items()
        }
        m["tokens_estimated"] = {"sample_every": every, "sources_sampled": len(sample), "sources": len(chars)}
    set_token_counts(m, totals)
    per_token = sum(chars.values()) / max(1, m["tokens"])
    m["tokenizer"] = {"vocab_size": tok.vocab_size, "chars_per_token": round(per_token, 3)}
    if every > 1:
        log(f"tokens: about {m['tokens']:,} (one file in {every} tokenized)")


def _batched(items: Iterable[Document], n: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _tokenizer_texts(docs: Iterable[Document], total_chars: int, budget: int | None) -> Iterator[str]:
    """The training texts the tokenizer learns from: all, or every k-th file so that about
    `budget` characters are read (a spread over every source, not the first ones)."""
    every = max(1, round(total_chars / budget)) if budget else 1
    return (d.text for i, d in enumerate(docs) if i % every == 0)


def model_config(spec: RunSpec, tok: Tokenizer) -> ModelConfig:
    fields = dict(spec.model)
    fields.setdefault("vocab_size", tok.vocab_size)
    fields["eos_token_id"] = list(tok.eos_token_ids)
    fields["pad_token_id"] = tok.pad_token_id
    fields["bos_token_id"] = None
    try:
        return ModelConfig(**fields)
    except TypeError as exc:
        raise TrainConfigError(f"bad model settings in run.json: {exc}") from None


def check_teacher(teacher_dir: str | Path, tok: Tokenizer, cfg: ModelConfig) -> None:
    """The teacher must produce logits over the student's vocabulary, token for token."""
    from demi.model.config import load_config

    tcfg = load_config(teacher_dir)
    ttok = Tokenizer.from_dir(teacher_dir)
    if tcfg.vocab_size != cfg.vocab_size or ttok.backend.get_vocab(True) != tok.backend.get_vocab(True):
        raise VocabularyMismatchError(
            f"the teacher {teacher_dir} has a different vocabulary ({tcfg.vocab_size} logits, "
            f"{ttok.vocab_size} tokens) from the student's ({cfg.vocab_size} logits, {tok.vocab_size} tokens); "
            "distillation compares the two distributions token by token, so the student must use the "
            "teacher's tokenizer (leave out --tokenizer)"
        )


def _quiet(*_: Any) -> None:
    pass


def per_process_batch(batch_size: int, grad_accum: int, made_for: int, world: int) -> tuple[int, int]:
    """(batch_size, grad_accum) per process that keep the global batch of `batch_size` x
    `grad_accum` rows on each of `made_for` processes when the run goes on with `world`:
    the batch stays and the accumulation changes when that divides, else the reverse, else
    one micro-batch of global / world rows; a global batch `world` does not divide is an error."""
    rows = batch_size * grad_accum * made_for
    if world == made_for:
        return batch_size, grad_accum
    if rows % (batch_size * world) == 0:
        return batch_size, rows // (batch_size * world)
    if rows % (grad_accum * world) == 0:
        return rows // (grad_accum * world), grad_accum
    if rows % world == 0:
        return rows // world, 1
    raise TrainConfigError(
        f"the run's global batch of {rows} rows does not split over {world} processes; use a world size that divides it"
    )


def train_run(
    run_dir: str | Path,
    steps: int | None = None,
    until: int | None = None,
    progress: bool = True,
    resume_from: str | Path | None = None,
    log=print,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    dist: DistEnv = SINGLE,
) -> dict[str, Any]:
    """Train the run in `run_dir` (resuming from its latest checkpoint), export RUN/model at the end.

    `steps` changes the total (to extend a finished run); `until` stops early at that step (the
    rest of the run can follow in another session); `overrides` changes speed settings that do
    not affect the math (threads, compile, log/eval/checkpoint intervals). Under torchrun every
    rank calls this with its `dist`."""
    run = Path(run_dir)
    if not dist.is_main:
        log = _quiet  # rank 0 speaks for the run
    spec = load_run(run)
    train_fields = dict(spec.train)
    if steps is not None and steps != train_fields.get("steps"):
        train_fields["steps"] = spec.train["steps"] = steps
        if dist.is_main:
            write_json(run / "run.json", spec.to_json())  # later sessions keep the new total
    made_for = int(train_fields.pop("world_size", 1))
    batch = (int(train_fields.get("batch_size", 16)), int(train_fields.get("grad_accum", 1)))
    per_process = per_process_batch(*batch, made_for, dist.world_size)
    if per_process != batch:
        procs = f"{dist.world_size} process{'es' if dist.world_size > 1 else ''}"
        log(
            f"{procs}: batch {per_process[0]} x {per_process[1]} micro-batches each keeps the run's global "
            f"batch of {batch[0] * batch[1] * made_for} rows (made as {batch[0]} x {batch[1]} on {made_for})"
        )
        train_fields["batch_size"], train_fields["grad_accum"] = per_process
    speed_only = {
        "threads",
        "compile",
        "precision",
        "eval_every",
        "ckpt_every",
        "log_every",
        "keep_checkpoints",
        "eval_rows",
        "grad_checkpointing",
        "eval_fim_lines",
        "prefetch",
    }
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in speed_only:
            raise TrainConfigError(f"{k} cannot change in an existing run")
        train_fields[k] = v
    tcfg = TrainConfig.from_dict(train_fields)
    tok = Tokenizer.from_dir(run / "tokenizer")
    cfg = model_config(spec, tok)
    boundaries = spec.boundaries()
    ck = Path(resume_from) if resume_from else checkpoints.latest_checkpoint(run)
    start = checkpoints.saved_step(ck)
    phase = spec.phase_at(start)
    speed = choose_speed(tcfg, cfg, spec.data_options(phase).seq_len, ck, device, dist, log)
    train_docs = _read_docs(run / "corpus" / "train.jsonl.gz")
    heldout = _read_docs(run / "corpus" / "heldout.jsonl.gz")
    if not train_docs:
        raise CorpusError(f"{run}: the corpus snapshot is empty")
    pairs = extract_pairs(train_docs, seed=tcfg.seed) if spec.corpus.get("pairs", True) else []

    def phase_data(k: int) -> PackedData:
        return PackedData(train_docs, tok, spec.data_options(k), pairs, heldout)

    data = phase_data(phase)
    dopts = data.options
    teacher = None
    if spec.teacher:
        from demi.model.loading import load_model

        check_teacher(spec.teacher, tok, cfg)
        teacher = load_model(spec.teacher, dtype="float32", device=device)
    model = init_model(cfg, tcfg.seed)

    def fitted(steps: int) -> None:  # a time budget fixed the run's length: later sessions keep it
        spec.train["steps"] = steps
        if dist.is_main:
            write_json(run / "run.json", spec.to_json())

    trainer = Trainer(
        model, data, tcfg, run, teacher=teacher, progress=progress, device=device, dist=dist, on_budget=fitted
    )
    if ck is not None:
        trainer.resume(ck, new_phase=phase > 0 and start == boundaries[phase - 1])
        log(f"resumed from {ck.name} (step {trainer.step}, {trainer.tokens_seen:,} tokens seen)")
    log(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"{data.rows_per_epoch(trainer.position.epoch):,} rows of {dopts.seq_len} tokens per epoch; "
        f"{'compiled' if trainer.compiled else 'eager'}, {'bf16 autocast' if trainer.amp else 'fp32'}, "
        f"{'fused ' if trainer.fused else ''}AdamW, {__import__('torch').get_num_threads()} threads"
        + (f"; {dist.mode.upper()} over {dist.world_size} processes" if dist.active else "")
    )
    target = min(until or tcfg.steps, tcfg.steps)
    while True:
        if phase:
            log(f"data phase {phase} (steps after {boundaries[phase - 1]}): {spec.phases[phase - 1]['data']}")
        stop_at = min(target, boundaries[phase]) if phase < len(boundaries) else target
        summary = trainer.train(stop_at, handle_signals=True)
        if summary["interrupted"] or trainer.step < stop_at or stop_at >= target:
            break
        phase += 1
        trainer.start_phase(phase_data(phase))
    summary["run"] = str(run)
    if speed is not None:
        summary["speed_plan"] = speed.as_dict()
    if summary["finished"]:
        out = trainer.export(run / "model", run / "tokenizer")
        summary["model_dir"] = str(out)
        if dist.is_main:
            write_json(run / "model" / "training.json", {"run": spec.to_json(), "summary": summary})
    return summary


def choose_speed(
    tcfg: TrainConfig, cfg: ModelConfig, seq_len: int, ck: Path | None, device: str, dist: DistEnv, log
) -> SpeedPlan | None:
    """Settle `auto` precision and compile in `tcfg`: as the checkpoint being resumed trained (so a
    resume computes what the straight run would have), else by the speed plan (measured or cached
    on a CPU, by rule on CUDA). Under torchrun every rank follows the rule, so all agree."""
    if tcfg.precision != "auto" and tcfg.compile != "auto":
        return None
    saved = _saved_train_config(ck) if ck is not None else {}
    if saved.get("precision") in ("fp32", "bf16") and saved.get("compile") in ("on", "off"):
        tcfg.precision = saved["precision"] if tcfg.precision == "auto" else tcfg.precision
        tcfg.compile = saved["compile"] if tcfg.compile == "auto" else tcfg.compile
        log(f"speed: {'compiled' if tcfg.compile == 'on' else 'eager'} {tcfg.precision}, as the run started")
        return None
    if dist.active:
        return None  # the trainer's rule (resolve_speed), the same on every rank
    plan = plan_speed(cfg, seq_len, tcfg.precision, tcfg.compile, tcfg.steps, device, tcfg.threads)
    log(plan.describe())
    tcfg.precision, tcfg.compile = plan.precision, "on" if plan.compile else "off"
    return plan


def _saved_train_config(ck: Path) -> dict[str, Any]:
    try:
        state = json.loads((ck / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # (resume reports a bad checkpoint itself)
    got = state.get("train_config") if isinstance(state, dict) else None
    return got if isinstance(got, dict) else {}


def export_checkpoint(
    run_dir: str | Path, out_dir: str | Path, checkpoint: str | Path | None = None, dtype: str = "float32"
) -> Path:
    """Write the weights of a checkpoint (default: the latest) as a model directory, to evaluate a
    run that is still going (`demi eval fim --model OUT`)."""
    import torch
    from safetensors.torch import load_file

    from demi.model.decoder import Transformer
    from demi.model.loading import save_model

    run = Path(run_dir)
    spec = load_run(run)
    tok = Tokenizer.from_dir(run / "tokenizer")
    cfg = model_config(spec, tok)
    ck = Path(checkpoint) if checkpoint else checkpoints.latest_checkpoint(run)
    if ck is None:
        raise ResumeError(f"{run}: no checkpoint yet")
    saved = checkpoints.load_state(ck)  # verifies the hashes
    model = Transformer(cfg.replace(torch_dtype=dtype))
    if checkpoints.is_sharded(saved):  # written by several processes: read every shard here
        from demi.train.trainer import TrainingForward

        checkpoints.load_sharded_weights(ck, TrainingForward(model))
    else:
        state = load_file(str(ck / "model.safetensors"))
        try:
            model.load_state_dict(state, strict=not cfg.tie_word_embeddings)
        except RuntimeError as exc:
            raise ResumeError(f"{ck}: weights do not fit the run's model ({str(exc).splitlines()[0]})") from None
    model.tie_weights()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    out = Path(out_dir)
    save_model(model.eval(), out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(run / "tokenizer" / name, out / name)
    return out
