"""FIM templates: detection from the tokenizer's special tokens and each family's exact prompt string.

Golden strings use duck-typed vocabularies (only the special tokens matter for detection); the
CodeLlama and Codestral spacing is also checked token by token on a real SentencePiece-style
(Metaspace, byte fallback) tokenizer, and demi-tiny on the byte-level tokenizer it ships with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers_fixture import make_bytelevel_tokenizer, make_llama_tokenizer

from demi.assistant.fim import FimTemplate, detect_fim, line_comment

PRE = "def f(x):\n    return "
SUF = "\n\nprint(f(1))\n"
OTHER = [("pkg/util.py", "def g():\n    pass\n")]


class Vocab:
    """Just enough of demi.model.tokenizer.Tokenizer for detect_fim."""

    def __init__(self, specials: list[str], eos: str, sentencepiece: bool = False):
        self.vocab = {t: i for i, t in enumerate(specials)}
        self.special_tokens = dict(self.vocab)
        self.special_tokens_map = {"eos_token": eos}
        self.eos_token_ids = [self.vocab[eos]]
        self.sentencepiece = sentencepiece

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def id_to_token(self, i: int) -> str | None:
        if i == 10_000:
            return "▁a" if self.sentencepiece else "a"
        return {v: k for k, v in self.vocab.items()}.get(i)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [10_000]


QWEN = [
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|vision_start|>",
]
STARCODER = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<gh_stars>",
    "<reponame>",
]
STARCODER2 = STARCODER + ["<repo_name>", "<file_sep>", "<pr>"]
CODELLAMA = ["<unk>", "<s>", "</s>", "▁<PRE>", "▁<MID>", "▁<SUF>", "▁<EOT>"]
DEEPSEEK = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜fim▁hole｜>",
    "<｜fim▁begin｜>",
    "<｜fim▁end｜>",
    "<|EOT|>",
]
CODESTRAL = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"]


def test_qwen25_coder_psm_and_stops():
    t = detect_fim(Vocab(QWEN, "<|endoftext|>"))
    assert t is not None and t.family == "qwen2.5-coder" and t.order == "psm"
    want = "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\n\nprint(f(1))\n<|fim_middle|>"
    assert t.build(PRE, SUF) == want
    # a FIM marker in the middle can only be the model losing the thread: stop there too
    assert t.stop_strings == (
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|file_sep|>",
        "<|repo_name|>",
        "<|im_end|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
    )
    assert t.stop_token_ids == {0, 1, 2, 3, 4, 5, 6, 8}


def test_qwen25_coder_repo_level():
    t = detect_fim(Vocab(QWEN, "<|endoftext|>"))
    got = t.build(PRE, SUF, path="pkg/main.py", repo="demo", other_files=OTHER)
    assert got == (
        "<|repo_name|>demo\n"
        "<|file_sep|>pkg/util.py\ndef g():\n    pass\n"
        "<|file_sep|>pkg/main.py\n"
        "<|fim_prefix|>def f(x):\n    return <|fim_suffix|>\n\nprint(f(1))\n<|fim_middle|>"
    )
    # a file without a final newline still leaves the next <|file_sep|> at the start of a line
    assert (
        t.build("a", "b", other_files=[("x.py", "y = 1")])
        == "<|file_sep|>x.py\ny = 1\n<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"
    )
    assert t.build("a", "b", path="m.py") == "<|file_sep|>m.py\n<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>"


def test_stable_context_comes_first():
    """Typing at the cursor changes only the end of the prefix: the earlier prompt is a prefix of the
    later one up to the cursor (PSM), and for SPM the earlier prompt is a prefix of the later one."""
    for vocab in (QWEN, STARCODER2, DEEPSEEK):
        t = detect_fim(Vocab(vocab, vocab[0] if vocab is not DEEPSEEK else DEEPSEEK[1]))
        before = t.build(PRE, SUF, path="pkg/main.py", repo="demo", other_files=OTHER)
        after = t.build(PRE + "x", SUF, path="pkg/main.py", repo="demo", other_files=OTHER)
        cut = before.index(PRE) + len(PRE)
        assert after[:cut] == before[:cut], t.family
    t = detect_fim(Vocab(CODESTRAL, "</s>"))
    assert t.build(PRE + "x", SUF, other_files=OTHER).startswith(t.build(PRE, SUF, other_files=OTHER))


def test_starcoder2_repo_level():
    t = detect_fim(Vocab(STARCODER2, "<|endoftext|>"))
    assert t.family == "starcoder2"
    assert t.build(PRE, SUF) == "<fim_prefix>def f(x):\n    return <fim_suffix>\n\nprint(f(1))\n<fim_middle>"
    assert t.build(PRE, SUF, path="pkg/main.py", repo="demo", other_files=OTHER) == (
        "<repo_name>demo<file_sep>pkg/util.py\ndef g():\n    pass\n"
        "<file_sep><fim_prefix>pkg/main.py\ndef f(x):\n    return <fim_suffix>\n\nprint(f(1))\n<fim_middle>"
    )
    assert t.stop_strings == (
        "<|endoftext|>",
        "<file_sep>",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        "<fim_pad>",
        "<repo_name>",
    )


def test_starcoder_without_file_tokens_uses_comments():
    t = detect_fim(Vocab(STARCODER, "<|endoftext|>"))
    assert t.family == "starcoder"
    assert t.build(PRE, SUF) == "<fim_prefix>def f(x):\n    return <fim_suffix>\n\nprint(f(1))\n<fim_middle>"
    assert t.build("x = ", "", path="pkg/main.py", other_files=OTHER) == (
        "<fim_prefix># pkg/util.py\ndef g():\n    pass\n\n# pkg/main.py\nx = <fim_suffix><fim_middle>"
    )
    assert t.stop_token_ids == {0, 1, 2, 3, 4}


def test_codellama_spacing():
    t = detect_fim(Vocab(CODELLAMA, "</s>", sentencepiece=True))
    assert t.family == "codellama" and t.order == "psm"
    # "<PRE> {pre} <SUF>{suf} <MID>": the spaces before <SUF>/<MID> are inside the ▁ tokens
    assert t.build(PRE, SUF) == "▁<PRE> def f(x):\n    return ▁<SUF>\n\nprint(f(1))\n▁<MID>"
    assert t.build("", SUF) == "▁<PRE>▁<SUF>\n\nprint(f(1))\n▁<MID>"  # encode("") is empty: no space
    assert t.stop_strings == ("▁<EOT>", "</s>") and t.stop_token_ids == {2, 6}
    plain = detect_fim(Vocab(["<s>", "</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"], "</s>"))
    assert plain.build(PRE, SUF) == "<PRE> def f(x):\n    return  <SUF>\n\nprint(f(1))\n <MID>"
    assert plain.stop_strings == ("<EOT>", "</s>")
    assert t.build("x = ", "", path="src/a.ts", other_files=[("src/b.ts", "export const b = 1;\n")]) == (
        "▁<PRE> // src/b.ts\nexport const b = 1;\n\n// src/a.ts\nx = ▁<SUF>▁<MID>"
    )


def test_deepseek_coder():
    t = detect_fim(Vocab(DEEPSEEK, "<｜end▁of▁sentence｜>"))
    assert t.family == "deepseek-coder"
    assert t.build(PRE, SUF) == "<｜fim▁begin｜>def f(x):\n    return <｜fim▁hole｜>\n\nprint(f(1))\n<｜fim▁end｜>"
    assert "<｜end▁of▁sentence｜>" in t.stop_strings and "<|EOT|>" in t.stop_strings
    assert 1 in t.stop_token_ids


def test_codestral_spm():
    sp = detect_fim(Vocab(CODESTRAL, "</s>", sentencepiece=True))
    assert sp.family == "codestral" and sp.order == "spm" and sp.middle_token is None
    assert sp.build(PRE, SUF) == "[SUFFIX]\n\nprint(f(1))\n[PREFIX] def f(x):\n    return "
    tekken = detect_fim(Vocab(CODESTRAL, "</s>"))  # byte-level vocabulary: no dummy-prefix space
    assert tekken.build(PRE, SUF) == "[SUFFIX]\n\nprint(f(1))\n[PREFIX]def f(x):\n    return "
    assert sp.build("", SUF) == "[SUFFIX]\n\nprint(f(1))\n[PREFIX]"
    assert "</s>" in sp.stop_strings and 2 in sp.stop_token_ids


def test_no_fim_tokens_is_none(tmp_path):
    assert detect_fim(Vocab(["<s>", "</s>"], "</s>")) is None
    assert detect_fim(make_llama_tokenizer(tmp_path / "llama")) is None


def test_line_comment():
    assert line_comment("a.py") == "#" and line_comment("a.rs") == "//" and line_comment("q.sql") == "--"
    assert line_comment(None) == "#" and line_comment("Makefile") == "#"


# -- real tokenizers ------------------------------------------------------------------------------


def test_demi_tiny_on_its_tokenizer(tmp_path):
    tok = make_bytelevel_tokenizer(tmp_path / "tiny")
    t = detect_fim(tok)
    assert isinstance(t, FimTemplate) and t.family == "demi-tiny"
    # demi-tiny is trained on both orders and takes the suffix first, so typing at the cursor
    # only appends to the prompt and the prefix cache reuses all of it.
    assert t.order == "spm"
    text = t.build(PRE, SUF)
    assert text == "<|fim_suffix|>\n\nprint(f(1))\n<|fim_prefix|>def f(x):\n    return <|fim_middle|>"
    assert t.build(PRE + "x", SUF).startswith(text[: -len("<|fim_middle|>")])
    ids = tok.encode(text)
    pre, mid, suf = (tok.token_to_id(x) for x in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"))
    assert ids[0] == suf and ids[-1] == mid and ids.count(pre) == 1
    assert tok.decode(ids[1 : ids.index(pre)]) == SUF and tok.decode(ids[ids.index(pre) + 1 : -1]) == PRE
    assert t.stop_token_ids == {tok.token_to_id(s) for s in t.stop_strings} | set(tok.eos_token_ids)


def _sentencepiece_with(tmp_path: Path, name: str, extra: list[str]):
    """The Llama-style test tokenizer with extra special tokens declared in tokenizer_config.json."""
    out = tmp_path / name
    make_llama_tokenizer(out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    base = 1000
    for i, token in enumerate(extra):
        cfg["added_tokens_decoder"][str(base + i)] = {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    from demi.model.tokenizer import Tokenizer

    return Tokenizer.from_dir(out)


def _text_of(tok, ids: list[int]) -> str:
    """Token pieces joined, '▁' shown as a space and <0xNN> bytes decoded (Metaspace's view)."""
    raw = bytearray()
    for i in ids:
        piece = tok.id_to_token(i)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            raw.append(int(piece[3:5], 16))
        else:
            raw += piece.replace("▁", " ").encode()
    return raw.decode()


def test_codellama_tokens_match_meta_reference(tmp_path):
    """[BOS, ▁<PRE>] + encode(prefix) (with SentencePiece's dummy-prefix space) + [▁<SUF>] +
    encode_infilling(suffix) (no space) + [▁<MID>]."""
    tok = _sentencepiece_with(tmp_path, "codellama", ["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"])
    t = detect_fim(tok)
    assert t.family == "codellama"
    ids = tok.encode(t.build(PRE, SUF))
    pre, suf, mid = (tok.token_to_id(x) for x in ("▁<PRE>", "▁<SUF>", "▁<MID>"))
    assert ids[:2] == [tok.bos_token_id, pre] and ids[-1] == mid and ids.count(suf) == 1
    cut = ids.index(suf)
    assert ids[2:cut] == tok.encode(PRE, add_special_tokens=False)  # SentencePiece encode(pre)
    assert _text_of(tok, ids[2:cut]) == " " + PRE
    assert _text_of(tok, ids[cut + 1 : -1]) == SUF  # no dummy prefix on the suffix
    assert tok.token_to_id("▁<EOT>") in t.stop_token_ids


def test_codestral_tokens_sentencepiece(tmp_path):
    tok = _sentencepiece_with(tmp_path, "codestral", ["[PREFIX]", "[SUFFIX]", "[MIDDLE]"])
    t = detect_fim(tok)
    assert t.family == "codestral" and t.lead_space
    ids = tok.encode(t.build(PRE, SUF))
    p, s = tok.token_to_id("[PREFIX]"), tok.token_to_id("[SUFFIX]")
    assert ids[:2] == [tok.bos_token_id, s] and ids.count(p) == 1  # <s>[SUFFIX]suffix[PREFIX] prefix
    cut = ids.index(p)
    assert _text_of(tok, ids[2:cut]) == SUF and _text_of(tok, ids[cut + 1 :]) == " " + PRE


@pytest.mark.parametrize("family", ["qwen", "starcoder2"])
def test_no_repo_context_means_plain_fim(family):
    vocab = QWEN if family == "qwen" else STARCODER2
    t = detect_fim(Vocab(vocab, vocab[0]))
    assert t.build("a", "b") == f"{t.prefix_token}a{t.suffix_token}b{t.middle_token}"


# -- the layout comes from the model's metadata --------------------------------------------------


def _declaring(specials: list[str], **meta: str) -> Vocab:
    """A vocabulary whose tokenizer_config.json declared `meta` (fim_family, fim_layout)."""
    v = Vocab(specials, specials[0])
    v.fim_metadata = dict(meta)  # type: ignore[attr-defined]
    return v


# demi-tiny's exact special tokens: what a Qwen2.5-Coder fine-tune with a trimmed vocabulary (no
# vision, box or tool tokens) also holds. The old family guess took such a model for demi-tiny.
TRIMMED_QWEN = QWEN[:9]


def test_psm_unless_the_model_declares_otherwise():
    for vocab in (QWEN, TRIMMED_QWEN):
        t = detect_fim(Vocab(vocab, vocab[0]))
        assert t.family == "qwen2.5-coder" and t.order == "psm"
        assert t.build(PRE, SUF).startswith("<|fim_prefix|>")
    assert detect_fim(_declaring(QWEN, fim_layout="spm")).order == "spm"
    assert detect_fim(_declaring(QWEN, fim_layout="psm"), layout="spm").order == "spm"  # the caller's word wins
    assert detect_fim(_declaring(TRIMMED_QWEN, fim_layout="bogus")).order == "psm"  # unknown: ignored
    assert detect_fim(_declaring(STARCODER, fim_layout="spm")).order == "psm"  # no SPM variant there
    assert detect_fim(_declaring(CODESTRAL)).order == "spm"  # SPM by format
    with pytest.raises(ValueError):
        detect_fim(Vocab(QWEN, QWEN[0]), layout="middle-first")


def test_demi_tiny_only_when_declared():
    t = detect_fim(_declaring(TRIMMED_QWEN, fim_family="demi-tiny"))
    assert t.family == "demi-tiny" and t.order == "spm"  # the family's own order
    t = detect_fim(_declaring(TRIMMED_QWEN, fim_family="demi-tiny", fim_layout="psm"))
    assert t.family == "demi-tiny" and t.order == "psm"
    # a family name that does not fit the tokens is not believed
    t = detect_fim(_declaring(QWEN, fim_family="starcoder2"))
    assert t.family == "qwen2.5-coder" and t.order == "psm"


def test_metadata_is_read_from_tokenizer_config(tmp_path):
    out = tmp_path / "tok"
    tok = make_bytelevel_tokenizer(out)  # Demi's own tokenizer trainer writes the metadata
    assert tok.fim_metadata == {"fim_family": "demi-tiny", "fim_layout": "spm"}
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("fim_family", "fim_layout"):
        del cfg[key]
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    from demi.model.tokenizer import Tokenizer

    bare = Tokenizer.from_dir(out)  # the same vocabulary, nothing declared: a Qwen-style model
    assert bare.fim_metadata == {}
    t = detect_fim(bare)
    assert t.family == "qwen2.5-coder" and t.order == "psm"
    cfg["fim_layout"] = " SPM "
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert detect_fim(Tokenizer.from_dir(out)).order == "spm"


def test_builtin_demi_tiny_declares_its_layout():
    root = Path(__file__).resolve().parents[2] / "model" / "builtin" / "demi-tiny"
    cfg = json.loads((root / "tokenizer_config.json").read_text())
    assert (cfg["fim_family"], cfg["fim_layout"]) == ("demi-tiny", "spm")


# -- a template from the family's name (the HTTP client's) ---------------------------------------


@pytest.mark.parametrize(
    "name,vocab",
    [
        ("qwen", QWEN),
        ("qwen2.5-coder", TRIMMED_QWEN),
        ("starcoder", STARCODER),
        ("starcoder2", STARCODER2),
        ("deepseek", DEEPSEEK),
    ],
)
def test_template_by_name_is_the_detected_one(name, vocab):
    from demi.assistant.fim import fim_template_for

    by_name = fim_template_for(name)
    detected = detect_fim(Vocab(vocab, "<｜end▁of▁sentence｜>" if name == "deepseek" else vocab[0]))
    assert by_name.family == detected.family and by_name.order == detected.order
    for args in ((PRE, SUF), (PRE, SUF, "pkg/a.py", "demo", OTHER)):
        assert by_name.build(*args) == detected.build(*args)
    assert set(detected.stop_strings) <= set(by_name.stop_strings) and not by_name.stop_token_ids


def test_template_by_name_text_forms():
    from demi.assistant.fim import fim_template_for

    assert fim_template_for("codellama").build(PRE, SUF) == f"<PRE> {PRE} <SUF>{SUF} <MID>"
    assert fim_template_for("codestral").build(PRE, SUF) == f"[SUFFIX]{SUF}[PREFIX]{PRE}"
    tiny = fim_template_for("demi-tiny")
    assert tiny.order == "spm" and tiny.build(PRE, SUF) == f"<|fim_suffix|>{SUF}<|fim_prefix|>{PRE}<|fim_middle|>"
    assert fim_template_for("QWEN", layout="spm").order == "spm"
    with pytest.raises(ValueError, match="unknown FIM family"):
        fim_template_for("gpt-4")
