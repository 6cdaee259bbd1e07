"""demi-tiny, the model that ships with Demi: present, within budget, trained, and used by default.

The weights are the ones `make tiny` produced (model/builtin/demi-tiny); these tests check what
a user relies on out of the box, with no download."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from helpers import clean_env, demi, one_json

from demi.model.registry import DEFAULT_MODEL, builtin_models, resolve_model_dir

ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    models = builtin_models()
    assert DEFAULT_MODEL in models, "model/builtin/demi-tiny is missing: run `make tiny`"
    return models[DEFAULT_MODEL]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from demi.model.engine import LocalModel

    return LocalModel.load(str(tiny_dir), context=2048)


def test_ships_within_budget_with_its_card_and_manifest(tiny_dir):
    files = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "manifest.json",
        "training.json",
        "README.md",
    } <= files
    assert sum(p.stat().st_size for p in tiny_dir.iterdir()) <= 40_000_000
    manifest = json.loads((tiny_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["shippable"] and manifest["permissive_only"]
    assert all(s["license"]["permissive"] for s in manifest["sources"] if s["files"])
    assert resolve_model_dir(None) == tiny_dir  # the default when nothing else is configured


def test_it_is_trained_not_random(tiny):
    """A held-out standard-library file (never trained on) scores far better than chance (8,192)."""
    manifest = json.loads((tiny.path / "manifest.json").read_text(encoding="utf-8"))
    held = [
        h.split("/", 1)[1]
        for h in manifest["heldout"]
        if h.startswith("cpython-stdlib/")
        and not h.startswith("cpython-stdlib/test/")
        and (STDLIB / h.split("/", 1)[1]).is_file()
    ]
    assert held
    text = (STDLIB / held[0]).read_text(encoding="utf-8")[:6000]
    assert tiny.perplexity([text])["perplexity"] < 40


def test_fim_uses_the_suffix_first_layout(tiny):
    """The template Demi sends is the one the model was trained on (SPM, suffix first), and the
    model continues the prefix there rather than starting over. How often it is *right* is measured
    by `demi eval fim` (MODEL_CARD.md)."""
    from demi.assistant.fim import detect_fim

    tpl = detect_fim(tiny.tokenizer)
    assert tpl is not None and tpl.family == "demi-tiny" and tpl.order == "spm"
    prompt = tpl.build("def add(a, b):\n    total = a +", "\n    return total\n")
    out = tiny.complete(prompt, max_new_tokens=8, stop=["\n"])
    assert out.text.strip() and not out.text.lstrip().startswith("def "), out


def test_demi_complete_uses_it_by_default(tmp_path):
    env = clean_env(tmp_path)
    res = one_json(demi(env, "complete", ROOT / "examples" / "inventory.py", "--at", "35:12", "--json", "--no-history"))
    assert res["model"] == DEFAULT_MODEL and res["completion"].strip()
