"""Training data: the FIM transform (golden cases, both orders, character level, rates), its
exact agreement with the prompt `assistant/fim.py` builds for demi-tiny, segment encoding,
packing, epochs as a pure function of (seed, epoch), and the held-out split by file."""

from __future__ import annotations

import random

import pytest
import torch
from test_train_support import make_tokenizer, module_text

from demi.assistant.fim import detect_fim
from demi.train.corpus import Document, is_heldout
from demi.train.data import DataOptions, PackedData, Position, SegmentEncoder, pack
from demi.train.fim import (
    FimOptions,
    Special,
    chunk_text,
    file_head,
    fim_segments,
    fim_transform,
    line_split_points,
    render,
    split_points,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_psm_and_spm_golden():
    psm = fim_segments("def f(", "x", "):\n", "psm")
    spm = fim_segments("def f(", "x", "):\n", "spm")
    assert render(psm) == "<|fim_prefix|>def f(<|fim_suffix|>):\n<|fim_middle|>x<|endoftext|>"
    assert render(spm) == "<|fim_suffix|>):\n<|fim_prefix|>def f(<|fim_middle|>x<|endoftext|>"


class FixedRng(random.Random):
    """Replays given random() and randint() results."""

    def __init__(self, floats, ints):
        super().__init__(0)
        self.floats, self.ints = list(floats), list(ints)

    def random(self):
        return self.floats.pop(0)

    def randint(self, a, b):
        return self.ints.pop(0)


def test_fim_transform_cuts_at_characters_inside_words():
    text = "print(value)\n"
    # transform (0.1 < 0.5), PSM (0.9 >= 0.5), cuts at 3 and 9: "pri" | "nt(val" | "ue)\n"
    s = fim_transform(text, FixedRng([0.1, 0.9], [9, 3]), FimOptions(rate=0.5, spm_rate=0.5))
    assert render(s) == "<|fim_prefix|>pri<|fim_suffix|>ue)\n<|fim_middle|>nt(val<|endoftext|>"
    s = fim_transform(text, FixedRng([0.1, 0.2], [3, 9]), FimOptions(rate=0.5, spm_rate=0.5))
    assert render(s) == "<|fim_suffix|>ue)\n<|fim_prefix|>pri<|fim_middle|>nt(val<|endoftext|>"
    plain = fim_transform(text, FixedRng([0.7, 0.2], [3, 9]), FimOptions(rate=0.5, spm_rate=0.5))
    assert render(plain) == text + "<|endoftext|>"


def test_fim_pieces_always_reassemble_the_document():
    rng = random.Random(0)
    text = module_text(3)
    for _ in range(200):
        s = fim_transform(text, rng, FimOptions(rate=1.0, spm_rate=0.5))
        parts = {s[i].token: s[i + 1] for i in range(0, 6, 2)}
        assert parts["<|fim_prefix|>"] + parts["<|fim_middle|>"] + parts["<|fim_suffix|>"] == text
    a, b = split_points(0, rng)
    assert (a, b) == (0, 0)


def test_fim_rates_are_respected():
    rng = random.Random(1)
    out = [fim_transform("abcdef\n", rng, FimOptions(rate=0.5, spm_rate=0.25)) for _ in range(4000)]
    fim = [s for s in out if len(s) > 2]
    spm = [s for s in fim if s[0] == Special("<|fim_suffix|>")]
    assert abs(len(fim) / len(out) - 0.5) < 0.04
    assert abs(len(spm) / len(fim) - 0.25) < 0.04
    assert all(len(s) == 2 for s in (fim_transform("x", rng, FimOptions(rate=0.0)) for _ in range(50)))
    with pytest.raises(ValueError):
        FimOptions(rate=1.5)


def test_fim_draws_do_not_depend_on_the_outcome():
    """Whether a document is transformed never shifts the next document's random draws."""
    a, b = random.Random(5), random.Random(5)
    fim_transform("some text\n", a, FimOptions(rate=1.0))
    fim_transform("some text\n", b, FimOptions(rate=0.0))
    assert a.random() == b.random()


def _parts(sample):
    return {sample[i].token: sample[i + 1] for i in range(0, 6, 2)}


def test_line_holes_run_from_a_cursor_to_a_line_end():
    """An editor's hole: it starts in a non-blank line (at the indentation, after a word or
    anywhere in it) and ends where a line does, so the suffix starts with the line break."""
    text = module_text(2)
    lines = text.split("\n")
    rng = random.Random(3)
    kinds = {"indent": 0, "word": 0, "multi": 0}
    for _ in range(600):
        a, b = line_split_points(text, rng)
        assert 0 <= a <= b <= len(text)
        assert b == len(text) or text[b] == "\n"
        line_start = text.rfind("\n", 0, a) + 1
        line = text[line_start : text.find("\n", a) if "\n" in text[a:] else len(text)]
        assert line.strip(), "a hole starts in a non-blank line"
        indent = len(line) - len(line.lstrip())
        assert a >= line_start + indent
        kinds["indent"] += a == line_start + indent
        kinds["word"] += a > line_start + indent and (text[a - 1].isalnum() or text[a - 1] == "_")
        kinds["multi"] += text[a:b].count("\n") > 0
    assert kinds["indent"] > 200 and kinds["word"] > 200 and 100 < kinds["multi"] < 300
    assert line_split_points("", rng) == (0, 0) and line_split_points("\n\n  \n", random.Random(0))[1] <= 5
    assert len(lines) > 10


def test_line_rate_mixes_both_kinds_and_keeps_the_draws_fixed():
    text = module_text(4)
    rng = random.Random(7)
    opts = FimOptions(rate=1.0, spm_rate=0.5, line_rate=0.5)
    samples = [fim_transform(text, rng, opts) for _ in range(400)]
    for s in samples:
        parts = _parts(s)
        assert parts["<|fim_prefix|>"] + parts["<|fim_middle|>"] + parts["<|fim_suffix|>"] == text
    ends_at_line = sum(_parts(s)["<|fim_suffix|>"][:1] in ("\n", "") for s in samples)
    assert 180 < ends_at_line < 300  # half are line holes, and a few uniform cuts land there too
    a, b = random.Random(5), random.Random(5)
    fim_transform(text, a, opts)
    fim_transform(text, b, FimOptions(rate=0.0, line_rate=0.5))
    assert a.random() == b.random()
    # without line holes the draws are those runs before the option made (a shipped run resumes)
    c, d = random.Random(9), random.Random(9)
    fim_transform(text, c, FimOptions(rate=1.0, line_rate=0.0))
    d.random(), d.random(), split_points(len(text), d)
    assert c.random() == d.random()
    with pytest.raises(ValueError):
        FimOptions(line_rate=2.0)


@pytest.mark.parametrize("with_repo", [False, True])
def test_training_layout_is_the_inference_prompt(tok, with_repo):
    """assistant/fim.py's demi-tiny prompt is exactly a training sample cut at <|fim_middle|>."""
    tpl = detect_fim(tok)
    assert tpl is not None and tpl.family == "demi-tiny" and tpl.order == "spm"
    prefix, middle, suffix = "def area(r):\n    return 3.14", " * r", " * r\n\nprint(area(2))\n"
    others = [("pkg/util.py", "X = 1\n"), ("pkg/b.py", "def g():\n    pass")] if with_repo else []
    repo = "demo" if with_repo else None
    prompt = tpl.build(prefix, suffix, path="pkg/geo.py", repo=repo, other_files=others)
    sample = file_head("pkg/geo.py", repo, others) + fim_segments(prefix, middle, suffix, "spm")
    text = render(sample)
    assert text == prompt + middle + "<|endoftext|>"
    # And token by token: the training encoding of the sample starts with the prompt's ids.
    enc = SegmentEncoder(tok)
    ids = enc.encode([sample])[0]
    prompt_ids = tok.encode(prompt)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert ids[-1] == tok.token_to_id("<|endoftext|>")


def test_psm_layout_matches_the_qwen_style_prompt(tok):
    tpl = detect_fim(tok)
    psm = type(tpl)(**{**tpl.__dict__, "suffix_first": False})
    assert (
        render(file_head("a.py") + fim_segments("x = ", "1", "\n", "psm"))
        == psm.build("x = ", "\n", path="a.py") + "1<|endoftext|>"
    )


def test_special_token_text_in_a_file_stays_text(tok):
    enc = SegmentEncoder(tok)
    ids = enc.encode([["s = '<|endoftext|>'\n", Special("<|endoftext|>")]])[0]
    eot = tok.token_to_id("<|endoftext|>")
    assert ids.count(eot) == 1 and ids[-1] == eot
    assert tok.decode(ids[:-1]) == "s = '<|endoftext|>'\n"


def test_pack_golden():
    rows = pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=3)
    assert rows.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]  # 9 tokens: 2 rows of 3 (+1 target), 8-9 dropped
    assert pack([[1]], 4).shape == (0, 5)


