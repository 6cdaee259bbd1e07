"""Speculative decoding in the session layer: the `speculate` setting, `InProcessEngine.chat`
(explain, refactor, chat) speculating by default, `infill` not, and the figures in the tasks' JSON."""

from __future__ import annotations

import pytest

from demi.assistant.config import SETTINGS, load_config
from demi.assistant.context import FimContext
from demi.assistant.engines import DEFAULT_SPECULATE, InProcessEngine
from demi.assistant.prompts import ChatPrompt
from demi.model.engine import LocalModel

PROMPT = ChatPrompt(
    [{"role": "user", "content": "def add(a, b):\n    return a + b\n"}],
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(",
)


def test_the_setting_defaults_to_the_engines_depth_and_reads_its_environment_variable(tmp_path):
    setting = next(s for s in SETTINGS if s.key == "speculate")
    assert setting.default == DEFAULT_SPECULATE and setting.env == "DEMI_SPECULATE"
    missing = tmp_path / "none.toml"
    assert load_config(environ={}, path=missing)["speculate"] == DEFAULT_SPECULATE
    assert load_config(environ={"DEMI_SPECULATE": "0"}, path=missing)["speculate"] == 0


@pytest.fixture(scope="module")
def local(tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints("llama")))


def test_chat_speculates_by_default_and_infill_does_not(local):
    engine = InProcessEngine(local, speculate=4)
    try:
        spec = engine.chat(PROMPT, max_new_tokens=24)
        assert spec.extra["speculation"]["k"] == 4
        plain = engine.chat(PROMPT, max_new_tokens=24, speculate=0)
        assert plain.extra["speculation"] is None
        assert spec.token_ids == plain.token_ids and spec.text == plain.text
        fim = engine.infill(FimContext("def add(a, b):\n    return ", "\n", path="m.py"), max_new_tokens=8)
        assert fim.extra["speculation"] is None
    finally:
        engine.close()


def test_speculate_zero_turns_it_off(local):
    engine = InProcessEngine(local, speculate=0)
    try:
        assert engine.chat(PROMPT, max_new_tokens=8).extra["speculation"] is None
    finally:
        engine.close()
