"""The training curve and what feeds it: the FIM probe's prompts are demi-tiny's inference prompts,
the trainer logs exact match beside the held-out loss, the time budget fits the run's steps and
ends it, the next epoch built in a thread is the epoch `rows` builds, and `demi train curve`'s
JSON and model-card table."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import make_tokenizer, micro_config, module_text

from demi.assistant.fim import detect_fim
from demi.train import checkpoints
from demi.train.corpus import Document
from demi.train.curve import last_doubling, read_curve, render_markdown, update_card, write_curve
from demi.train.data import DataOptions, PackedData, SegmentEncoder
from demi.train.errors import TrainConfigError
from demi.train.fim_probe import FimProbe
from demi.train.trainer import TrainConfig, Trainer, init_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from demi.model.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return Tokenizer.from_dir(out)


TRAIN_DOCS = [Document("src", f"pkg/m{i}.py", module_text(i)) for i in range(10)]


@pytest.fixture(scope="module")
def data(tok):
    held = [Document("src", f"pkg/held{i}.py", module_text(40 + i)) for i in range(3)]
    return PackedData(TRAIN_DOCS, tok, DataOptions(seq_len=128, seed=0), [], held)


def trainer(run_dir, data, tok, **changes):
    settings = dict(steps=6, batch_size=2, warmup_steps=3, lr=3e-3, compile="off", precision="fp32")
    settings.update(eval_every=3, eval_rows=4, ckpt_every=3, log_every=1)
    settings.update(changes)
    model = init_model(micro_config(tok.vocab_size, max_position_embeddings=256), seed=0)
    return Trainer(model, data, TrainConfig(**settings), run_dir, progress=False)


def test_probe_prompts_are_the_inference_prompts(tok, data):
    tpl = detect_fim(tok)
    long = FimProbe(data.heldout, SegmentEncoder(tok), 4096, lines=6, seed=1)
    assert len(long) == 6 and long.cut == 0
    for ids, sample in long.items:
        assert sample.kind == "mid_line" and sample.target.strip()
        assert ids == tok.encode(tpl.build(sample.prefix, sample.suffix, path=sample.path))
    probe = FimProbe(data.heldout, SegmentEncoder(tok), 256, lines=6, seed=1)
    assert len(probe) > 0 and all(len(ids) + 24 <= 256 for ids, _ in probe.items)
    model = init_model(micro_config(tok.vocab_size, max_position_embeddings=512), seed=0)
    score = probe.exact_match(model)
    assert score is not None and 0.0 <= score <= 1.0 and model.training  # left as it was


def test_the_trainer_logs_exact_match_beside_the_heldout_loss(tmp_path, data, tok):
    t = trainer(tmp_path / "run", data, tok, eval_fim_lines=4)
    t.train()
    evals = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0 <= r["fim_exact"] <= 1 and r["fim_lines"] == len(t.fim_probe) > 0 for r in evals)


def test_a_time_budget_fits_the_steps_and_ends_the_run(tmp_path, data, tok):
    fitted = []
    t = trainer(tmp_path / "run", data, tok, steps=100_000, time_budget_s=0.5, ckpt_every=1000, eval_every=1000)
    t.on_budget = fitted.append
    summary = t.train()
    assert summary["finished"] and summary["step"] == t.cfg.steps == t.budget_steps < 100_000
    assert fitted and fitted[-1] == summary["step"] and summary["time_budget_s"] == 0.5
    saved = checkpoints.load_state(checkpoints.latest_checkpoint(tmp_path / "run"))
    assert saved["budget_steps"] == summary["step"] and saved["train_config"]["steps"] == summary["step"]
    again = trainer(tmp_path / "run", data, tok, steps=summary["step"], time_budget_s=0.5)
    # the resumed run keeps the fitted steps and the wall time spent so far (the run may end at its
    # fitted step a little before the budget is spent, so the wall is compared with what was saved)
    assert again.resume() and again.budget_steps == summary["step"] and again.wall == saved["wall"] > 0
    with pytest.raises(TrainConfigError, match="warmup"):
        TrainConfig(time_budget_s=60, warmup_steps=1)


def test_the_prefetched_epoch_is_the_epoch_rows_builds(tmp_path, data, tok):
    fresh = PackedData(TRAIN_DOCS, tok, data.options, [], data.heldout)
    fresh.rows(0)
    fresh.prefetch(1)
    built_here = PackedData(TRAIN_DOCS, tok, data.options, [], data.heldout).rows(1)
    assert torch.equal(fresh.rows(1), built_here) and fresh.cached_rows(0) is None  # epoch 0 let go
    # and a run that prefetches trains exactly as one that does not
    a = trainer(tmp_path / "a", data, tok, prefetch="on")
    b = trainer(tmp_path / "b", data, tok, prefetch="off")
    a.train(), b.train()
    assert a.prefetching and not b.prefetching
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())


def test_curve_json_table_and_model_card(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [
        {"step": 1, "loss": 6.0, "tokens": 1000},
        {"step": 10, "loss": 5.0, "tokens": 10_000, "eval_loss": 5.1, "fim_exact": 0.0, "fim_lines": 32},
        {"step": 20, "loss": 4.0, "tokens": 20_000, "eval_loss": 4.6, "fim_exact": 0.05, "fim_lines": 32},
        {"step": 20, "loss": 4.0, "tokens": 20_000, "eval_loss": 4.5, "fim_exact": 0.0625, "fim_lines": 32},
        {"step": 40, "loss": 3.5, "tokens": 40_000, "eval_loss": 4.2, "fim_exact": 0.125, "fim_lines": 32},
    ]
    text = "\n".join(json.dumps(r) for r in records) + '\n{"step": 41, "lo'  # a torn line from a kill
    (run / "log.jsonl").write_text(text)
    curve = read_curve(run)
    assert [p["step"] for p in curve["points"]] == [10, 20, 40]
    assert curve["points"][1]["eval_loss"] == 4.5  # the resumed run's record of a step wins
    assert last_doubling(curve["points"]) == {
        "from_tokens": 20_000,
        "to_tokens": 40_000,
        "doublings": 1.0,
        "loss_change": -0.3,
        "fim_exact_change": 0.0625,
    }
    table = render_markdown(curve)
    assert "| 40,000 | 40 | 4.200 | 66.69 | 12.5% of 32 |" in table and "held-out loss -0.300" in table
    assert json.loads(write_curve(run, curve).read_text())["points"] == curve["points"]

    card = tmp_path / "CARD.md"
    card.write_text("# model\n\n## Evaluation\n\ntext\n\n## Limitations and risks\n\n- small\n")
    assert update_card(card, curve)
    first = card.read_text()
    assert first.index("## Training curve: run") < first.index("## Limitations") and "12.5% of 32" in first
    assert not update_card(card, curve)  # the same table again: nothing changes
    curve["points"][-1]["eval_loss"] = 4.0
    assert update_card(card, curve) and card.read_text().count("## Training curve: run") == 1
