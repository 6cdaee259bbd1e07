"""Refactor benchmark: six instructions on the examples/ files and on held-out functions.

    .venv/bin/python benchmarks/refactor_bench.py [--model demi-tiny] [--per 12] [--mode demi|model-only]

For each instruction (rename a local, rename a parameter, add type hints, add a docstring, turn a
loop that appends into a comprehension, extract a constant) the functions it applies to are chosen
by Python's `ast` from their text (a local to rename, a loop that appends...), never by Demi's own
detectors; `--per` of them (the examples' first, then held-out standard-library files the model
never trained on, a fixed draw). Each runs through `refactor.propose` as `demi refactor` does. A
success is a valid, changed file that does what was asked, checked here with `ast` again: the old
name no longer bound in the function and the new one bound; a docstring; more annotations (and
whether every parameter and the return has one); a new comprehension; a new module-level
UPPER_CASE constant the function uses. `--mode model-only` sends every instruction to the model
(the baseline: what demi-tiny did before static analysis took the mechanical ones).
Writes benchmarks/refactor-<model>-<mode>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout_functions import EXAMPLES, ROOT, Function, functions, heldout_files, sample  # noqa: E402

SELF = ("self", "cls")
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)  # scopes of their own


def _fn_ast(code: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        tree = ast.parse(textwrap.dedent(code))
    except SyntaxError:
        return None
    node = tree.body[0] if tree.body else None
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _own_nodes(fn: ast.AST) -> list[ast.AST]:
    """The function's nodes, nested functions, classes and lambdas aside."""
    out, stack = [], list(ast.iter_child_nodes(fn))
    while stack:
        n = stack.pop()
        out.append(n)
        if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, *_COMPREHENSIONS)):
            stack.extend(ast.iter_child_nodes(n))
    return out


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    a = fn.args
    return [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in SELF]


