"""Evaluation: FIM line exact match / edit similarity (golden metric values, cursor placement,
the scoring loop), and the pass@k harness (estimator, correct / wrong / endless / networked
programs in the sandbox, problem-file errors)."""

from __future__ import annotations

import json

import pytest

from demi.train.errors import ProblemFileError
from demi.train.evaluate import edit_similarity, evaluate_fim, exact_match, first_line, levenshtein, line_samples
from demi.train.passk import evaluate, load_problems, pass_at_k, program, run_program, truncate_completion


@pytest.mark.parametrize(
    "a,b,d", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)]
)
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_line_metrics_golden():
    assert exact_match("return x  ", "return x")
    assert not exact_match("return y", "return x")
    assert edit_similarity("return x", "return x") == 1.0
    assert edit_similarity("return y", "return x") == pytest.approx(1 - 1 / 8)
    assert edit_similarity("", "abcd") == 0.0
    assert edit_similarity("", "") == 1.0
    assert first_line("a = 1\nb = 2") == "a = 1"


SOURCE = """import os


def join(a, b):
    # glue two parts
    path = os.path.join(a, b)
    return path
"""


def test_line_samples_cursor_placement():
    samples = line_samples([("m.py", SOURCE)], n=100, seed=0, mid_line_rate=0.0)
    targets = {s.target for s in samples}
    assert targets == {"import os", "def join(a, b):", "path = os.path.join(a, b)", "return path"}  # no comments
    s = next(s for s in samples if s.target == "return path")
    assert s.prefix.endswith("    return path"[: -len("return path")]) and s.prefix.endswith("\n    ")
    assert s.suffix == "\n" and s.kind == "line_start"
    assert s.prefix + s.target + s.suffix == SOURCE
    mids = line_samples([("m.py", SOURCE)], n=100, seed=1, mid_line_rate=1.0)
    for m in mids:
        assert m.prefix + m.target + m.suffix == SOURCE
        if m.kind == "mid_line":
            assert m.prefix[-1].isalnum() or m.prefix[-1] == "_"  # right after a word
            assert len(m.target) >= 3
    assert any(m.kind == "mid_line" for m in mids)
    assert line_samples([("m.py", SOURCE)], 2, seed=3) == line_samples([("m.py", SOURCE)], 2, seed=3)
    assert line_samples([("e.py", "\n\n# only a comment\n")], 5) == []


def test_long_context_is_cut_at_line_boundaries():
    text = "".join(f"x{i} = {i}\n" for i in range(2000))
    s = line_samples([("big.py", text)], 1, seed=0, prefix_chars=200, suffix_chars=50)[0]
    assert len(s.prefix) <= 200 and len(s.suffix) <= 50
    assert s.suffix.endswith("\n")


def test_evaluate_fim_scores_an_oracle_and_a_bad_model():
    samples = line_samples([("m.py", SOURCE)], n=4, seed=0)
    truth = {(s.prefix, s.suffix): s.target for s in samples}
    oracle = evaluate_fim(lambda p, s, path: truth[(p, s)] + "\nnext line", samples)
    assert oracle["exact_match"] == 1.0 and oracle["edit_similarity"] == 1.0 and oracle["samples"] == 4
    bad = evaluate_fim(lambda p, s, path: "", samples)
    assert bad["exact_match"] == 0.0 and bad["edit_similarity"] == 0.0
    assert sum(v["samples"] for v in bad["by_kind"].values()) == 4


def test_pass_at_k_estimator():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - (7 * 6 * 5 * 4 * 3) / (10 * 9 * 8 * 7 * 6))
    assert pass_at_k(5, 4, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_harness_correct_wrong_endless_and_networked():
    problems = load_problems()[:3]
    assert len(problems) == 3 and all(p["task_id"].startswith("DemiTiny/") for p in problems)
    loop = "    while True:\n        pass\n"
    net = "    import socket\n    socket.create_connection(('10.255.255.1', 80), timeout=1)\n    return a + b\n"
    completions = {p["task_id"]: [p["canonical_solution"], "    return None\n"] for p in problems}
    completions[problems[0]["task_id"]] = [problems[0]["canonical_solution"], loop, net]
    res = evaluate(problems, {k: v for k, v in completions.items()}, ks=(1, 2), timeout=1.5)
    first = res["per_problem"][problems[0]["task_id"]]
    assert first["statuses"] == ["passed", "timeout", "failed"] and first["passed"] == 1
    net_run = run_program(program(problems[0], net), timeout=5)
    assert net_run.status == "failed" and "network access is disabled" in net_run.detail
    assert res["per_problem"][problems[1]["task_id"]]["statuses"] == ["passed", "failed"]
    assert res["pass@1"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert res["pass@2"] == pytest.approx((1 - 1 / 3 + 1 + 1) / 3)  # n=3, c=1: 1 - C(2,2)/C(3,2)


def test_generated_code_never_runs_in_process(tmp_path):
    marker = tmp_path / "ran"
    res = run_program(f"open({str(marker)!r}, 'w').write('x')\nimport os\nassert os.getcwd() != {str(tmp_path)!r}\n")
    assert res.passed  # it ran, elsewhere: in a subprocess with its own working directory
    assert marker.exists()
    assert run_program("raise SystemExit(3)").status == "failed"
    assert run_program("x = 'a' * (4 << 30)", memory_mb=256).status in ("failed", "error")


def test_every_builtin_canonical_solution_passes():
    problems = load_problems()
    res = evaluate(problems, {p["task_id"]: [p["canonical_solution"]] for p in problems}, timeout=5)
    assert res["pass@1"] == 1.0, res["per_problem"]


def test_truncate_completion_stops_at_the_next_top_level_statement():
    text = "    return a + b\n\n\ndef other():\n    pass\n"
    assert truncate_completion(text) == "    return a + b\n\n"
    assert program(
        {"prompt": "def f():\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}, "    return 1\n"
    ).endswith("check(f)\n")


def test_problem_file_errors(tmp_path):
    with pytest.raises(ProblemFileError, match="no such problem file"):
        load_problems(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": "p"}\n')
    with pytest.raises(ProblemFileError, match=r"bad\.jsonl:1: missing or non-string test, entry_point"):
        load_problems(bad)
    bad.write_text("not json\n")
    with pytest.raises(ProblemFileError, match="not JSON"):
        load_problems(bad)
    bad.write_text("\n")
    with pytest.raises(ProblemFileError, match="no problems"):
        load_problems(bad)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"task_id": "t", "prompt": "def f():\n", "test": "", "entry_point": "f"}) + "\n")
    assert load_problems(good)[0]["task_id"] == "t"
