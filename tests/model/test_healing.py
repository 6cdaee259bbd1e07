"""Token healing: what moves out of the prompt, that the output spells it, and that users never see it."""

from __future__ import annotations

from pathlib import Path

import pytest

from demi.assistant.context import FimContext
from demi.assistant.engines import InProcessEngine
from demi.model.engine import LocalModel, _unhealed
from demi.model.generate import Sampling
from demi.model.healing import MAX_HEAL_CHARS, ForcedPrefix, TokenTexts, split_heal
from demi.model.tokenizer import Tokenizer

BUILTIN = Path(__file__).resolve().parents[2] / "model" / "builtin" / "demi-tiny"


@pytest.fixture(scope="module")
def tiny_tok() -> Tokenizer:
    return Tokenizer.from_dir(BUILTIN)


@pytest.fixture(scope="module")
def random_model(tiny_checkpoints) -> LocalModel:
    """Random weights: whatever the model prefers, the constraint alone must make it spell the text."""
    return LocalModel.load(str(tiny_checkpoints("qwen2")), context=512)


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("def f(x):\n    ", ("def f(x):", "\n    ")),
        ("x = 1\n\n", ("x = 1", "\n\n")),
        ("return ", ("return", " ")),
        ("a\r\n\t", ("a", "\r\n\t")),
        ("   ", ("   ", "")),  # all blank: nothing to anchor on
        ("", ("", "")),
        ("foo(", ("foo(", "")),  # punctuation is its own token: nothing to heal
        ("x" + " " * (MAX_HEAL_CHARS + 1), ("x" + " " * (MAX_HEAL_CHARS + 1), "")),
    ],
)
def test_split_heal_moves_trailing_whitespace(prefix: str, expected: tuple[str, str]) -> None:
    assert split_heal(prefix) == expected


def test_split_heal_gives_back_a_word_piece(tiny_tok: Tokenizer) -> None:
    body, heal = split_heal("value = self.getat", tiny_tok)
    assert body + heal == "value = self.getat" and heal and "getat".endswith(heal.strip())
    assert split_heal("    return self", tiny_tok) == ("    return", " self")
    assert split_heal("import os\nprint", tiny_tok) == ("import os\n", "print")
    assert split_heal("print", tiny_tok) == ("print", "")  # the whole prefix: keep something to anchor on
    assert split_heal("call(", tiny_tok) == ("call(", "")


def test_token_texts_spell_what_decode_gives(tiny_tok: Tokenizer) -> None:
    table = TokenTexts.of(tiny_tok)
    assert TokenTexts.of(tiny_tok) is table  # built once per tokenizer
    ids = tiny_tok.encode("    return value\n", add_special_tokens=False)
    assert "".join(table.texts[i] for i in ids) == "    return value\n"
    assert table.texts[tiny_tok.token_to_id("<|fim_middle|>")] is None  # specials never spell text


def test_mask_allows_exactly_the_consistent_tokens(tiny_tok: Tokenizer) -> None:
    table = TokenTexts.of(tiny_tok)
    mask = table.mask("\n    ", len(table.texts))
    allowed = {table.texts[i] for i in mask.nonzero().flatten().tolist()}
    assert "\n" in allowed and all(t.startswith("\n    ") or "\n    ".startswith(t) for t in allowed)
    assert any(t.startswith("\n    ") and t.strip() for t in allowed) or "\n   " in allowed


def test_forced_prefix_advances_and_gives_up_cleanly(tiny_tok: Tokenizer) -> None:
    fp = ForcedPrefix(tiny_tok, "\n    ")
    nl = tiny_tok.encode("\n", add_special_tokens=False)
    assert len(nl) == 1
    fp.advance(nl[0])
    assert fp.left == "    " and not fp.done
    fp.advance(tiny_tok.token_to_id("<|endoftext|>"))  # a token that does not agree: stop forcing
    assert fp.done and fp.mask(100, "cpu") is None


@pytest.mark.parametrize(
    "raw, heal, visible",
    [
        ("\n    return x", "\n    ", "return x"),
        ("\n  ", "\n    ", ""),  # still spelling
        ("\n\tx", "\n    ", "\tx"),  # the constraint gave up after "\n": the rest is the model's
        ("abc", "", "abc"),
    ],
)
def test_unhealed_strips_only_the_spelled_text(raw: str, heal: str, visible: str) -> None:
    assert _unhealed(raw, heal) == visible


def test_random_model_spells_the_healed_text_first(random_model: LocalModel) -> None:
    heal = "\n        "
    out = random_model.complete("def f(x):", heal=heal, max_new_tokens=12, stop_ids=set())
    raw = random_model.tokenizer.decode(out.token_ids)
    assert raw.startswith(heal)
    assert out.text == raw[len(heal) :]
    assert out.extra["healed"] == len(heal)


def test_sampled_generation_is_constrained_too(random_model: LocalModel) -> None:
    for seed in range(3):
        out = random_model.complete(
            "x =", heal=" ", max_new_tokens=4, stop_ids=set(), sampling=Sampling(temperature=1.5, seed=seed)
        )
        assert random_model.tokenizer.decode(out.token_ids).startswith(" ")


def test_infill_answers_without_the_indentation_the_user_already_typed() -> None:
    engine = InProcessEngine(LocalModel.load(str(BUILTIN), context=1024))
    prefix = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
    out = engine.infill(FimContext(prefix, "\n", "stack.py"), stop=["\n"], max_new_tokens=16)
    raw = engine.local.tokenizer.decode(out.token_ids)
    assert out.extra["healed"] == len("\n        ") and raw.startswith("\n        ")
    assert raw[len("\n        ") :].startswith(out.text)  # the answer is what follows the typed indentation