def _locals(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = {p.arg for p in _params(fn)} | set(SELF)
    seen: dict[str, None] = {}
    for n in _own_nodes(fn):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id not in names:
            seen[n.id] = None
    return list(seen)


def _fresh(name: str, suffix: str, code: str) -> str:
    new = f"{name}_{suffix}"
    while new in code:
        new += "_"
    return new


# -- which functions each instruction applies to (by their text) ------------------------------------


def ask_rename_local(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    names = _locals(node) if node else []
    return f"rename {names[0]} to {_fresh(names[0], 'value', fn.code)}" if names else None


def ask_rename_param(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    params = [p.arg for p in _params(node)] if node else []
    return f"rename {params[0]} to {_fresh(params[0], 'arg', fn.code)}" if params else None


def ask_hints(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    if node is None or node.returns is not None or not _params(node) or any(p.annotation for p in _params(node)):
        return None
    return "add type hints"


def ask_docstring(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    return "add a docstring" if node is not None and ast.get_docstring(node) is None else None


def ask_comprehension(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    if node is None:
        return None
    empty = {
        t.id
        for n in _own_nodes(node)
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.List) and not n.value.elts
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    for n in _own_nodes(node):
        if isinstance(n, ast.For):
            for c in ast.walk(n):
                f = getattr(c, "func", None)
                if isinstance(f, ast.Attribute) and f.attr == "append" and getattr(f.value, "id", None) in empty:
                    return "turn the loop that appends into a list comprehension"
    return None


def _magic(node: ast.AST) -> list[ast.Constant]:
    doc = node.body[0] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.body else None
    out = []
    in_fstrings = {id(c) for n in _own_nodes(node) if isinstance(n, ast.JoinedStr) for c in ast.walk(n)}
    for n in _own_nodes(node):
        if not isinstance(n, ast.Constant) or n is getattr(doc, "value", None) or isinstance(n.value, bool):
            continue
        if id(n) in in_fstrings:
            continue
        if (
            isinstance(n.value, (int, float))
            and n.value not in (0, 1, 2, -1)
            or isinstance(n.value, str)
            and len(n.value) > 1
        ):
            out.append(n)
    return out


def ask_constant(fn: Function) -> str | None:
    node = _fn_ast(fn.code)
    return "extract a constant" if node is not None and _magic(node) else None


# -- did it do what was asked? (ast, not Demi's checker) ----------------------------------------------


def _new_function(new_text: str, fn: Function) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    tree = ast.parse(new_text)
    found = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == fn.symbol.name
    ]
    return min(found, key=lambda n: abs(n.lineno - fn.symbol.start_line), default=None)


def _annotations(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, bool]:
    params = _params(node)
    count = sum(1 for p in params if p.annotation) + (node.returns is not None)
    return count, all(p.annotation for p in params) and node.returns is not None


def verdict(kind: str, instruction: str, fn: Function, new_text: str) -> tuple[bool, str]:
    """(did it do what was asked, detail)."""
    try:
        after = _new_function(new_text, fn)
    except SyntaxError as exc:
        return False, f"does not parse: {exc.msg}"
    before = _fn_ast(fn.code)
    if after is None or before is None:
        return False, "function gone"
    if kind in ("rename a local", "rename a parameter"):
        old, new = instruction.split()[1], instruction.split()[3]
        names_after = set(_locals(after)) | {p.arg for p in _params(after)}
        ok = old not in names_after and new in names_after
        return ok, "" if ok else "old name still bound or new one missing"
    if kind == "add a docstring":
        return ast.get_docstring(after) is not None, ""
    if kind == "add type hints":
        (n0, _), (n1, full) = _annotations(before), _annotations(after)
        return n1 > n0, "all" if full else "some"
    if kind == "loop into a comprehension":
        count = lambda n: sum(isinstance(c, (ast.ListComp, ast.SetComp, ast.DictComp)) for c in ast.walk(n))  # noqa: E731
        return count(after) > count(before), ""
    if kind == "extract a constant":
        tree = ast.parse(new_text)
        consts = {
            t.id
            for n in tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name) and t.id.isupper()
        }
        old_tree = ast.parse(fn.doc.text)
        old_consts = {
            t.id for n in old_tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        }
        used = {n.id for n in ast.walk(after) if isinstance(n, ast.Name)}
        ok = bool((consts - old_consts) & used)
        return ok, ""
    return False, "unknown instruction"


INSTRUCTIONS: list[tuple[str, Callable[[Function], str | None]]] = [
    ("rename a local", ask_rename_local),
    ("rename a parameter", ask_rename_param),
    ("add type hints", ask_hints),
    ("add a docstring", ask_docstring),
    ("loop into a comprehension", ask_comprehension),
    ("extract a constant", ask_constant),
]


def run(engine: Any, pool: list[Function], per: int, static: bool, max_tokens: int, candidates: int) -> list[dict]:
    from demi.assistant.refactor import propose

    rows = []
    for kind, ask in INSTRUCTIONS:
        chosen = sample([f for f in pool if ask(f)], per)
        for fn in chosen:
            instruction = ask(fn)
            assert instruction is not None
            started = time.monotonic()
            row: dict[str, Any] = {
                "instruction": kind,
                "asked": instruction,
                "function": fn.label,
                "heldout": fn.heldout,
            }
            try:
                result = propose(
                    engine,
                    fn.doc,
                    instruction,
                    fn.symbol.qualname,
                    max_tokens=max_tokens,
                    candidates=candidates,
                    static=static,
                )
                ok, detail = (
                    verdict(kind, instruction, fn, result.edit.new) if result.edit.changed else (False, "unchanged")
                )
                row.update(success=ok, detail=detail, method=result.method, tries=result.tries, diff=result.diff[:2000])
            except Exception as exc:  # a refusal or a rejected rewrite: a failure, with its reason
                row.update(success=False, detail=str(exc).split("\n")[0][:200], method="refused", tries=candidates)
            row["seconds"] = round(time.monotonic() - started, 3)
            rows.append(row)
            print(
                f"{'ok ' if row['success'] else 'NO '} {kind:28s} {fn.label[:60]:60s} {row['detail'][:70]}", flush=True
            )
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| instruction | examples/ | held-out | by static analysis | static + model | model |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, _ in INSTRUCTIONS:
        mine = [r for r in rows if r["instruction"] == kind]
        ex = [r for r in mine if not r["heldout"]]
        ho = [r for r in mine if r["heldout"]]
        by = {
            m: sum(1 for r in mine if r["success"] and r["method"] == m)
            for m in ("static analysis", "static analysis and the model", "the model")
        }
        extra = ""
        if kind == "add type hints":
            full = sum(1 for r in mine if r["success"] and r["detail"] == "all")
            extra = f" (every parameter and the return: {full})"
        counts = f"{sum(r['success'] for r in ex)}/{len(ex)} | {sum(r['success'] for r in ho)}/{len(ho)}"
        methods = f"{by['static analysis']} | {by['static analysis and the model']} | {by['the model']}"
        out.append(f"| {kind}{extra} | {counts} | {methods} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demi-tiny")
    ap.add_argument("--per", type=int, default=12, help="functions per instruction (examples first)")
    ap.add_argument("--mode", choices=("demi", "model-only"), default="demi")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from demi.assistant.engines import open_engine

    engine = open_engine(args.model)
    pool = functions(sorted(EXAMPLES.glob("*.py")), heldout=False) + functions(heldout_files(), heldout=True)
    started = time.monotonic()
    rows = run(engine, pool, args.per, args.mode == "demi", args.max_tokens, args.candidates)
    md = table(rows)
    print()
    print(md)
    name = Path(args.model).name
    out = args.out or ROOT / "benchmarks" / f"refactor-{name}-{args.mode}.json"
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "mode": args.mode,
                "per": args.per,
                "candidates": args.candidates,
                "seconds": round(time.monotonic() - started, 1),
                "table": md,
                "rows": rows,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
