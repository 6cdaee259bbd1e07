"""Corpus building: licenses (SPDX logic, METADATA fields, classifiers), exact and near-duplicate
removal, bad files (clear errors or recorded skips), the manifest, per-source caps, site-packages
distributions read from dist-info, and the docstring/code pairs."""

from __future__ import annotations

import random
import re
from dataclasses import asdict

import pytest
from test_train_support import make_tree, micro_config, module_text

from demi.train import licenses, pipeline
from demi.train.corpus import (
    Document,
    build_corpus,
    directory_source,
    fit_sample_fraction,
    record_tokens,
    site_packages_sources,
)
from demi.train.dedup import Deduplicator, MinHasher, deduplicate
from demi.train.errors import CorpusError
from demi.train.fim import render
from demi.train.pairs import extract_pairs, functions, summary_of


@pytest.mark.parametrize(
    "expr,ok",
    [
        ("MIT", True),
        ("BSD-3-Clause", True),
        ("Apache-2.0 OR BSD-2-Clause", True),
        ("PSF-2.0", True),
        ("ISC", True),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("(MIT OR GPL-3.0) AND BSD-2-Clause", True),
        ("MPL-2.0", False),
        ("GPL-3.0-only", False),
        ("Apache-2.0 AND CNRI-Python", False),
        ("BSD-3-Clause AND 0BSD AND MIT AND Zlib", False),
        ("MIT AND (", False),
        ("", False),
    ],
)
def test_spdx_expressions(expr, ok):
    assert licenses.spdx_is_permissive(expr) is ok


def meta(*lines: str) -> str:
    return "Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n" + "".join(line + "\n" for line in lines)


@pytest.mark.parametrize(
    "text,spdx,ok",
    [
        (meta("License-Expression: BSD-3-Clause"), "BSD-3-Clause", True),
        (meta("License: MIT"), "MIT", True),
        (meta("License: Apache 2.0 License"), "Apache-2.0", True),
        (meta("License: Apache2.0"), "Apache-2.0", True),
        (  # no version said: every Apache license is permissive (as an unversioned "BSD" is)
            meta("Classifier: License :: OSI Approved :: Apache Software License", "License: Apache"),
            "Apache-2.0 AND Apache",
            True,
        ),
        (meta("License: Apache License"), "Apache", True),
        (meta("License: Apache-like terms of our own"), "unknown", False),
        (meta("Classifier: License :: OSI Approved :: MIT License"), "MIT", True),
        (meta("Classifier: License :: OSI Approved :: BSD License", "License: BSD"), "BSD", True),
        (
            meta("License: MPL-2.0", "Classifier: License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)"),
            "unknown",
            False,
        ),
        (meta("License: MPL-2.0 AND MIT"), "unknown", False),
        (meta("Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)"), "unknown", False),
        (meta("License: UNKNOWN"), "unknown", False),
        # a License field holding the whole license text: read by its wording, not its first line
        (
            meta(
                "License: Apache License",
                "                                   Version 2.0, January 2004",
                "Classifier: License :: OSI Approved :: Apache Software License",
            ),
            "Apache-2.0",
            True,
        ),
        (
            meta(
                "License: Copyright (c) 2025 Somebody",
                "        ",
                "        Permission is hereby granted, free of charge, to any person obtaining a copy",
                "Classifier: License :: OSI Approved :: MIT License",
            ),
            "MIT",
            True,
        ),
        (
            meta(
                "License: Copyright (c) 2015, A Project",
                "        ",
                "        Redistribution and use in source and binary forms",
            ),
            "BSD",
            True,
        ),
        (meta("License: MIT License", "        ", "        Copyright (c) 2020 Somebody"), "MIT", True),
        (  # a copyright line alone names no license
            meta("License: Copyright (c) 2015, A Project", "Classifier: License :: OSI Approved :: BSD License"),
            "OSI Approved :: BSD License; Copyright (c) 2015, A Project",
            False,
        ),
        (  # a full text that grants the GNU GPL's terms stays out, whatever else it says
            meta(
                "License: Copyright (c) 2020 Somebody",
                "        Permission is hereby granted, free of charge, under the GNU General Public License",
            ),
            "unknown",
            False,
        ),
        (
            meta("Classifier: License :: DFSG approved", "Classifier: License :: OSI Approved :: MIT License"),
            "MIT",
            True,
        ),
        (
            meta("Classifier: License :: OSI Approved :: Python Software Foundation License", "License: PSFL"),
            "PSF-2.0",
            True,
        ),
        (meta(), "unknown", False),
    ],
)
def test_metadata_licenses(text, spdx, ok):
    lic = licenses.from_metadata(text)
    assert (lic.spdx, lic.permissive) == (spdx, ok)


