"""The trainer: learning-rate schedule, exact resume (straight run == half + resume + half, also
after a crash), corrupt checkpoints, gradient accumulation and checkpointing equivalence, MoE
router losses and capacity, distillation, and the saved model loading in transformers."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from test_train_support import make_tokenizer, micro_config, module_text, moe_config

from demi.model.decoder import MoE
from demi.train import checkpoints
from demi.train.corpus import Document
from demi.train.data import DataOptions, PackedData
from demi.train.errors import ResumeError, VocabularyMismatchError
from demi.train.moe import TrainingMoE, router_losses
from demi.train.pairs import extract_pairs
from demi.train.pipeline import check_teacher
from demi.train.trainer import TrainConfig, Trainer, distill_loss, init_model, lr_at


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
    docs = [Document("src", f"pkg/m{i}.py", module_text(i)) for i in range(12)]
    held = [Document("src", "pkg/held.py", module_text(40))]
    return PackedData(docs, tok, DataOptions(seq_len=32, seed=0), extract_pairs(docs), held)


def trainer(run_dir, data, tok, cfg=None, model_cfg=None, teacher=None, **changes):
    settings = dict(
        steps=8,
        batch_size=4,
        warmup_steps=2,
        lr=3e-3,
        compile="off",
        precision="fp32",
        eval_every=4,
        eval_rows=8,
        ckpt_every=4,
        log_every=1,
    )
    settings.update(changes)
    model = init_model(model_cfg or micro_config(tok.vocab_size), seed=0)
    return Trainer(model, data, cfg or TrainConfig(**settings), run_dir, teacher=teacher, progress=False)


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def losses(run_dir) -> dict[int, float]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)


def test_resume_is_exact(tmp_path, data, tok):
    straight = trainer(tmp_path / "a", data, tok)
    summary = straight.train()
    assert summary["finished"] and summary["step"] == 8 and summary["eval_loss"] is not None
    first = trainer(tmp_path / "b", data, tok)
    first.train(until=4)
    assert checkpoints.latest_checkpoint(tmp_path / "b").name == "step-00000004"
    resumed = trainer(tmp_path / "b", data, tok)
    assert resumed.resume() and resumed.step == 4 and resumed.position == first.position
    resumed.train()
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[k]), k
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a")[8] < losses(tmp_path / "a")[1]  # it learns


def test_crash_loses_only_the_steps_since_the_last_checkpoint(tmp_path, data, tok):
    def crash(step, _):
        if step == 6:
            raise KeyboardInterrupt

    t = trainer(tmp_path / "run", data, tok)
    t.on_step = crash
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert checkpoints.latest_checkpoint(tmp_path / "run").name == "step-00000004"
    again = trainer(tmp_path / "run", data, tok)
    again.resume()
    again.train()
    straight = trainer(tmp_path / "straight", data, tok)
    straight.train()
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(straight).items())


def test_a_signal_stops_after_the_step_with_a_checkpoint(tmp_path, data, tok):
    import os
    import signal

    t = trainer(tmp_path / "run", data, tok, ckpt_every=100)
    t.on_step = lambda step, _: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None
    summary = t.train(handle_signals=True)
    assert summary["interrupted"] == "SIGTERM" and summary["step"] == 3 and not summary["finished"]
    assert checkpoints.latest_checkpoint(tmp_path / "run").name == "step-00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_corrupt_checkpoints_are_clear_errors(tmp_path, data, tok):
    t = trainer(tmp_path / "run", data, tok, steps=4)
    t.train()
    ck = checkpoints.latest_checkpoint(tmp_path / "run")
    good = tmp_path / "good"
    shutil.copytree(ck, good)

    def fresh():
        return trainer(tmp_path / "run", data, tok, steps=4)

    with open(ck / "model.safetensors", "r+b") as f:  # truncated, as by a full disk
        f.truncate(100)
    with pytest.raises(ResumeError, match="corrupt checkpoint.*model.safetensors"):
        fresh().resume()
    shutil.rmtree(ck)
    shutil.copytree(good, ck)
    (ck / "state.json").write_text("{not json")
    with pytest.raises(ResumeError, match="state.json"):
        fresh().resume()
    (ck / "state.json").unlink()
    with pytest.raises(ResumeError, match="state.json is missing"):
        fresh().resume()
    shutil.rmtree(ck)
    with pytest.raises(ResumeError, match="not a checkpoint directory"):
        fresh().resume()  # `latest` points at a directory that is gone
    other = trainer(tmp_path / "other", data, tok, steps=4, batch_size=2)
    with pytest.raises(ResumeError, match="batch_size"):
        other.resume(good)
    wider = micro_config(tok.vocab_size, intermediate_size=128)
    with pytest.raises(ResumeError, match="model shape"):
        trainer(tmp_path / "wider", data, tok, model_cfg=wider).resume(good)
    # how positions are encoded is not the weights' shape: training may go on under a RoPE scaling
    yarn = micro_config(
        tok.vocab_size, rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    )
    assert trainer(tmp_path / "yarn", data, tok, model_cfg=yarn).resume(good)
    assert not trainer(tmp_path / "empty", data, tok).resume()


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data, tok):
    big = trainer(tmp_path / "a", data, tok, batch_size=8, grad_accum=1)
    acc = trainer(tmp_path / "b", data, tok, batch_size=4, grad_accum=2)
    r1, r2 = big.train_step(), acc.train_step()
    assert r1.loss == pytest.approx(r2.loss, rel=1e-5)
    assert r1.grad_norm == pytest.approx(r2.grad_norm, rel=1e-4)
    for k, v in weights(big).items():
        torch.testing.assert_close(v, weights(acc)[k], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_step(tmp_path, data, tok):
    plain = trainer(tmp_path / "a", data, tok)
    ckpt = trainer(tmp_path / "b", data, tok, grad_checkpointing=True)
    for _ in range(2):
        r1, r2 = plain.train_step(), ckpt.train_step()
        assert r1.loss == pytest.approx(r2.loss, rel=1e-6)
    for k, v in weights(plain).items():
        torch.testing.assert_close(v, weights(ckpt)[k], rtol=1e-5, atol=1e-6)


def test_router_losses_golden():
    e = 4
    uniform = router_losses(torch.zeros(4, e), torch.tensor([[0], [1], [2], [3]]))
    assert uniform["balance"].item() == pytest.approx(1.0)
    assert uniform["z"].item() == pytest.approx(math.log(4) ** 2)
    collapsed = router_losses(torch.tensor([[20.0, 0, 0, 0]] * 4), torch.zeros(4, 1, dtype=torch.long))
    assert collapsed["balance"].item() == pytest.approx(4.0, rel=1e-3)


def test_moe_trains_with_aux_losses_and_capacity(tmp_path, data, tok):
    t = trainer(
        tmp_path / "moe", data, tok, model_cfg=moe_config(tok.vocab_size), steps=12, lr=5e-3, moe_capacity_factor=1.0
    )
    assert all(isinstance(m, TrainingMoE) for m in t.model.modules() if isinstance(m, MoE))
    t.train()
    log = [json.loads(line) for line in (tmp_path / "moe" / "log.jsonl").read_text().splitlines()]
    assert {"moe_balance", "moe_z", "moe_dropped"} <= set(log[0])
    assert log[-1]["ce"] < log[0]["ce"]
    assert all(r["moe_balance"] >= 0.99 for r in log)  # E * sum f P is at least 1 for top-k routing
    assert log[-1]["loss"] > log[-1]["ce"]  # the aux losses are part of what is minimized
    # capacity: with a factor well below 1 some assignments must be dropped
    moe = next(m for m in t.model.modules() if isinstance(m, TrainingMoE))
    moe.capacity_factor = 0.25
    x = torch.randn(1, 64, 32)
    moe.train()
    moe(x)
    assert moe.last_losses["dropped"].item() > 0.5
    moe.eval()  # inference never drops: the engine's own forward
    out, _ = moe(x)
    ref, _ = MoE.forward(moe, x)
    assert torch.equal(out, ref)


def test_distill_loss():
    s = torch.randn(2, 3, 11)
    assert distill_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    t = torch.randn(2, 3, 11)
    p = torch.softmax(t / 2, -1)
    manual = (p * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert distill_loss(s, t, 2.0).item() == pytest.approx(manual.item(), rel=1e-5)


def test_distillation_trains_and_checks_the_vocabulary(tmp_path, data, tok, tok_dir):
    teacher = init_model(micro_config(tok.vocab_size, hidden_size=48), seed=5)
    t = trainer(tmp_path / "d", data, tok, teacher=teacher, steps=6, distill_alpha=0.7)
    t.train()
    log = [json.loads(line) for line in (tmp_path / "d" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] != r["ce"] for r in log) and log[-1]["loss"] < log[0]["loss"]
    # A teacher saved with the same tokenizer passes the check; another vocabulary is a clear error.
    from demi.model.loading import save_model

    same = tmp_path / "teacher_same"
    save_model(teacher.eval(), same)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, same / f)
    check_teacher(same, tok, micro_config(tok.vocab_size))
    other = tmp_path / "teacher_other"
    other_tok = make_tokenizer(other, vocab_size=300)
    save_model(init_model(micro_config(other_tok.vocab_size)).eval(), other)
    with pytest.raises(VocabularyMismatchError, match="different vocabulary"):
        check_teacher(other, tok, micro_config(tok.vocab_size))


@pytest.mark.parametrize("moe", [False, True])
def test_saved_model_loads_in_transformers_with_equal_logits(tmp_path, data, tok, tok_dir, moe):
    transformers = pytest.importorskip("transformers")
    cfg = moe_config(tok.vocab_size) if moe else micro_config(tok.vocab_size)
    t = trainer(tmp_path / "run", data, tok, model_cfg=cfg, steps=3)
    t.train()
    out = t.export(tmp_path / "model", tok_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode("def add(a, b):\n    return a + b\n")])
    t.model.eval()
    with torch.no_grad():
        ours = t.model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok("x = '<|fim_prefix|>'")["input_ids"] == tok.encode("x = '<|fim_prefix|>'")


def test_bf16_export_halves_the_file(tmp_path, data, tok, tok_dir):
    from demi.model.loading import load_model

    t = trainer(tmp_path / "run", data, tok, steps=1, save_dtype="bfloat16")
    t.train()
    out = t.export(tmp_path / "bf16", tok_dir)
    t.cfg.save_dtype = "float32"
    full = t.export(tmp_path / "fp32", tok_dir)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ratio = (out / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    loaded = load_model(out)  # fp32 on CPU, weights from bf16
    ids = torch.tensor([tok.encode("import math\n")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), t.model.eval()(ids), rtol=0.05, atol=0.05)
