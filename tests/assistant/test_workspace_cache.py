"""The workspace cache model: its n-gram statistics (counts, longest match, advancing, removal,
eviction, incremental updates), the mixing in the engine (a certain cache turns the greedy choice,
an empty one changes nothing, bit for bit) and a FIM completion on a tiny model that copies a
project-specific name only with the cache."""

from __future__ import annotations

import random

import pytest
import torch

from demi.assistant.complete import complete
from demi.assistant.document import Document
from demi.assistant.engines import InProcessEngine
from demi.assistant.token_ngrams import TokenNgrams
from demi.assistant.workspace_cache import (
    WorkspaceCache,
    WorkspacePrior,
    cache_for,
    chunk_spans,
    mix_weight,
    rechunk,
    request_hook,
)
from demi.model.engine import LocalModel
from demi.model.generate import GenerationRequest, Prior, Sampling, apply_priors, generate


class CountingEncoder:
    """One token per character (its code point); remembers every text it was asked to encode."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str]) -> list[list[int]]:
        self.seen += texts
        return [[ord(c) for c in t] for t in texts]


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


# -- n-gram statistics ---------------------------------------------------------------------------------


def test_counts_of_the_longest_match():
    grams = TokenNgrams(max_order=8)
    for chunk in ("xabcd", "yabce", "zabcd", "qbcf"):
        grams.add(ids(chunk))
    pred = grams.predict(grams.lookup(ids("bc")))
    assert pred is not None and pred.length == 2
    assert pred.counts == {ord("d"): 2, ord("e"): 1, ord("f"): 1}
    pred = grams.predict(grams.lookup(ids("zabc")))  # the longest match wins alone
    assert pred is not None and pred.length == 4 and pred.counts == {ord("d"): 1}
    pred = grams.predict(grams.lookup(ids("abc")))
    assert pred is not None and pred.length == 3 and pred.counts == {ord("d"): 2, ord("e"): 1}
    assert grams.predict(grams.lookup(ids("zz"))) is None
    assert grams.predict(grams.lookup(ids("c"))) is None  # two tokens of context at least
    assert pred.probs() == ([ord("d"), ord("e")], [2 / 3, 1 / 3])


def test_advance_follows_the_occurrences_and_looks_up_afresh():
    grams = TokenNgrams(max_order=16)
    grams.add(ids("def frobnicate(widget):"))
    grams.add(ids("x = frobnicate(gadget)"))
    m = grams.lookup(ids("= frob"))
    assert grams.predict(m).counts == {ord("n"): 1} and m.longest == 6
    for ch in "nicate(":
        m = grams.advance(m, ord(ch))
    pred = grams.predict(m)
    assert pred.length == 13 and pred.counts == {ord("g"): 1}  # "= frobnicate(" matched in the second chunk
    m = grams.advance(m, ord("w"))  # the second chunk does not go on with "w": afresh, found in the first
    pred = grams.predict(m)
    assert pred.length == len(" frobnicate(w") and pred.counts == {ord("i"): 1}
    assert m.context[-3:] == ids("e(w")
    m = grams.advance(m, ord("Z"))  # nothing goes on: no match
    assert grams.predict(m) is None and len(m) == 0


def test_max_order_caps_match_lengths():
    grams = TokenNgrams(max_order=4)
    grams.add(ids("abcdefgh"))
    m = grams.lookup(ids("abcdef"))
    assert m.longest == 4 and grams.predict(m).counts == {ord("g"): 1}
    m = grams.advance(m, ord("g"))
    assert m.longest == 4 and grams.predict(m).counts == {ord("h"): 1}


def test_removed_chunks_are_forgotten_and_compacted():
    grams = TokenNgrams()
    keep = grams.add(ids("abcd"))
    gone = [grams.add(ids("abce")) for _ in range(3)]
    assert grams.predict(grams.lookup(ids("abc"))).counts == {ord("d"): 1, ord("e"): 3}
    for slot in gone:
        grams.remove(slot)
    assert grams.tokens == 4 and grams.dead_postings == 6
    assert grams.predict(grams.lookup(ids("abc"))).counts == {ord("d"): 1}
    assert grams.dead_postings < 6  # the scan dropped the dead postings of that list
    grams.compact()
    assert grams.dead_postings == 0 and grams.live_postings == 2
    grams.remove(keep)
    grams.remove(keep)  # twice: nothing more to forget
    assert grams.tokens == 0 and grams.predict(grams.lookup(ids("abc"))) is None


def test_scan_limit_keeps_lookups_bounded():
    grams = TokenNgrams(scan_limit=5)
    for _ in range(20):
        grams.add(ids("abX"))
    assert grams.predict(grams.lookup(ids("ab"))).total == 5


def test_mix_weight_grows_with_length_and_agreement():
    grams = TokenNgrams()
    for _ in range(9):
        grams.add(ids("say hello"))
    grams.add(ids("ay hi"))
    long_one = grams.predict(grams.lookup(ids("say h")))  # 9 agree: "e"
    short = grams.predict(grams.lookup(ids("y h")))  # 10 occurrences, 2 answers
    assert mix_weight(long_one, 0.6, 8) == pytest.approx(0.6 * 9 / 10 * 4 / 7)
    assert mix_weight(short, 0.6, 8) == pytest.approx(0.6 * 10 / 12 * 2 / 7)
    assert mix_weight(short, 0.6, 8) < mix_weight(long_one, 0.6, 8)


# -- the cache of sources --------------------------------------------------------------------------------

TEXT = "".join(f"def function_{i}(x):\n    return x * {i}\n\n" for i in range(60))


def test_chunks_are_content_defined_and_split_at_the_cursor():
    spans = chunk_spans(TEXT)
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT)
    assert all(a == prev_b for (a, _), (_, prev_b) in zip(spans[1:], spans, strict=False))
    assert all(TEXT[b - 1] == "\n" for _, b in spans[:-1]) and len(spans) > 3
    edited = TEXT.replace("return x * 30\n", "return x * 30 + 1\n")
    changed = set(chunk_spans(edited)) - set(spans)
    assert len({edited[a:b] for a, b in chunk_spans(edited)} - {TEXT[a:b] for a, b in spans}) == 1
    assert changed  # the one chunk holding the edit (later ones moved but kept their text)
    cursor = TEXT.index("function_30")
    split = chunk_spans(TEXT, cursor)
    assert len(split) == len(spans) + 1 and any(b == cursor for _, b in split)


def test_rechunking_an_edit_gives_the_chunks_of_the_new_text():
    rng = random.Random(5)
    text = TEXT
    spans = chunk_spans(text)
    for _ in range(150):
        at = rng.randrange(len(text) + 1)
        cut = rng.choice([0, 0, 1, 5, 40, 400])
        insert = rng.choice(["", "x", "\n", "    pass\n", "def f():\n    return 1\n" * rng.randint(1, 9)])
        new = text[:at] + insert + text[at + cut :]
        spans = rechunk(text, spans, new)
        assert spans == chunk_spans(new)
        text = new
    assert rechunk("", [], TEXT) == chunk_spans(TEXT) and rechunk(TEXT, chunk_spans(TEXT), "") == []


def test_updates_tokenize_only_the_changed_chunks():
    enc = CountingEncoder()
    cache = WorkspaceCache(enc, budget=100_000)
    assert cache.update("a.py", TEXT)
    first = sum(map(len, enc.seen))
    assert first == len(TEXT) and cache.index.tokens == len(TEXT)
    enc.seen.clear()
    assert not cache.update("a.py", TEXT)  # the same text: nothing to do
    edited = TEXT.replace("return x * 30\n", "return x * 30 + 1\n")
    assert cache.update("a.py", edited)
    assert 0 < sum(map(len, enc.seen)) < len(TEXT) // 4
    assert cache.index.tokens == len(edited)
    pred = cache.predict(cache.lookup(ids("return x * 30")))
    assert pred.counts == {ord(" "): 1}  # the old line is gone, the new one is there
    cache.forget("a.py")
    assert cache.index.tokens == 0 and cache.names() == []


def test_the_cursor_does_not_predict_its_own_next_text():
    cache = WorkspaceCache(CountingEncoder())
    text = "value = compute_total(items)\nresult = compute_"
    cache.update("doc.py", text + "average(x)\n", cursor=len(text))
    assert cache.predict(cache.lookup(ids("result = compute_"))).counts == {ord("t"): 1}
    assert not cache.update("doc.py", text + "average(x)\n", keep_cursor=True)  # still split there
    cache.update("doc.py", text + "average(x)\n")
    assert cache.predict(cache.lookup(ids("result = compute_"))).counts == {ord("a"): 1}  # itself, unsplit


def test_eviction_keeps_the_budget_least_recently_used_and_workspace_files_first():
    cache = WorkspaceCache(CountingEncoder(), budget=1000)
    body = "x" * 300
    cache.update("open1.py", "a" + body)
    cache.update("ws1.py", "b" + body, workspace=True)
    cache.update("open2.py", "c" + body)
    assert cache.names() == ["ws1.py", "open1.py", "open2.py"]
    cache.update("open1.py", "a" + body)  # used again: most recent
    cache.update("open3.py", "d" + body)  # over the budget: the workspace file goes first
    assert cache.index.tokens <= 1000 and "ws1.py" not in cache.names()
    cache.update("open4.py", "e" + body)  # then the least recently used open document
    assert cache.names() == ["open1.py", "open3.py", "open4.py"] and cache.index.tokens <= 1000
    assert cache.evicted == 2
    cache.update("open3.py", "z" * 5000)  # one source over the budget is cut to it, and kept
    assert cache.index.tokens <= 1000 and "open3.py" in cache.names()


def test_a_workspace_file_never_replaces_the_editors_copy():
    cache = WorkspaceCache(CountingEncoder())
    cache.update("a.py", "edited in the editor")
    assert not cache.update("a.py", "old text on disk", workspace=True)
    assert cache.predict(cache.lookup(ids("edited in the "))).counts == {ord("e"): 1}
    assert cache.stats()["workspaceFiles"] == 0


# -- the mixing in the engine ------------------------------------------------------------------------------


def test_a_certain_prior_turns_the_greedy_choice_and_no_prior_changes_nothing():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    assert apply_priors(logits, ()) is logits
    assert apply_priors(logits, [Prior([2], [1.0], 0.0)]) is logits
    mixed = apply_priors(logits, [Prior([2], [1.0], 0.6)])
    assert int(mixed.argmax()) == 2 and int(logits.argmax()) == 1
    assert float(mixed.exp().sum()) == pytest.approx(1.0)
    p = logits.softmax(-1)
    assert mixed.exp()[0, 2] == pytest.approx(0.4 * p[0, 2] + 0.6)
    # only where the model hesitates: this model is sure
    sure = torch.tensor([[0.0, 9.0, 0.0, 0.0, 0.0]])
    assert apply_priors(sure, [Prior([2], [1.0], 0.6, below=0.5)]) is sure


def test_stop_tokens_keep_the_models_probability():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    p = logits.softmax(-1)
    mixed = apply_priors(logits, [Prior([3], [1.0], 0.5)], keep=torch.tensor([0])).exp()
    assert mixed[0, 0] == pytest.approx(p[0, 0])
    assert float(mixed.sum()) == pytest.approx(1.0)
    assert mixed[0, 3] == pytest.approx(0.5 * p[0, 3] + 0.5 * (1 - p[0, 0]))


@pytest.fixture(scope="module")
def lm(tiny_checkpoints) -> LocalModel:
    return LocalModel.load(str(tiny_checkpoints("qwen2")), quant="none")


def _tokens(lm: LocalModel, prompt: list[int], **fields) -> list[int]:
    gen = generate(lm.model, GenerationRequest(prompt, max_new_tokens=12, stop_ids=set(), **fields))
    out = []
    while True:
        try:
            token = next(gen)
        except StopIteration:
            return out
        if isinstance(token, int):
            out.append(token)


def test_an_empty_cache_changes_nothing_bit_for_bit(lm):
    prompt = lm.encode("def main(argv):\n    return")
    plain = _tokens(lm, prompt)
    asked: list[int] = []

    def silent(tokens):
        asked.append(len(tokens))
        return ()

    assert _tokens(lm, prompt, mix=silent) == plain
    assert asked == list(range(12))  # asked once per token, with the output so far
    empty = WorkspacePrior(WorkspaceCache(CountingEncoder()), prompt)
    assert _tokens(lm, prompt, mix=empty) == plain and empty.mixed == 0


def test_a_certain_hook_steers_greedy_decoding_and_turns_speculation_off(lm):
    prompt = lm.encode("def main(argv):\n    return")
    plain = _tokens(lm, prompt)
    forced = [t for t in lm.encode(" frobnicate_widgets(argv)") if t not in plain][:3]
    steered = _tokens(lm, prompt, mix=lambda toks: [Prior([forced[len(toks) % len(forced)]], [1.0], 1.0)])
    assert steered == [forced[i % len(forced)] for i in range(12)]
    from demi.model.generate import Run

    run = Run.of(GenerationRequest(prompt, max_new_tokens=4, speculate=4, stop_ids=set(), mix=lambda t: ()))
    gen = generate(lm.model, GenerationRequest(prompt, max_new_tokens=4, speculate=4, mix=lambda t: ()), run=run)
    list(gen)
    assert run.speculation() is None


def test_complete_copies_a_project_name_only_with_the_cache(lm):
    """A random model never writes `frobnicate_widget_total`; the file says it twice after `total = `."""
    engine = InProcessEngine(lm)
    try:
        text = (
            "def a(items):\n    total = frobnicate_widget_total(items, 3)\n    return total\n\n\n"
            "def b(items):\n    total = frobnicate_widget_total(items, 3)\n    return total\n\n\n"
            "def c(items):\n    total = "
        )
        doc = Document.from_text(text + "\n", "project.py")
        greedy = Sampling()
        off = complete(engine, doc, len(text), max_tokens=40, budget=512, sampling=greedy)
        cache = cache_for(engine, None)
        on = complete(engine, doc, len(text), max_tokens=40, budget=512, sampling=greedy, workspace_cache=cache)
        assert on.completion.startswith("frobnicate_widget_total(items, 3)"), on
        assert "frobnicate" not in off.completion and off.workspace_cache is None
        assert on.workspace_cache is not None and on.workspace_cache["mixed"] > 5
        assert on.as_json()["workspace_cache"] == on.workspace_cache
        assert request_hook(engine, WorkspaceCache(CountingEncoder()), "x.py", text, len(text), text) is None
    finally:
        engine.close()
