"""Speculative decoding from the prompt (prompt lookup), measured.

Part 1 (`tasks`): `demi refactor` and `demi explain` generations with the built-in demi-tiny on
examples/*.py and a few held-out Python standard library modules, greedy, plain (speculate=0)
against speculative (speculate=k), interleaved and repeated (the best time of each counts): tokens
per second, acceptance, tokens per model step, and whether the output is token-for-token the same.

With `--oracle`, every speculative run is also timed with perfect drafts: the plain run's own next
tokens stand in for prompt lookup's, so every draft is accepted. That is the ceiling any draft
source (prompt lookup, a datastore, a draft model with free drafts) can reach with this model on
this machine: what is left is the price of a check's rows against lone steps.

Part 2 (`verify`): on a random-weight model of the Qwen2.5-Coder-0.5B shape (`demi bench`'s cached
preset, int8), the time of one forward pass over k+1 tokens at an offset into a 512-token cache
against one decode step: what a speculative step costs when every draft is rejected.

    .venv/bin/python benchmarks/speculation.py tasks --k 2 4 7 --repeat 2
    .venv/bin/python benchmarks/speculation.py tasks --k 2 4 7 --repeat 2 --fixed 256
    .venv/bin/python benchmarks/speculation.py tasks --k 4 8 16 --repeat 3 --oracle
    .venv/bin/python benchmarks/speculation.py tasks --k 8 --repeat 3 --heldout 120
    .venv/bin/python benchmarks/speculation.py verify --k 4 8 16
    .venv/bin/python benchmarks/speculation.py all --json out.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
HELD_OUT = ["textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "graphlib.py"]
INSTRUCTIONS = ["add type hints", "rename the variables to clearer names"]


class Recorder:
    """An engine that remembers the last Completion its `chat` returned (the tasks keep only text).

    With `fixed`, the task's chat prompt runs for exactly that many tokens, end-of-turn and stop
    strings ignored: demi-tiny ends most answers after 5 to 30 tokens, too short to time."""

    def __init__(self, engine: Any, fixed: int = 0):
        self.engine, self.fixed = engine, fixed
        self.last: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def chat(self, prompt: Any, on_text: Any = None, **kwargs: Any) -> Any:
        self.engine.local.prefix_cache.clear()  # every run prefills its whole prompt
        if not self.fixed:
            self.last = self.engine.chat(prompt, on_text=on_text, **kwargs)
            return self.last
        from demi.assistant.generation import build_chat

        built = build_chat(self.engine.local.tokenizer, prompt)
        kwargs.update(max_new_tokens=self.fixed, stop_ids=set(), speculate=self.engine.speculate)
        self.last = self.engine.complete(built.prompt, on_text=on_text, **kwargs)
        return self.last


def symbols(path: Path, per_file: int) -> list[str]:
    """Top-level functions and classes of 6 to 45 lines, the first `per_file` of them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and 6 <= (node.end_lineno or 0) - node.lineno + 1 <= 45:
            out.append(node.name)
    return out[:per_file]


def task_cases(per_file: int, heldout: int = 0) -> list[tuple[Path, str, str]]:
    """Explain and refactor on the first functions of examples/ and HELD_OUT; with `heldout`, also
    explain on that many functions drawn from the files demi-tiny's corpus held out (group
    "explain-heldout": typical answers, where the first group's are dominated by two that loop)."""
    files = sorted((ROOT / "examples").glob("*.py")) + [STDLIB / f for f in HELD_OUT if (STDLIB / f).is_file()]
    cases = []
    for path in files:
        for i, sym in enumerate(symbols(path, per_file)):
            cases.append((path, sym, "explain"))
            cases.append((path, sym, "refactor:" + INSTRUCTIONS[i % len(INSTRUCTIONS)]))
    if heldout:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from heldout_functions import functions, heldout_files, sample

        drawn = sample(functions(heldout_files(), True), heldout)
        cases += [(f.path, f.symbol.qualname, "explain-heldout") for f in drawn]
    return cases


