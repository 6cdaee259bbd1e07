"""The trainer's speed plan: which candidates are timed, a real (short) measurement at a micro
shape that picks one of them, the per-CPU cache (not written when the machine was busy), the
caller's random state untouched, and a resumed run keeping the settings it started with. No
test asserts which candidate is faster: that is the machine's business."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_support import micro_config

from demi.train import speed_plan
from demi.train.distributed import SINGLE
from demi.train.pipeline import choose_speed
from demi.train.trainer import TrainConfig, have_compiler


def test_candidates():
    assert speed_plan.candidates("fp32", "off", 1000, False) == [("fp32", False)]
    assert speed_plan.candidates("auto", "off", 1000, False) == [("fp32", False), ("bf16", False)]
    short = speed_plan.candidates("auto", "auto", speed_plan.COMPILE_MIN_STEPS - 1, False)
    assert short == [("fp32", False), ("bf16", False)]  # too short to repay compiling
    assert speed_plan.candidates("bf16", "auto", 5000, True) == [("bf16", False)]  # MoE: eager
    long = speed_plan.candidates("auto", "auto", 5000, False)
    assert long == [("fp32", False), ("bf16", False)] + ([("fp32", True), ("bf16", True)] if have_compiler() else [])


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_measured_plan_is_cached_per_cpu_unless_the_machine_was_busy(cache_home, monkeypatch):
    cfg = micro_config(300)
    before = torch.random.get_rng_state()
    monkeypatch.setattr(speed_plan.kernel_plan, "BUSY_SHARE", -1.0)  # every machine counts as busy
    busy = speed_plan.plan_speed(cfg, 32, "auto", "off", steps=100, tokens=256)
    assert torch.equal(torch.random.get_rng_state(), before)  # the run's random state is its own
    assert busy.source == "measured" and set(busy.tok_s) == {"eager fp32", "eager bf16"}
    assert busy.label == max(busy.tok_s, key=busy.tok_s.get) and not busy.compile
    assert not list(cache_home.rglob("*.json"))  # measured under load: used, not cached
    assert "fastest of" in busy.describe()

    monkeypatch.setattr(speed_plan.kernel_plan, "BUSY_SHARE", 2.0)
    measured = speed_plan.plan_speed(cfg, 32, "auto", "off", steps=100, tokens=256)
    files = list(cache_home.rglob("*.json"))
    assert measured.source == "measured" and len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["key"]["plan"] == "train-speed" and saved["key"]["cpu"] == speed_plan.kernel_plan.cache_key()["cpu"]
    again = speed_plan.plan_speed(cfg, 32, "auto", "off", steps=100, tokens=256)
    assert again.source == "cache" and again.label == measured.label and again.tok_s == measured.tok_s
    (entry,) = saved["entries"]  # a plan per model shape, sequence length and candidates
    assert "h32:l2:" in entry and ":s32:" in entry and entry.endswith("eager fp32,eager bf16")


def test_one_candidate_is_not_measured(cache_home):
    plan = speed_plan.plan_speed(micro_config(300), 32, "bf16", "off")
    assert (plan.source, plan.precision, plan.compile) == ("fixed", "bf16", False)
    assert not cache_home.exists()


def test_a_resumed_run_keeps_the_speed_it_started_with(tmp_path):
    ck = tmp_path / "step-00000004"
    ck.mkdir()
    (ck / "state.json").write_text(json.dumps({"train_config": {"precision": "bf16", "compile": "off"}}))
    tcfg = TrainConfig(precision="auto", compile="auto")
    said = []
    assert choose_speed(tcfg, micro_config(300), 32, ck, "cpu", SINGLE, said.append) is None
    assert (tcfg.precision, tcfg.compile) == ("bf16", "off") and "as the run started" in said[0]
    explicit = TrainConfig(precision="fp32", compile="auto")
    choose_speed(explicit, micro_config(300), 32, ck, "cpu", SINGLE, said.append)
    assert (explicit.precision, explicit.compile) == ("fp32", "off")  # what the user says wins