def test_chunk_text_splits_long_files_at_lines():
    text = "".join(f"line {i}\n" for i in range(100))
    chunks = chunk_text(text, 100)
    assert "".join(chunks) == text and all(len(c) <= 100 for c in chunks)
    assert chunk_text("short\n", 100) == ["short\n"]


def _docs(n=10):
    return [Document("src", f"pkg/m{i}.py", module_text(i)) for i in range(n)]


def test_epochs_are_reproducible_and_resume_by_position(tok):
    opts = DataOptions(seq_len=32, seed=3)
    a, b = PackedData(_docs(), tok, opts), PackedData(_docs(), tok, opts)
    assert torch.equal(a.rows(0), b.rows(0))
    assert not torch.equal(a.rows(0)[:4], a.rows(1)[:4])  # FIM and order change per epoch
    n = len(a.rows(0))
    x1, p1 = a.take(Position(), n - 2)
    x2, p2 = a.take(p1, 5)  # crosses into epoch 1
    assert p2 == Position(1, 3)
    y, _ = b.take(Position(), n + 3)
    assert torch.equal(torch.cat([x1, x2]), y)
    assert a.rows(0).dtype == torch.int32 and x1.dtype == torch.long


def test_repo_and_path_headers_appear(tok):
    data = PackedData(_docs(), tok, DataOptions(seq_len=64, repo_rate=1.0, fim_rate=1.0, spm_rate=1.0))
    texts = [render(s) for s in data.epoch_samples(0)]
    assert all(t.startswith("<|repo_name|>src\n<|file_sep|>pkg/") for t in texts)
    assert all("<|fim_suffix|>" in t and t.endswith("<|endoftext|>") for t in texts)


def test_heldout_split_is_by_file_and_stable():
    keys = [f"src/pkg/file{i}.py" for i in range(4000)]
    held = [k for k in keys if is_heldout(k, 0.1, seed=0)]
    assert 300 < len(held) < 500
    assert held == [k for k in keys if is_heldout(k, 0.1, seed=0)]  # stable
    assert [k for k in keys[:2000] if is_heldout(k, 0.1)] == [k for k in held if k in keys[:2000]]  # per file
    assert not any(is_heldout(k, 0.0) for k in keys)
