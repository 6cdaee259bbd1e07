"""Demi's tokenizer against transformers' AutoTokenizer, plus BPE training and streaming.

Parity is the contract: `demi generate --json` reports token ids and `demi eval perplexity`
scores tokens, so both must be the ids transformers would produce from the same files.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from tokenizers_fixture import make_bytelevel_tokenizer, make_llama_tokenizer, training_texts

from demi.model.bpe_train import SPECIAL_TOKENS, train_bpe_tokenizer
from demi.model.errors import TokenizerError
from demi.model.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "",
    " ",
    "hello world",
    "def add(a, b):\n    return a + b\n",
    "    indented\n\n\n\ttabbed  \t  mixed\r\n",
    " leading and trailing ",
    "a" * 40 + "   " + "b" * 3,
    "café naïve résumé Straße ÅÉÎøü",
    "emoji 😀🎉 and 👩‍💻 zwj",
    "中文字符 日本語のテキスト 한국어",
    "combining e\u0301 and zero\u200bwidth",
    "<|im_start|>user\nhi<|im_end|>\n",
    "x<|endoftext|>y <|fim_prefix|>p<|fim_suffix|>s<|fim_middle|>",
    "<s>[INST] hi [/INST]</s> <unk>",
    "not special: <|im_start without end, <0x41>, ▁ meta",
]
# Characters the training text never contains, so byte-level BPE and byte fallback split them
# into several byte tokens: the cases a streaming decoder can get wrong.
STREAM_TEXTS = [
    "print('😀')  # 中文 comment",
    "🎉🚀👩‍💻",
    "  x = '日本語'\n\ty = 'ü'\n",
    "한국어 text 😀 end",
    "<|im_start|>assistant\n😀<|im_end|>",
]
MAKERS = {"bytelevel": make_bytelevel_tokenizer, "llama": make_llama_tokenizer}


@pytest.fixture(scope="module", params=list(MAKERS))
def pair(request, tmp_path_factory):
    """(kind, Demi tokenizer, transformers tokenizer) loaded from the same directory."""
    out = tmp_path_factory.mktemp(request.param)
    tok = MAKERS[request.param](out)
    return request.param, tok, transformers.AutoTokenizer.from_pretrained(out)


@pytest.fixture(scope="module")
def bytelevel_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bl")
    make_bytelevel_tokenizer(out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_parity(tok: Tokenizer, hf, texts=TEXTS) -> None:
    assert tok.vocab_size == len(hf)
    for text in texts:
        for add in (True, False):
            expected = hf(text, add_special_tokens=add)["input_ids"]
            assert tok.encode(text, add_special_tokens=add) == expected, text
        ids = hf(text)["input_ids"]
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text


# -- training -----------------------------------------------------------------------------------


def test_trained_special_tokens(bytelevel_dir):
    tok = Tokenizer.from_dir(bytelevel_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(9))
    assert tok.special_tokens == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert tok.bos_token_id is None and not tok.add_bos_token
    assert tok.eos_token_ids == [0] and tok.eos_token_id == 0 and tok.pad_token_id == 0
    assert tok.vocab_size == 400
    hf = transformers.AutoTokenizer.from_pretrained(bytelevel_dir)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (None, 0, 0)
    assert hf.model_max_length == 4096
    assert {t.content for t in hf.added_tokens_decoder.values() if t.special} == set(SPECIAL_TOKENS)


def test_training_is_deterministic_and_covers_all_bytes(bytelevel_dir, tmp_path):
    again = make_bytelevel_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (bytelevel_dir / "tokenizer.json").read_bytes()
    weird = "\x00\x7f\u0300 \U0010ffff \ud7ff \ufeff" + "".join(map(chr, range(32)))
    assert again.decode(again.encode(weird)) == weird


def test_training_rejects_tiny_vocab(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(training_texts(), tmp_path, vocab_size=100)


# -- parity with transformers -------------------------------------------------------------------


def test_encode_decode_match_transformers(pair):
    kind, tok, hf = pair
    assert_parity(tok, hf)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tok, name) == getattr(hf, name), name
    assert tok.add_bos_token == (kind == "llama")
    assert set(tok.special_tokens.values()) == set(hf.all_special_ids)


def test_chat_template_matches_transformers(bytelevel_dir):
    tok = Tokenizer.from_dir(bytelevel_dir)
    hf = transformers.AutoTokenizer.from_pretrained(bytelevel_dir)
    chats = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "é 😀 中文\n\n  code"},
            {"role": "assistant", "content": "ok", "tool_calls": None},
            {"role": "user", "content": "<|im_end|>"},
        ],
    ]
    for chat in chats:
        for gen in (True, False):
            ours = tok.apply_chat_template(chat, add_generation_prompt=gen)
            assert ours == hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
            assert tok.encode(ours, add_special_tokens=False) == hf.apply_chat_template(
                chat, add_generation_prompt=gen, tokenize=True, return_dict=False
            )
    assert ours.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_template_helpers_and_file_override(bytelevel_dir, tmp_path):
    d = _copy(bytelevel_dir, tmp_path / "m")
    template = (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m.role == 'bad' %}"
        "{{ raise_exception('bad role') }}{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% generation %}{{ m | tojson }}{% endgeneration %}\n{% endfor %}"
        "{{ ns.n }}|{{ eos_token }}|{{ bos_token }}|{{ tools is none }}|"
        "{{ strftime_now('%Y') | length }}|{{ extra }}"
    )
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    tok, hf = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    assert tok.chat_template == template
    msgs = [{"role": "user", "content": f'ü {i} "q" <b>'} for i in range(5)]
    ours = tok.apply_chat_template(msgs, extra="X")
    assert ours == hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, extra="X")
    assert '"ü 0 \\"q\\" <b>"' in ours and ours.endswith("3|<|endoftext|>||True|4|X")
    with pytest.raises(TokenizerError, match="bad role"):
        tok.apply_chat_template([{"role": "bad", "content": ""}])
    (d / "chat_template.jinja").write_text("{{ messages.append(1) }}", encoding="utf-8")
    with pytest.raises(TokenizerError):  # the sandbox refuses to mutate inputs
        Tokenizer.from_dir(d).apply_chat_template(msgs)
    (d / "chat_template.jinja").write_text("{% if %}", encoding="utf-8")
    with pytest.raises(TokenizerError, match="does not parse"):
        Tokenizer.from_dir(d).apply_chat_template(msgs)


def test_template_list_picks_default(bytelevel_dir, tmp_path):
    d = _copy(bytelevel_dir, tmp_path / "m")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "x"}]) == "D"


def test_no_template_raises(tmp_path):
    tok = make_llama_tokenizer(tmp_path)
    assert tok.chat_template is None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_config_only_tokens_are_added_like_transformers(tmp_path):
    make_llama_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    flags = {"lstrip": False, "rstrip": False, "single_word": False, "normalized": False}
    cfg["added_tokens_decoder"]["500"] = {"content": "<extra>", "special": True, **flags}
    cfg["added_tokens_decoder"]["501"] = {"content": "<plain>", "special": False, **flags}
    cfg["pad_token"] = {"content": "<pad>", "__type": "AddedToken"}
    cfg["add_bos_token"] = False  # ignored by transformers 5 when tokenizer.json exists, and by us
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok, hf = Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert_parity(tok, hf, TEXTS + ["a<extra>b <plain> c<pad>"])
    assert tok.pad_token_id == hf.pad_token_id is not None and "<plain>" not in tok.special_tokens


@pytest.mark.parametrize("legacy", [False, True])
def test_old_llama_files_tokenize_as_transformers_rebuilds_them(tmp_path, legacy):
    """Llama-2/Mistral files put the "▁" prefix in a normalizer; transformers 5 ignores it."""
    make_llama_tokenizer(tmp_path)
    spec = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = None
    spec["normalizer"] = {
        "type": "Sequence",
        "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.update(tokenizer_class="LlamaTokenizer", legacy=legacy)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert_parity(Tokenizer.from_dir(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path))


# -- streaming ----------------------------------------------------------------------------------


def _stream(tok: Tokenizer, ids: list[int], **kwargs) -> list[str]:
    decoder = tok.stream(**kwargs)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def test_stream_never_splits_characters(pair):
    _, tok, _ = pair
    for text in STREAM_TEXTS:
        ids = tok.encode(text)
        assert len(ids) > len(tok.encode(text.encode("ascii", "ignore").decode())) + 3  # bytes were split
        for skip in (False, True):
            pieces = _stream(tok, ids, skip_special_tokens=skip)
            assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)
            assert not any("\ufffd" in p for p in pieces), pieces
    assert sum(1 for p in _stream(tok, tok.encode(STREAM_TEXTS[0])) if p) > 5  # it really streams


def test_stream_equals_decode_for_any_ids(pair):
    """Random ids include invalid byte sequences; the pieces still add up to `decode`."""
    _, tok, _ = pair
    rng = random.Random(0)
    byte_heavy = list(range(9, 270))  # special tokens and byte tokens in both layouts
    for trial in range(400):
        pool = byte_heavy if trial % 2 else range(tok.vocab_size)
        ids = [rng.choice(pool) for _ in range(rng.randrange(1, 24))]
        skip = trial % 3 == 0
        pieces = _stream(tok, ids, skip_special_tokens=skip)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip), ids


def test_stream_with_prompt_context_keeps_leading_space(pair):
    _, tok, _ = pair
    prompt, gen = tok.encode("def f(x):\n    return"), tok.encode(" x + 1  # 😀", add_special_tokens=False)
    assert "".join(_stream(tok, gen, prefix_ids=prompt)) == " x + 1  # 😀"


# -- errors and configs -------------------------------------------------------------------------


def test_load_errors(bytelevel_dir, tmp_path):
    cases = {"missing-dir": tmp_path / "nope"}
    (tmp_path / "empty").mkdir()
    cases["no-tokenizer-json"] = tmp_path / "empty"
    bad_files = {"garbage": "{not json", "not-a-tokenizer": '{"foo": 1}', "binary": b"\xff\xfe\x00"}
    for name, content in bad_files.items():
        d = tmp_path / name
        d.mkdir()
        path = d / "tokenizer.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        cases[name] = d
    bad_cfg = _copy(bytelevel_dir, tmp_path / "bad-config")
    (bad_cfg / "tokenizer_config.json").write_text("{")
    cases["bad-config"] = bad_cfg
    for name, d in cases.items():
        with pytest.raises(TokenizerError) as err:
            Tokenizer.from_dir(d)
        message = str(err.value)
        assert str(d) in message and "\n" not in message, name


def test_eos_ids_union_of_configs(bytelevel_dir, tmp_path):
    d = _copy(bytelevel_dir, tmp_path / "m")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [8, 0]}))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 7, "text_config": {"eos_token_id": 6}}))
    tok = Tokenizer.from_dir(d)
    assert tok.eos_token_ids == [0, 8, 7, 6] and tok.eos_token_id == 0
    (d / "generation_config.json").write_text("{broken")  # side files are best effort
    (d / "config.json").write_text(json.dumps({"eos_token_id": None}))
    assert Tokenizer.from_dir(d).eos_token_ids == [0]