def run_case(engine: Recorder, path: Path, symbol: str, task: str, k: int) -> Any:
    """The engine's Completion of the task's generation, with `.shown` set to what the user gets:
    the streamed explanation, or the rewrite's diff (or the reason it was refused)."""
    from demi.assistant.document import Document
    from demi.assistant.explain import explain
    from demi.assistant.refactor import propose

    doc = Document.load(path)
    engine.engine.speculate = k
    engine.last = None
    pieces: list[str] = []
    if task.startswith("explain"):
        explain(engine, doc, symbol=symbol, lead="facts", on_text=pieces.append)
    else:
        try:
            # the model's own rewrite, one greedy reply: static refactors need no model and later
            # candidates are sampled, so neither would time greedy decoding
            pieces.append(propose(engine, doc, task.split(":", 1)[1], symbol=symbol, static=False, candidates=1).diff)
        except Exception as exc:  # noqa: BLE001 - a rewrite demi-tiny got wrong still measured its generation
            pieces.append(f"refused: {exc}")
    engine.last.shown = "".join(pieces)
    return engine.last


class _PerfectDrafts:
    """A stand-in for `lookup.PromptLookup` that proposes the tokens a recorded plain run went on
    to make: what a draft source that is never wrong would propose."""

    future: list[int] = []

    def __init__(self, tokens: Any = (), **_: Any) -> None:
        self.made = 0
        self.price = None  # every draft up to k is checked, whatever a check costs

    def extend(self, tokens: Any) -> None:
        self.made += len(tuple(tokens))

    def propose(self, k: int) -> list[int]:
        return self.future[self.made : self.made + k] if k > 0 else []

    def settle(self, drafted: int, kept: int) -> None:
        pass


@contextlib.contextmanager
def perfect_drafts(future: list[int]) -> Iterator[None]:
    """Speculative runs inside draft `future` (a plain run's token ids) instead of looking up the
    prompt; the engine's own decode loop, checks and acceptance are unchanged."""
    from demi.model import generate

    _PerfectDrafts.future = list(future)
    saved = generate.PromptLookup
    generate.PromptLookup = _PerfectDrafts  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        generate.PromptLookup = saved  # type: ignore[misc]


def same_output(plain: Any, spec: Any) -> bool:
    """Greedy speculation must give the user what plain decoding gives, and the same tokens: equal
    token ids up to the shorter run (a stop requested on the text, such as the loop cutter's, lands
    after the step in flight, which holds several tokens when drafts were accepted)."""
    n = min(len(plain.token_ids), len(spec.token_ids))
    return plain.shown == spec.shown and plain.token_ids[:n] == spec.token_ids[:n]


def tasks(
    ks: list[int], repeat: int, per_file: int, model: str, fixed: int, oracle: bool = False, heldout: int = 0
) -> dict[str, Any]:
    from demi.assistant.engines import open_engine

    engine = Recorder(open_engine(model, speculate=0), fixed)
    cases = task_cases(per_file, heldout)
    run_case(engine, *cases[0], 0)  # warm-up: kernels, caches
    rows = []
    for path, symbol, task in cases:
        best: dict[int | str, Any] = {}
        for _ in range(repeat):
            for k in [0, *ks]:
                c = run_case(engine, path, symbol, task, k)
                if k not in best or c.seconds < best[k].seconds:
                    best[k] = c
            if oracle:  # drafts from this repeat's plain run, whose tokens every run shares
                for k in ks:
                    with perfect_drafts(best[0].token_ids):
                        c = run_case(engine, path, symbol, task, k)
                    if f"oracle{k}" not in best or c.seconds < best[f"oracle{k}"].seconds:
                        best[f"oracle{k}"] = c
        plain = best[0]
        row: dict[str, Any] = {
            "file": path.name,
            "symbol": symbol,
            "task": task.split(":")[0],
            "tokens": plain.completion_tokens,
            "plain_s": round(plain.seconds, 4),
            "plain_decode_s": round(plain.seconds - (plain.first_token_seconds or 0), 4),
        }
        for k in [*ks, *(f"oracle{k}" for k in ks if oracle)]:
            c = best[k]
            spec = c.extra.get("speculation") or {}
            row[k if isinstance(k, str) else f"k{k}"] = {
                "s": round(c.seconds, 4),
                "decode_s": round(c.seconds - (c.first_token_seconds or 0), 4),
                "identical": same_output(plain, c),
                **spec,
            }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for group in ("all", "explain", "refactor", *(["explain-heldout"] if heldout else [])):
        sel = [r for r in rows if group == "all" or r["task"] == group]
        tokens = sum(r["tokens"] for r in sel)
        plain_s = sum(r["plain_s"] for r in sel)
        plain_d = sum(r["plain_decode_s"] for r in sel)
        per_k = {}
        for name in [f"k{k}" for k in ks] + ([f"oracle{k}" for k in ks] if oracle else []):
            s = sum(r[name]["s"] for r in sel)
            d = sum(r[name]["decode_s"] for r in sel)
            drafted = sum(r[name].get("drafted", 0) for r in sel)
            accepted = sum(r[name].get("accepted", 0) for r in sel)
            steps = sum(r[name].get("steps", 0) for r in sel)
            per_k[name] = {
                "tok_s": round(tokens / s, 1),
                "speedup": round(plain_s / s, 2),
                "decode_speedup": round(plain_d / d, 2),
                "acceptance": round(accepted / drafted, 3) if drafted else None,
                "tokens_per_step": round(tokens / steps, 2) if steps else None,
                "identical": sum(r[name]["identical"] for r in sel),
            }
        summary[group] = {"cases": len(sel), "tokens": tokens, "plain_tok_s": round(tokens / plain_s, 1), **per_k}
    local = engine.engine.local
    plan = getattr(local.model, "kernel_plan", None)
    kernels = {
        "decode": getattr(plan, "decode", None),
        "prefill": getattr(plan, "prefill", None),
        "one_call_stack": getattr(local.model, "decode_stack", None) is not None,
    }
    return {"model": model, "quant": local.quantization, "kernels": kernels, "fixed": fixed, "oracle": oracle,
            "cases": rows, "summary": summary}  # fmt: skip


