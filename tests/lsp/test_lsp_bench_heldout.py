"""benchmarks/lsp_bench.py's --heldout-run file choice: code from packages the model never trained
on, one real module a package (the benchmark itself runs end to end in test_lsp_model.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    return load_script(ROOT / "benchmarks" / "lsp_bench.py")


def code(n: int, tag: str) -> str:
    return "".join(f"def {tag}_{i}(x):\n    return x + {i}\n\n\n" for i in range(n))


def test_heldout_run_files_skip_the_models_own_packages_and_take_one_real_module_each(tmp_path):
    bench = load_bench()
    run = tmp_path / "run"
    (run / "corpus").mkdir(parents=True)
    docs = [
        ("fresh-pkg", "fresh_pkg/small.py", code(150, "a")),  # ~5 KB
        ("fresh-pkg", "fresh_pkg/big.py", code(400, "b")),  # ~13 KB: the one taken
        ("fresh-pkg", "fresh_pkg/table.py", code(3000, "c")),  # over 60 KB: generated-sized, left
        ("fresh-pkg", "fresh_pkg/notes.txt", code(400, "d")),
        ("Seen_Pkg", "seen_pkg/mod.py", code(400, "e")),  # the model trained on it (as seen-pkg)
        ("tiny-pkg", "tiny_pkg/__init__.py", "x = 1\n"),  # nothing of 4 KB or more
    ]
    with gzip.open(run / "corpus" / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
        for source, path, text in docs:
            f.write(json.dumps({"source": source, "path": path, "text": text}) + "\n")
    model = tmp_path / "model"
    model.mkdir()
    manifest = {"sources": [{"name": "seen-pkg", "files": 3}, {"name": "fresh-pkg", "files": 0}]}
    (model / "manifest.json").write_text(json.dumps(manifest))

    files = bench.run_heldout_files(run, model, tmp_path / "work", count=5)
    assert [p.relative_to(tmp_path / "work" / "heldout-run").as_posix() for p in files] == [
        "fresh-pkg/fresh_pkg/big.py"
    ]
    assert files[0].read_text() == code(400, "b")