def test_license_file_detection(tmp_path):
    make_tree(tmp_path)
    assert directory_source(tmp_path).license.spdx == "MIT"
    (tmp_path / "LICENSE").write_text("GNU GENERAL PUBLIC LICENSE\nVersion 3\n")
    src = directory_source(tmp_path)
    assert not src.license.permissive
    assert directory_source(tmp_path, license="Apache-2.0").license.permissive


def test_exact_and_near_duplicates():
    base = module_text(1)
    near = base.replace("return total", "return total  # the end")  # one small edit
    other = module_text(2).replace("groups", "buckets").replace("items", "things").replace("total", "acc")
    texts = [base, base.replace("\n", "\r\n") + "\n\n", near, other]
    res = deduplicate(texts, near_threshold=0.8)
    assert res.keep == [0, 3]
    assert res.exact == [(1, 0)]
    assert [(a, b) for a, b, _ in res.near] == [(2, 0)] and res.near[0][2] > 0.8
    assert deduplicate(texts, near_threshold=None).keep == [0, 2, 3]


def test_tiny_files_are_only_deduplicated_exactly():
    res = deduplicate(["from .a import b\n", "from .a import c\n"], near_threshold=0.5)
    assert res.keep == [0, 1]


def test_build_corpus_manifest_and_split(tmp_path):
    make_tree(tmp_path, files=12)
    (tmp_path / "pkg" / "copy.py").write_text(module_text(0))  # exact duplicate
    (tmp_path / "pkg" / "near.py").write_text(module_text(0).replace("return total", "return total  # sum"))
    corpus = build_corpus([directory_source(tmp_path, version="1.2")], heldout_fraction=0.3, seed=0)
    m = corpus.manifest
    assert (m["dedup"]["exact_removed"], m["dedup"]["near_removed"]) == (1, 1)
    assert m["files"] == 12 == len(corpus.train) + len(corpus.heldout)
    assert m["heldout"] == sorted(d.key for d in corpus.heldout) and corpus.heldout
    src = m["sources"][0]
    assert (src["version"], src["license"]["spdx"], src["files"]) == ("1.2", "MIT", 12)
    assert m["shippable"] is True
    record_tokens(corpus, lambda texts: [len(t) // 4 for t in texts])
    assert m["sources"][0]["tokens"] == m["tokens"] > 0


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no python here")
    with pytest.raises(CorpusError, match="empty corpus"):
        build_corpus([directory_source(tmp_path)])
    with pytest.raises(CorpusError, match="no such corpus directory"):
        directory_source(tmp_path / "missing")


def test_binary_and_non_utf8_files(tmp_path):
    make_tree(tmp_path, files=3)
    (tmp_path / "pkg" / "blob.py").write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(CorpusError, match=r"blob\.py: binary file.*--skip-bad-files"):
        build_corpus([directory_source(tmp_path)])
    (tmp_path / "pkg" / "blob.py").write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        build_corpus([directory_source(tmp_path)])
    corpus = build_corpus([directory_source(tmp_path)], on_bad="skip", heldout_fraction=0)
    assert len(corpus.train) == 3
    assert corpus.manifest["skipped"][0]["file"].endswith("pkg/blob.py")


def test_generated_and_huge_files_are_skipped_not_fatal(tmp_path):
    make_tree(tmp_path, files=2)
    (tmp_path / "pkg" / "table.py").write_text("DATA = [" + "1, " * 600 + "]\n")
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * 1000)
    corpus = build_corpus([directory_source(tmp_path)], heldout_fraction=0, max_bytes=5000)
    reasons = {s["file"].rsplit("/", 1)[1]: s["reason"] for s in corpus.manifest["skipped"]}
    assert set(reasons) == {"table.py", "big.py"} and "generated" in reasons["table.py"]


def test_license_filter_and_caps(tmp_path):
    ok, bad = make_tree(tmp_path / "ok", files=6), make_tree(tmp_path / "gpl", files=4, license_text=None, first=6)
    sources = [directory_source(ok), directory_source(bad)]
    mixed = build_corpus(sources, heldout_fraction=0)
    assert mixed.manifest["shippable"] is False and len(mixed.train) == 10
    only = build_corpus(sources, permissive_only=True, heldout_fraction=0)
    assert {d.source for d in only.train} == {"ok"} and only.manifest["shippable"] is True
    assert "not permissive" in only.manifest["sources"][1]["excluded"]
    with pytest.raises(CorpusError, match="permissive"):
        build_corpus([directory_source(bad)], permissive_only=True)
    capped = build_corpus(sources, heldout_fraction=0, max_source_bytes={"gpl": 2000})
    assert sum(d.source == "gpl" for d in capped.train) < 4 and "gpl" in capped.manifest["capped"]


def test_site_packages_distributions(tmp_path):
    site = tmp_path / "site"
    for name, lic in (("goodpkg", "License-Expression: MIT"), ("badpkg", "License: MPL-2.0")):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(module_text(len(name)))
        info = site / f"{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(meta(lic).replace("Name: pkg", f"Name: {name}"))
        (info / "RECORD").write_text(
            f"{name}/__init__.py,sha256=x,1\n{name}-1.0.dist-info/METADATA,,\n../../bin/tool,,\n"
        )
    found = {s.name: s for s in site_packages_sources(site)}
    assert set(found) == {"goodpkg", "badpkg"}
    assert found["goodpkg"].license.permissive and not found["badpkg"].license.permissive
    corpus = build_corpus(list(found.values()), permissive_only=True, heldout_fraction=0)
    assert [d.key for d in corpus.train] == ["goodpkg/goodpkg/__init__.py"]


def test_docstring_pairs():
    doc = Document("src", "pkg/m.py", module_text(4))
    fns = {f.name: f for f in functions(doc)}
    assert set(fns) == {"paths4_total", "paths4_groups", "get"}
    f = fns["paths4_total"]
    assert f.summary == "Return the sum of values times scale."
    assert f.signature == "paths4_total(values, scale=1.0)"
    assert '"""' not in f.code_without_doc and f.code_without_doc.startswith("def paths4_total(")
    samples = extract_pairs([doc], seed=0)
    assert len(samples) == 6
    texts = [render(s) for s in samples]
    explain = next(t for t in texts if "Return the sum of values times scale.<|im_end|>" in t)
    assert explain.count("<|im_start|>") in (2, 3) and explain.endswith("<|im_end|>\n<|endoftext|>")
    assert "<|im_start|>assistant\n```python\ndef paths4_total" in "".join(texts)
    assert summary_of("x") is None and summary_of("f(a, b) -> int") is None
    assert summary_of(">>> f()\n1") is None


def test_pairs_are_deterministic():
    docs = [Document("s", f"m{i}.py", module_text(i)) for i in range(5)]
    assert [render(s) for s in extract_pairs(docs, seed=7)] == [render(s) for s in extract_pairs(docs, seed=7)]
    random.seed(0)  # the global RNG is not used
    assert extract_pairs(docs, seed=7) == extract_pairs(docs, seed=7)


def test_a_batch_hashes_each_text_as_if_alone():
    """Grams never cross from one text into the next when texts are fingerprinted together."""
    texts = [module_text(i) for i in range(5)] + ["x = 1\n", module_text(3)[:400]]
    dedup = Deduplicator()
    together = dedup.fingerprints(texts)
    for text, fp in zip(texts, together):
        (alone,) = dedup.fingerprints([text])
        assert fp.exact == alone.exact
        assert (fp.signature is None) == (alone.signature is None)
        assert fp.signature is None or bool((fp.signature == alone.signature).all())
    assert together[5].signature is None  # too few 5-grams: exact deduplication only


def test_signature_agreement_estimates_the_jaccard_similarity():
    """One-permutation MinHash with densification: over many seeds, the share of agreeing bins
    centres on the true Jaccard similarity of the two files' 5-gram sets, with MinHash's spread."""
    a = module_text(1)
    b = a.replace("total", "acc").replace("groups", "buckets")
    true = _jaccard(a, b)
    assert 0.3 < true < 0.9
    estimates = []
    for seed in range(60):
        sa, sb = MinHasher(128, seed).signatures([a, b])
        estimates.append(float((sa == sb).float().mean()))
    mean = sum(estimates) / len(estimates)
    spread = (true * (1 - true) / 128) ** 0.5
    assert abs(mean - true) < 3 * spread / len(estimates) ** 0.5 + 0.01
    assert max(abs(e - true) for e in estimates) < 5 * spread


def _jaccard(a: str, b: str) -> float:
    def grams(t: str) -> set[tuple[bytes, ...]]:
        toks = re.findall(rb"\w+|[^\w\s]", t.encode())
        return {tuple(toks[i : i + 5]) for i in range(len(toks) - 4)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_the_corpus_streams_into_a_sink(tmp_path):
    make_tree(tmp_path, files=8)
    (tmp_path / "pkg" / "copy.py").write_text(module_text(0))
    collected = build_corpus([directory_source(tmp_path)], heldout_fraction=0.3)
    got: list[tuple[str, bool]] = []

    class Sink:
        def add(self, doc, heldout):
            got.append((doc.key, heldout))

    streamed = build_corpus([directory_source(tmp_path)], heldout_fraction=0.3, sink=Sink())
    assert not streamed.train and not streamed.heldout
    assert sorted(got) == sorted([(d.key, False) for d in collected.train] + [(d.key, True) for d in collected.heldout])
    assert streamed.manifest == collected.manifest


def test_a_capped_source_reads_only_what_fits_and_duplicates_give_room_back(tmp_path):
    first = make_tree(tmp_path / "first", files=3)
    big = make_tree(tmp_path / "big", files=10)  # modules 0-2 repeat the first source's
    size = len(module_text(5).encode())
    cap = 6 * size
    corpus = build_corpus(
        [directory_source(first), directory_source(big)], heldout_fraction=0, max_source_bytes={"big": cap}
    )
    big_entry = corpus.manifest["sources"][1]
    on_disk = sum(p.stat().st_size for p in (big / "pkg").glob("*.py"))
    assert big_entry["bytes"] <= cap and big_entry["files"] >= 5  # duplicates took no room
    assert corpus.manifest["capped"]["big"] > 0
    # what was kept, what duplicated the first source and what the cap left unread add up
    dup = corpus.manifest["dedup"]["exact_removed"]
    assert big_entry["files"] + dup + round(corpus.manifest["capped"]["big"] / size) == 10
    assert {d.text for d in corpus.train if d.source == "big"}.isdisjoint({module_text(i) for i in range(3)})
    assert on_disk > cap


def test_files_past_a_sources_cap_are_never_read(tmp_path):
    src = make_tree(tmp_path / "src", files=6)
    (src / "pkg" / "zz_bad.py").write_bytes(b"\x00binary" * 2000)  # larger than any room left
    corpus = build_corpus([directory_source(src)], heldout_fraction=0, max_source_bytes=5 * len(module_text(1)))
    assert corpus.manifest["skipped_count"] == 0 and "src" in corpus.manifest["capped"]


def test_a_prepared_run_streams_its_snapshot_and_leaves_none_when_the_build_fails(tmp_path):
    src = make_tree(tmp_path / "src", files=10)
    spec = pipeline.RunSpec(model=asdict(micro_config(420)), vocab_size=420, corpus={"heldout_fraction": 0.2})
    manifest = pipeline.prepare_run(tmp_path / "run", spec, [directory_source(src)], log=lambda *_: None)
    collected = build_corpus([directory_source(src)], heldout_fraction=0.2)
    for name, docs in (("train", collected.train), ("heldout", collected.heldout)):
        assert pipeline._read_docs(tmp_path / "run" / "corpus" / f"{name}.jsonl.gz") == docs
    assert manifest["tokens"] == sum(e["tokens"] for e in manifest["sources"] if e["files"]) > 0
    assert 1 < manifest["tokenizer"]["chars_per_token"] < 8

    (src / "pkg" / "zz.py").write_bytes(b"\x00binary")
    with pytest.raises(CorpusError, match="binary"):
        pipeline.prepare_run(tmp_path / "bad", spec, [directory_source(src)], log=lambda *_: None)
    assert not list((tmp_path / "bad" / "corpus").iterdir())  # no snapshot, not even a partial one


def test_a_large_corpus_has_its_tokens_estimated_from_a_sample_and_says_so(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", files=30)
    spec = pipeline.RunSpec(model=asdict(micro_config(420)), vocab_size=420, corpus={"heldout_fraction": 0.0})
    exact = pipeline.prepare_run(tmp_path / "exact", spec, [directory_source(src)], log=lambda *_: None)
    monkeypatch.setattr(pipeline, "EXACT_TOKEN_COUNT_BYTES", 0)
    said: list[str] = []
    estimated = pipeline.prepare_run(tmp_path / "sampled", spec, [directory_source(src)], log=said.append)
    assert "tokens_estimated" not in exact
    assert estimated["tokens_estimated"] == {"sample_every": 10, "sources_sampled": 1, "sources": 1}
    assert abs(estimated["tokens"] - exact["tokens"]) < 0.1 * exact["tokens"]
    assert any("one file in 10 tokenized" in line for line in said)


def test_a_corpus_size_budget_keeps_the_same_share_of_every_source(tmp_path):
    small = make_tree(tmp_path / "small", files=8)
    big = make_tree(tmp_path / "big", files=40, first=8)
    sources = [directory_source(small), directory_source(big)]
    sizes = [sum(p.stat().st_size for p in s.files) for s in sources]
    budget = sum(sizes) // 2
    share = fit_sample_fraction(sources, None, budget)
    assert share is not None and abs(share - 0.5) < 1e-6
    assert fit_sample_fraction(sources, None, sum(sizes)) is None  # it fits as it is
    # a source's own cap holds after the draw: the others' share grows to fill the budget
    capped = fit_sample_fraction(sources, {"big": sizes[0]}, int(sizes[0] * 1.8))
    assert capped is not None and abs(capped - 0.8) < 0.01

    corpus = build_corpus(sources, heldout_fraction=0, max_total_bytes=budget)
    m = corpus.manifest
    kept = {e["name"]: e["files"] for e in m["sources"]}
    assert m["sample_fraction"] == share and 0.25 * sum(sizes) < m["bytes"] < 0.75 * sum(sizes)
    assert 0 < kept["small"] < 8 and 8 < kept["big"] < 32  # both sampled, about alike
    again = build_corpus(sources, heldout_fraction=0, max_total_bytes=budget)
    assert [d.key for d in again.train] == [d.key for d in corpus.train]  # the draw is stable
    with pytest.raises(CorpusError, match="more than 0"):
        build_corpus(sources, max_total_bytes=0)


def test_a_snapshot_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", files=10)
    spec = pipeline.RunSpec(model=asdict(micro_config(420)), vocab_size=420, corpus={"heldout_fraction": 0.2})
    real_open = pipeline.gzip.open

    class DiskFull:
        def __init__(self, *args, **kwargs):
            self.inner = real_open(*args, **kwargs)
            self.writes = 0

        def write(self, text):
            self.writes += 1
            if self.writes > 3:
                raise OSError(28, "No space left on device")
            return self.inner.write(text)

        def close(self):
            self.inner.close()

    monkeypatch.setattr(pipeline.gzip, "open", DiskFull)
    with pytest.raises(CorpusError, match="cannot write the corpus snapshot: .*No space left"):
        pipeline.prepare_run(tmp_path / "run", spec, [directory_source(src)], log=lambda *_: None)
    assert not list((tmp_path / "run" / "corpus").iterdir())