def verify(ks: list[int], preset: str, quant: str, context: int, reps: int) -> dict[str, Any]:
    import torch

    from demi.assistant.benchmark import model_dir_for_bench
    from demi.model.decoder import KVCache
    from demi.model.engine import LocalModel
    from demi.model.generate import verify_logits

    local = LocalModel.load(str(model_dir_for_bench(preset)), quant=quant, context=context + 64)
    model = local.model
    cache = KVCache(model.config, context + 64, dtype=model.dtype, device=model.device)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, context + 32), generator=gen)
    with torch.inference_mode():
        model(ids[:, :context], 0, cache)

        def timed(rows: int, rowwise: bool = False) -> float:
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                if rowwise:  # what speculative decoding runs: attention (and a rescored head) row by row
                    verify_logits(model, ids[:, context : context + rows], context, cache)
                else:
                    model(ids[:, context : context + rows], context, cache)
                times.append(time.perf_counter() - t)
                cache.length = context
            return statistics.median(times)

        for rows in (1, *[k + 1 for k in ks]):  # warm-up: each row count's kernels
            timed(rows)
        one = timed(1)
        out: dict[str, Any] = {"decode_ms": round(one * 1000, 2)}
        for k in ks:
            t, r = timed(k + 1), timed(k + 1, rowwise=True)
            out[f"k{k}"] = {
                "batched_ms": round(t * 1000, 2),
                "batched_ratio": round(t / one, 2),
                "verify_ms": round(r * 1000, 2),
                "verify_ratio": round(r / one, 2),
            }
    return {"preset": preset, "quant": local.quantization, "context": context, "reps": reps, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["tasks", "verify", "all"])
    ap.add_argument("--k", type=int, nargs="+", default=[8])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--per-file", type=int, default=2)
    ap.add_argument("--model", default="demi-tiny")
    ap.add_argument("--fixed", type=int, default=0, help="generate exactly N tokens per task (end tokens ignored)")
    ap.add_argument("--preset", default="qwen2.5-coder-0.5b")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--heldout", type=int, default=0, help="also explain N functions of demi-tiny's held-out files")
    ap.add_argument("--oracle", action="store_true", help="also time perfect drafts (the plain run's own tokens)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    result: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    if args.part in ("tasks", "all"):
        result["tasks"] = tasks(args.k, args.repeat, args.per_file, args.model, args.fixed, args.oracle, args.heldout)
        print(json.dumps({"kernels": result["tasks"]["kernels"], **result["tasks"]["summary"]}, indent=1))
    if args.part in ("verify", "all"):
        result["verify"] = verify(args.k, args.preset, args.quant, args.context, args.reps)
        print(json.dumps(result["verify"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
