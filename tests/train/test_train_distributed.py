"""Training on several processes, as torchrun starts it (2 processes, gloo on the CPU): DDP and
FSDP2 give the loss curve of one process with the same global batch, step by step (losses,
gradient norms, the held-out loss, the exported weights); sharded checkpoints resume at another
world size (2 -> 1, 1 -> 2, 2 -> 2, across DDP and FSDP2) and continue the uninterrupted run; the
export of a distributed run is an ordinary model directory Demi loads. The processes run
tests/train/dist_worker.py; the one-process side runs here, from the same recipe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_worker import build, build_data, record
from test_train_support import make_tokenizer

from demi.train import checkpoints
from demi.train.errors import ResumeError, TrainConfigError
from demi.train.pipeline import per_process_batch

WORKER = Path(__file__).with_name("dist_worker.py")
WORLD, PER_RANK = 2, 2  # global batch: 2 rows x 2 processes = the one process's 4
LOSS = dict(rtol=1e-5, atol=1e-6)  # float sums in another order, nothing more


def torchrun(tmp: Path, tok_dir: Path, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `jobs` in one torchrun launch of WORLD processes; each job's record from rank 0."""
    for i, job in enumerate(jobs):
        job["out"] = str(tmp / f"job{i}.json")
    spec = tmp / "jobs.json"
    spec.write_text(json.dumps({"tok_dir": str(tok_dir), "jobs": jobs}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    proc = subprocess.run([*cmd, str(WORKER), str(spec)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-8000:]
    return [json.loads(Path(job["out"]).read_text()) for job in jobs]


def curve(seen: dict) -> dict[int, list[float]]:
    return {int(k): v for k, v in seen.items()}


def assert_same_curve(got: dict, want: dict, steps: list[int]) -> None:
    got, want = curve(got), curve(want)
    assert sorted(got) == steps
    for step in steps:
        torch.testing.assert_close(got[step][0], want[step][0], **LOSS, msg=f"loss at step {step}")
        torch.testing.assert_close(got[step][1], want[step][1], rtol=1e-4, atol=1e-6, msg=f"grad norm at {step}")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    from demi.model.tokenizer import Tokenizer

    return Tokenizer.from_dir(tok_dir)


@pytest.fixture(scope="module")
def data(tok):
    return build_data(tok)


@pytest.fixture(scope="module")
def one(tmp_path_factory, tok, data) -> dict[str, Any]:
    """The reference: one process, batch 4, four steps, checkpoints at 2 and 4, exported."""
    run = tmp_path_factory.mktemp("one")
    trainer = build(run, tok, data, batch_size=PER_RANK * WORLD)
    seen = record(trainer)
    summary = trainer.train()
    trainer.export(run / "model")
    return {"run": run, "losses": seen, "summary": summary}


@pytest.fixture(scope="module")
def many(tmp_path_factory, tok_dir) -> dict[str, Any]:
    """Two processes: a DDP run and an FSDP2 run of the same four steps (one launch)."""
    root = tmp_path_factory.mktemp("many")
    jobs = [
        {"parallel": "ddp", "run_dir": str(root / "ddp"), "settings": {"batch_size": PER_RANK}},
        {"parallel": "fsdp", "run_dir": str(root / "fsdp"), "settings": {"batch_size": PER_RANK}, "export": True},
    ]
    ddp, fsdp = torchrun(root, tok_dir, jobs)
    return {"root": root, "ddp": ddp, "fsdp": fsdp}


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_give_the_one_process_loss_curve(many, one, mode):
    run = many[mode]
    assert run["world_size"] == WORLD and run["summary"]["finished"]
    assert_same_curve(run["losses"], one["losses"], [1, 2, 3, 4])
    assert run["summary"]["tokens_seen"] == one["summary"]["tokens_seen"]  # the global batch, counted once
    torch.testing.assert_close(run["summary"]["eval_loss"], one["summary"]["eval_loss"], **LOSS)
    assert one["losses"][4][0] < one["losses"][1][0]  # and it learns
    # rank 0 alone logs: one line per step, not one per process
    log = [json.loads(line) for line in (many["root"] / mode / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_distributed_checkpoints_are_sharded_and_verified(many):
    ck = many["root"] / "fsdp" / "checkpoints" / "step-00000002"
    state = json.loads((ck / "state.json").read_text())
    assert state["layout"] == "sharded" and state["world_size"] == WORLD and state["parallel"] == "fsdp"
    shards = sorted(p.name for p in (ck / "dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one file per rank, plus the index
    assert not (ck / "model.safetensors").exists()
    assert set(state["sha256"]) == {"rng.safetensors", *(f"dcp/{s}" for s in shards)}
    broken = many["root"] / "broken"
    shutil.copytree(ck, broken)
    with open(broken / "dcp" / "__1_0.distcp", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ResumeError, match=r"corrupt checkpoint \(dcp/__1_0.distcp"):
        checkpoints.load_state(broken)


def test_the_export_of_a_sharded_run_is_an_ordinary_model(many, one):
    from demi.model.loading import load_model

    sharded = load_model(many["root"] / "fsdp" / "model", dtype="float32")
    single = load_model(one["run"] / "model", dtype="float32")
    assert sorted(sharded.state_dict()) == sorted(single.state_dict())
    for name, value in single.state_dict().items():
        torch.testing.assert_close(sharded.state_dict()[name], value, rtol=1e-4, atol=1e-6, msg=name)


def copy_checkpoint(src_run: Path, step: int, dst_run: Path) -> Path:
    name = f"step-{step:08d}"
    dst = dst_run / "checkpoints" / name
    shutil.copytree(src_run / "checkpoints" / name, dst)
    (dst_run / "checkpoints" / "latest").write_text(name + "\n")
    return dst


def test_sharded_checkpoint_resumes_in_one_process(many, one, tok, data, tmp_path):
    """Saved by two FSDP2 processes at step 2, resumed by one plain process (batch 4 = 2 x 2)."""
    copy_checkpoint(many["root"] / "fsdp", 2, tmp_path)
    trainer = build(tmp_path, tok, data, batch_size=PER_RANK * WORLD)
    seen = record(trainer)
    assert trainer.resume() and trainer.step == 2
    trainer.train()
    assert_same_curve(seen, one["losses"], [3, 4])
    # the same batch made as 2 rows x 2 micro-batches resumes too; another global batch does not
    again = build(tmp_path / "accum", tok, data, batch_size=PER_RANK, grad_accum=WORLD)
    assert again.resume(tmp_path / "checkpoints" / "step-00000002")
    other = build(tmp_path / "other", tok, data, batch_size=PER_RANK)
    with pytest.raises(ResumeError, match=r"global batch .*saved 2 x 1 x 2 = 4, now 2 x 1 x 1 = 2"):
        other.resume(tmp_path / "checkpoints" / "step-00000002")


def test_checkpoints_resume_on_two_processes(many, one, tmp_path, tok_dir):
    """Two processes resume at step 2 from: FSDP2's sharded checkpoint (FSDP2, and DDP), and the
    one-process checkpoint (FSDP2, and DDP); all four continue the uninterrupted run."""
    sources = {
        "fsdp-from-fsdp": (many["root"] / "fsdp", "fsdp"),
        "ddp-from-fsdp": (many["root"] / "fsdp", "ddp"),
        "fsdp-from-one": (one["run"], "fsdp"),
        "ddp-from-one": (one["run"], "ddp"),
    }
    jobs = []
    for name, (src, mode) in sources.items():
        copy_checkpoint(src, 2, tmp_path / name)
        jobs.append(
            {"parallel": mode, "run_dir": str(tmp_path / name), "settings": {"batch_size": PER_RANK}, "resume": True}
        )
    for name, result in zip(sources, torchrun(tmp_path, tok_dir, jobs)):
        assert result["resumed"], name
        assert_same_curve(result["losses"], one["losses"], [3, 4])
        torch.testing.assert_close(result["summary"]["eval_loss"], one["summary"]["eval_loss"], **LOSS)


def test_a_sharded_checkpoint_exports_in_one_process(many, one, tmp_path, tok, tok_dir):
    """`demi train export` of a checkpoint written by two processes: the weights of step 4."""
    from dataclasses import asdict

    from test_train_support import micro_config

    from demi.model.loading import load_model
    from demi.train.pipeline import RunSpec, export_checkpoint

    run = tmp_path / "run"
    copy_checkpoint(many["root"] / "fsdp", 4, run)
    shutil.copytree(tok_dir, run / "tokenizer")
    (run / "run.json").write_text(json.dumps(RunSpec(model=asdict(micro_config(tok.vocab_size))).to_json()))
    out = export_checkpoint(run, tmp_path / "exported")
    exported = load_model(out, dtype="float32").state_dict()
    for name, value in load_model(one["run"] / "model", dtype="float32").state_dict().items():
        torch.testing.assert_close(exported[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_the_global_batch_is_kept_on_another_number_of_processes():
    assert per_process_batch(4, 1, 2, 1) == (4, 2)  # 2 processes x 4 -> one process accumulates 2
    assert per_process_batch(4, 2, 1, 2) == (4, 1)
    assert per_process_batch(4, 1, 1, 2) == (2, 1)
    with pytest.raises(TrainConfigError, match="does not split over 4 processes"):
        per_process_batch(3, 2, 1, 4)


CLI_TRAIN = [
    "--shape",
    "micro",
    "--vocab-size",
    "400",
    "--seq-len",
    "32",
    "--eval-every",
    "2",
    "--ckpt-every",
    "2",
    "--heldout",
    "0.3",
    "--compile",
    "off",
    "--precision",
    "fp32",
    "--threads",
    "1",
    "--no-progress",
]


def test_demi_train_under_torchrun_then_in_one_process(tmp_path, capsys):
    """`torchrun -m demi train run --parallel fsdp` for two of four steps, `demi train run --resume`
    in one process for the rest: the log matches a one-process run of the same global batch,
    only rank 0 printed, and the model at the end is an ordinary one."""
    from test_train_support import make_tree

    from demi.cli.main import main

    src = make_tree(tmp_path / "src", files=12)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DEMI_OFFLINE": "1"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), "-m", "demi"]
    args = ["train", "run", "--corpus", src, "--out", run, "--batch-size", PER_RANK, "--steps", 4, "--until", 2]
    proc = subprocess.run(
        [*cmd, *map(str, args + CLI_TRAIN), "--parallel", "fsdp", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}"
    assert [json.loads(line)["step"] for line in proc.stdout.splitlines() if line.startswith("{")] == [2]  # rank 0
    assert proc.stderr.count("demi: corpus:") == 1 and "FSDP over 2 processes" in proc.stderr
    assert json.loads((run / "run.json").read_text())["train"]["world_size"] == WORLD

    capsys.readouterr()
    assert main(["train", "run", "--out", str(run), "--resume", "--threads", "1", "--no-progress", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["finished"] and "batch 2 x 2 micro-batches each keeps the run's global batch of 4" in err
    straight = tmp_path / "straight"
    args = ["train", "run", "--corpus", src, "--out", straight, "--batch-size", PER_RANK * WORLD, "--steps", 4]
    assert main([*map(str, args + CLI_TRAIN)]) == 0

    def log(r: Path) -> list[tuple[int, float, float]]:
        lines = (r / "log.jsonl").read_text().splitlines()
        return [(x["step"], x["loss"], x.get("eval_loss", 0.0)) for x in map(json.loads, lines)]

    assert [s for s, *_ in log(run)] == [s for s, *_ in log(straight)] == [2, 4]  # (eval steps)
    for (step, loss, ev), (_, want, want_ev) in zip(log(run), log(straight)):
        assert loss == pytest.approx(want, abs=2e-5) and ev == pytest.approx(want_ev, abs=2e-5), step
    capsys.readouterr()
    assert main(["generate", "--model", str(run / "model"), "--prompt", "def ", "--max-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completion_tokens"] == 4


def test_parallel_needs_torchrun(tmp_path, capsys):
    from demi.cli.main import main

    capsys.readouterr()
    code = main(["train", "run", "--corpus", str(tmp_path), "--out", str(tmp_path / "r"), "--parallel", "fsdp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--parallel fsdp runs under torchrun" in err[0]


def test_a_preset_is_a_training_shape():
    """`--shape demiurgic-1b` (the README's multi-GPU command) trains the preset's shape."""
    from demi.cli.commands_train import _model_fields
    from demi.cli.main import build_parser
    from demi.model.config import ModelConfig
    from demi.model.info import count_parameters
    from demi.model.presets import get_preset

    args = build_parser().parse_args(["train", "run", "--out", "r", "--shape", "demiurgic-1b", "--seq-len", "4096"])
    preset = get_preset("demiurgic-1b")
    shape = ModelConfig(**_model_fields(args), vocab_size=preset.vocab_size)
    assert count_parameters(shape) == count_parameters(preset)
    assert (shape.model_type, shape.tie_word_embeddings, shape.num_experts) == ("llama", False, 0)


def test_the_fsdp_activation_estimate_matches_what_autograd_keeps():
    """`demi models info`'s per-GPU training memory counts a decoder block's activations by a
    formula (model/info.py); here the tensors autograd saves for a bf16 block are measured."""
    from demi.model.config import ModelConfig
    from demi.model.info import FSDP_GPUS, count_parameters, fsdp_training_bytes, model_info
    from demi.train.trainer import init_model

    cfg = ModelConfig(
        model_type="llama",
        vocab_size=512,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = init_model(cfg).to(torch.bfloat16)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    tokens = 64
    x = torch.randn(1, tokens, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    cos, sin = model.rotary_table(x.device).lookup(0, tokens, x.device)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model.model.layers[0](x, cos.to(x.dtype), sin.to(x.dtype), 0, None, None)
    measured = sum(saved.values()) / tokens

    one, two = fsdp_training_bytes(cfg, 1, 1), fsdp_training_bytes(cfg, 1, 2)
    vocab_part = 10 * cfg.vocab_size
    per_block = (one.activations_full - vocab_part) / cfg.num_hidden_layers
    assert per_block == pytest.approx(measured, rel=0.1)
    assert two.activations_full == 2 * one.activations_full  # linear in tokens
    assert one.activations < one.activations_full  # checkpointing keeps less
    eight = fsdp_training_bytes(cfg, 8, 1)
    assert eight.sharded == -(-16 * count_parameters(cfg).total // 8) and eight.gathered == one.gathered
    info = model_info(cfg).as_dict()["fsdp_training_per_gpu"]
    assert [m["gpus"] for m in info] == list(FSDP_GPUS)
