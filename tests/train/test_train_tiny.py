"""The demi-tiny recipe: a valid, seeded spec within the repository budget, permissive sources
only, and shipping a finished run (license and size checks)."""

from __future__ import annotations

import json
import shutil

import pytest

from demi.model.config import ModelConfig
from demi.train.data import DataOptions
from demi.train.errors import TrainConfigError
from demi.train.tiny import MAX_SHIPPED_BYTES, ship, tiny_model_config, tiny_spec
from demi.train.trainer import TrainConfig, init_model


def test_spec_is_valid_seeded_and_fits_the_budget():
    spec = tiny_spec()
    cfg = TrainConfig.from_dict(spec.train)
    data = DataOptions(**spec.data)
    assert cfg.seed == data.seed == 1234 and cfg.save_dtype == "bfloat16"
    assert spec.corpus["permissive_only"] and 0 < spec.corpus["heldout_fraction"] < 0.1
    model_cfg = tiny_model_config(spec.vocab_size)
    assert isinstance(model_cfg, ModelConfig) and data.seq_len <= model_cfg.max_position_embeddings
    params = sum(p.numel() for p in init_model(model_cfg).parameters())
    assert 10e6 < params < 20e6
    assert params * 2 < MAX_SHIPPED_BYTES  # bf16 safetensors
    assert model_cfg.to_hf()["model_type"] == "qwen2"  # transformers knows it


def _fake_run(tmp_path, permissive=True, weights=1000):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "training.json"):
        (run / "model" / f).write_text("{}")
    (run / "model" / "model.safetensors").write_bytes(b"\0" * weights)
    src = {"name": "pkg", "files": 3, "license": {"permissive": permissive}}
    (run / "manifest.json").write_text(json.dumps({"shippable": permissive, "sources": [src]}))
    return run


def test_ship_copies_the_model_manifest_and_card(tmp_path):
    run = _fake_run(tmp_path)
    card = tmp_path / "CARD.md"
    card.write_text("# demi-tiny\n")
    out = ship(run, tmp_path / "builtin" / "demi-tiny", card)
    files = set(out["files"])
    assert {"config.json", "model.safetensors", "manifest.json", "README.md"} <= files
    shutil.rmtree(tmp_path / "builtin")


def test_ship_refuses_non_permissive_or_oversized_runs(tmp_path, monkeypatch):
    from demi.train import tiny

    with pytest.raises(TrainConfigError, match="not shippable"):
        ship(_fake_run(tmp_path / "a", permissive=False), tmp_path / "out")
    monkeypatch.setattr(tiny, "MAX_SHIPPED_BYTES", 5000)
    with pytest.raises(TrainConfigError, match="budget"):
        ship(_fake_run(tmp_path / "b", weights=5001), tmp_path / "out")
    with pytest.raises(TrainConfigError, match="no finished model"):
        ship(tmp_path / "nothing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_phases_are_valid_and_later_than_the_first_schedule():
    spec = tiny_spec()
    bounds = spec.boundaries()
    assert bounds and bounds[0] >= spec.train["steps"]  # the first 1,800 steps are the base mix
    for k in range(len(bounds) + 1):
        opts = spec.data_options(k)
        assert opts.seq_len == spec.data["seq_len"]
    assert spec.data_options(len(bounds)).line_fim_rate > 0 == spec.data_options(0).line_fim_rate


def _run_at_step(tmp_path, step: int):
    """A run directory as `prepare_run` left it (run.json without phases) with a checkpoint."""
    import torch

    from demi.train import checkpoints
    from demi.train.pipeline import RunSpec
    from demi.train.trainer import write_json

    run = tmp_path / f"run{step}"
    run.mkdir()
    spec = tiny_spec()
    old = RunSpec.from_json({**spec.to_json(), "phases": []})
    write_json(run / "run.json", old.to_json())
    model = torch.nn.Linear(2, 2)
    checkpoints.save(run, step, model, torch.optim.AdamW(model.parameters()), {"position": [0, 0]})
    return run


def test_a_run_from_before_the_phases_adopts_them_until_it_passes_them(tmp_path):
    from demi.train.pipeline import load_run
    from demi.train.tiny import TINY_PHASES, _adopt_phases

    boundary = TINY_PHASES[0]["from_step"]
    run = _run_at_step(tmp_path, boundary)
    said: list[str] = []
    _adopt_phases(run, load_run(run), said.append)
    assert load_run(run).phases == TINY_PHASES and said
    late = _run_at_step(tmp_path, boundary + 1)
    with pytest.raises(TrainConfigError, match="past step"):
        _adopt_phases(late, load_run(late), said.append)
    assert load_run(late).phases == []
