"""demi-lsp measured through a real LSP client (pygls), the way an editor drives it.

    .venv/bin/python benchmarks/lsp_bench.py [--model DIR] [--quant Q] [--json OUT]

The server runs as its own process over stdio (`python -m demi.lsp.server`), exactly as an
editor starts it; every number is taken on the client side of the pipe.

1. Invoked inline completion with about 1,500 tokens of prompt (`contextTokens` 1536) at
   random line starts of a ~2,500-line file: latency p50/p95, at two token caps (a random-weight
   model never writes the newline that ends a one-line completion, so it always decodes to the
   cap; a trained model stops at the end of the line). With --workspace-cache ab, on two servers
   asked in turns (the first alternating by position): latency per arm and against the first.
2. Typing simulation: at a place where the user paused (and got a suggestion), 20 keystrokes
   50 ms apart, each followed by an automatic inline request, as editors send them. Counts the
   model runs those started and the time from the last keystroke to the final suggestion.
   With --typed-files N: one typed character vs cold (`typed_vs_cold`): at held-out positions
   (demi-tiny's held-out files, 200+ lines apart) an invoked request with nothing of the document
   in the prefix cache, then one more character typed and the same request: typed_ms, cold_ms,
   their ratio (median), and the prompt tokens the typed run took from the prefix cache vs
   recomputed (demi/stats' promptTokens, cachedTokens). A prefix-first (PSM) model recomputes
   everything after the cursor; a suffix-first one (demi-tiny) only appends.
3. Held-out lines: a code line (not a comment or docstring) of a file the model never saw has its
   text removed and the server is asked to complete it at its indentation; exact match of the
   server's answer and of the model's own first raw line (the same file's context through the
   engine directly), and the matches the server lost (raw right, server wrong), so post-processing
   can be seen not to lose accuracy. Spread over the six largest held-out standard-library files,
   each on a fresh server, so no other file can be context. On random weights both are 0: re-run on a trained model
   (`--model demi-tiny`).
   With --heldout-run RUN, the files come from a training run's held-out packages instead (a
   `demi train gpu|run --heldout-by package` directory), one file from each of --heldout-packages
   packages the model's own manifest does not list: code from packages not in its corpus.
   With --workspace-cache ab, the same cases go to two servers that differ only in that setting,
   started side by side for each file and asked in turns (which goes first alternates by case), so a
   noisy machine slows both alike: exact match and the measured request's latency per
   arm, the cases each arm alone got right, and McNemar's exact p-value of the difference.

Without --model it uses `.demi-build/demo-model`, built with `python -m demi.model.scaffold`
when missing: random weights, 4M parameters, 4096-token byte-level BPE with FIM tokens, the
size class demi-tiny is expected in. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lsprotocol import types as t
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".demi-build" / "demo-model"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
BENCH_FILE = STDLIB / "argparse.py"  # ~2,600 lines of ordinary Python
HELDOUT_FILE = STDLIB / "textwrap.py"  # for a model that did not train on the standard library


def heldout_files(model: Path, count: int = 6) -> list[Path]:
    """Files the model never trained on: for a model trained by Demi's pipeline (a manifest.json
    next to the weights lists its held-out files), the `count` largest held-out standard-library
    modules (tests included: they are code too); otherwise textwrap.py."""
    try:
        manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [HELDOUT_FILE]
    prefix = "cpython-stdlib/"
    names = [
        h[len(prefix) :]
        for h in manifest.get("heldout", [])
        if h.startswith(prefix) and (STDLIB / h[len(prefix) :]).is_file()
    ]
    paths = sorted((STDLIB / n for n in names), key=lambda p: p.stat().st_size, reverse=True)
    return paths[:count] or [HELDOUT_FILE]


def run_heldout_files(run: Path, model: Path, dest: Path, count: int = 12, seed: int = 0) -> list[Path]:
    """Python files of a training run's held-out packages (`demi train gpu|run --heldout-by
    package`: code from packages its corpus never had), leaving out every package `model` trained
    on (its manifest's sources), one file a package (its largest Python file of 4-60 KB: real
    modules, not generated tables) from `count` packages drawn with `seed`; written under `dest`."""
    from demi.train.pipeline import heldout_documents

    def norm(name: str) -> str:
        return name.lower().replace("_", "-").replace(".", "-")

    try:
        trained = json.loads((model / "manifest.json").read_text(encoding="utf-8"))["sources"]
        seen = {norm(e["name"]) for e in trained if e.get("files")}
    except (OSError, ValueError, KeyError):
        seen = set()
    best: dict[str, tuple[int, str, str]] = {}
    for doc in heldout_documents(run):
        size = len(doc.text.encode("utf-8"))
        if not doc.path.endswith(".py") or not 4_000 <= size <= 60_000 or norm(doc.source) in seen:
            continue
        if size > best.get(doc.source, (0, "", ""))[0]:
            best[doc.source] = (size, doc.path, doc.text)
    names = sorted(best)
    random.Random(seed).shuffle(names)
    out = []
    for name in names[:count]:
        path = dest / "heldout-run" / name / best[name][1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(best[name][2], encoding="utf-8")
        out.append(path)
    if not out:
        raise SystemExit(f"{run}: no held-out Python file of 4-60 KB from a package the model did not train on")
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def summary(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 0.5), 1),
        "p95_ms": round(pct(ms, 0.95), 1),
        "mean_ms": round(statistics.fmean(ms), 1),
        "max_ms": round(max(ms), 1),
    }


class Client(LanguageClient):
    def __init__(self) -> None:
        super().__init__("demi-lsp-bench", "1")
        self.statuses: list[Any] = []
        self.arm_options: dict[str, Any] = {}  # the settings of the arm this server runs (invoked_arms)

        @self.feature("demi/status")
        def _status(ls: Any, params: Any) -> None:
            self.statuses.append(params)

        @self.feature(t.WORKSPACE_CONFIGURATION)
        def _configuration(ls: Any, params: t.ConfigurationParams) -> list[Any]:
            return [{} for _ in params.items]

        @self.feature(t.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _progress_create(ls: Any, params: Any) -> None:
            return None

        for method in (t.PROGRESS, t.WINDOW_LOG_MESSAGE, t.WINDOW_SHOW_MESSAGE):
            self.feature(method)(lambda ls, params: None)

    async def stats(self) -> Any:
        return await self.protocol.send_request_async("demi/stats", {})

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.text_document_did_open(
            t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)
            )
        )

    def insert(self, uri: str, version: int, line: int, col: int, text: str) -> None:
        pos = t.Position(line=line, character=col)
        self.text_document_did_change(
            t.DidChangeTextDocumentParams(
                text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[t.TextDocumentContentChangePartial(range=t.Range(pos, pos), text=text)],
            )
        )

    def request(self, uri: str, line: int, col: int, invoked: bool) -> Any:
        kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
        return self.protocol.send_request(
            t.TEXT_DOCUMENT_INLINE_COMPLETION,
            t.InlineCompletionParams(
                text_document=t.TextDocumentIdentifier(uri=uri),
                position=t.Position(line=line, character=col),
                context=t.InlineCompletionContext(trigger_kind=kind),
            ),
        )

    async def complete(self, uri: str, line: int, col: int, invoked: bool = True) -> str:
        result = await asyncio.wrap_future(self.request(uri, line, col, invoked))
        return result.items[0].insert_text if result.items else ""

    def configure(self, settings: dict[str, Any]) -> None:
        self.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": settings}))


async def start(
    model: Path, quant: str | None, workdir: Path, options: dict[str, Any], threads: int | None = None, tag: str = ""
) -> Client:
    client = Client()
    log = str(workdir / f"server{tag}.log")
    cmd = [sys.executable, "-m", "demi.lsp.server", "--model", str(model), "--log-file", log]
    if quant:
        cmd += ["--quant", quant]
    env = {**os.environ, "DEMI_LSP_NO_PROBE": "1", "DEMI_DATA_DIR": str(workdir / "data")}
    if threads:
        env["DEMI_THREADS"] = str(threads)
    await client.start_io(*cmd, env=env)
    await client.initialize_async(
        t.InitializeParams(
            capabilities=t.ClientCapabilities(window=t.WindowClientCapabilities(work_done_progress=True)),
            root_uri=workdir.as_uri(),
            initialization_options=options,
        )
    )
    client.initialized(t.InitializedParams())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        state = (await client.stats()).status.state
        if state == "ready":
            return client
        if state == "error":
            raise RuntimeError(f"the server could not load {model}: {(await client.stats()).status.message}")
        await asyncio.sleep(0.1)
    raise RuntimeError("the model did not load in 10 minutes")


async def stop(client: Client) -> None:
    try:
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
        await asyncio.sleep(0.2)
    finally:
        await client.stop()


def prose_lines(text: str) -> set[int]:
    """0-based lines that are comments or inside a string spanning lines (docstrings): prose, not
    code, and not what a held-out line completion is about (`demi eval fim` skips them too)."""
    import io
    import tokenize

    out: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out.add(tok.start[0] - 1)
            elif tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                out.update(range(tok.start[0] - 1, tok.end[0]))
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def line_starts(
    text: str, rng: random.Random, n: int, skip: int = 150, code_only: bool = False
) -> list[tuple[int, int]]:
    """(line, column) at the first non-blank character of random non-empty lines (with `code_only`,
    not comments or docstrings)."""
    lines = text.split("\n")
    prose = prose_lines(text) if code_only else set()
    candidates = [
        (i, len(ln) - len(ln.lstrip()))
        for i, ln in enumerate(lines)
        if skip <= i < len(lines) - 20 and len(ln.strip()) >= 6 and i not in prose
    ]
    return rng.sample(candidates, min(n, len(candidates)))


def typed_column(line: str, start: int, typed: int) -> int:
    """The column after typing up to `typed` characters of `line` from `start`, leaving at least two
    for the completion to write."""
    return start + min(typed, max(0, len(line.rstrip()) - start - 2))


# -- 1. invoked completion ------------------------------------------------------------------------------------


async def invoked(
    client: Client, workdir: Path, requests: int, caps: list[int], seed: int, options: dict[str, Any]
) -> dict[str, Any]:
    text = BENCH_FILE.read_text(encoding="utf-8")
    uri = (workdir / "argparse_copy.py").as_uri()
    client.open(uri, text)
    out: dict[str, Any] = {"file": BENCH_FILE.name, "lines": text.count("\n")}
    rng = random.Random(seed)
    for cap in caps:
        client.configure({**options, "maxTokens": cap})
        await asyncio.sleep(0.1)
        positions = line_starts(text, rng, requests + 3)
        for line, col in positions[:3]:  # warm-up
            await client.complete(uri, line, col)
        latencies, prompts = [], []
        for line, col in positions[3:]:
            started = time.perf_counter()
            await client.complete(uri, line, col)
            latencies.append(time.perf_counter() - started)
            last = (await client.stats()).completions
            prompts.append(last.last_prompt_tokens)
        res = summary(latencies)
        res["prompt_tokens_mean"] = round(statistics.fmean(p for p in prompts if p), 0)
        out[f"max_tokens_{cap}"] = res
        print(f"invoked, maxTokens {cap}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return out


async def invoked_arms(
    clients: dict[str, Client], workdir: Path, requests: int, caps: list[int], seed: int, options: dict[str, Any]
) -> dict[str, Any]:
    """`invoked` on several servers at once (one per arm, each with its own settings already sent):
    every position is asked of each in turns, the first alternating by position, so load from
    elsewhere falls on all arms alike. Latency per arm, and the ratio of each arm's p50 and mean to
    the first arm's."""
    text = BENCH_FILE.read_text(encoding="utf-8")
    uri = (workdir / "argparse_copy.py").as_uri()
    labels = list(clients)
    for client in clients.values():
        client.open(uri, text)
    out: dict[str, Any] = {"file": BENCH_FILE.name, "lines": text.count("\n"), "arms": labels}
    rng = random.Random(seed)
    for cap in caps:
        for client in clients.values():
            client.configure({**options, **client.arm_options, "maxTokens": cap})
        await asyncio.sleep(0.1)
        positions = line_starts(text, rng, requests + 3)
        for line, col in positions[:3]:  # warm-up
            for client in clients.values():
                await client.complete(uri, line, col)
        latencies: dict[str, list[float]] = {label: [] for label in labels}
        for k, (line, col) in enumerate(positions[3:]):
            for label in labels[k % len(labels) :] + labels[: k % len(labels)]:
                started = time.perf_counter()
                await clients[label].complete(uri, line, col)
                latencies[label].append(time.perf_counter() - started)
        res: dict[str, Any] = {label: summary(latencies[label]) for label in labels}
        base = res[labels[0]]
        for label in labels[1:]:
            res[label]["p50_vs_first"] = round(res[label]["p50_ms"] / base["p50_ms"], 3)
            res[label]["mean_vs_first"] = round(res[label]["mean_ms"] / base["mean_ms"], 3)
        out[f"max_tokens_{cap}"] = res
        print(f"invoked, maxTokens {cap}: {json.dumps(res)}", file=sys.stderr, flush=True)
    return out


# -- 2. typing ------------------------------------------------------------------------------------------------


async def typing(
    client: Client, workdir: Path, runs: int, keys: int, gap: float, seed: int, tag: str = ""
) -> dict[str, Any]:
    source = BENCH_FILE.read_text(encoding="utf-8")
    rng = random.Random(seed + 1)
    results = []
    for r in range(runs):
        # a fresh document per run: the user is about to write a new line of code somewhere in the file
        lines = source.split("\n")
        line, indent = line_starts(source, rng, 1)[0]
        target = lines[line].strip()
        if len(target) < keys:
            target = (target + " " + "x" * keys)[:keys]
        doc_lines = lines[:line] + [" " * indent] + lines[line + 1 :]
        uri = (workdir / f"typing{tag}_{r}.py").as_uri()
        client.open(uri, "\n".join(doc_lines))
        await client.complete(uri, line, indent)  # the pause before typing: a suggestion is shown
        s0 = await client.stats()
        version, col, futures = 1, indent, []
        last_key = time.perf_counter()
        for ch in target[:keys]:
            version += 1
            client.insert(uri, version, line, col, ch)
            col += 1
            futures.append(client.request(uri, line, col, invoked=False))
            last_key = time.perf_counter()
            await asyncio.sleep(gap)
        final = await asyncio.wrap_future(futures[-1])
        after_last = time.perf_counter() - last_key
        answered = 0
        for fut in futures[:-1]:
            try:
                await asyncio.wrap_future(fut)
            except JsonRpcException:
                pass
            answered += 1
        s1 = await client.stats()
        runs_started = s1.runsStarted - s0.runsStarted
        results.append(
            {
                "runs": runs_started,
                "final_ms": round(after_last * 1000, 1),
                "debounce_ms": s1.completions.last_delay_ms,
                "job_ms": s1.completions.last_job_ms,
                "cache_hits": s1.cacheHits - s0.cacheHits,
                "shown": bool(final.items),
            }
        )
        print(f"typing run {r}: {results[-1]}", file=sys.stderr, flush=True)
    finals = [x["final_ms"] / 1000 for x in results]
    return {
        "keystrokes": keys,
        "gap_ms": gap * 1000,
        "runs": results,
        "max_model_runs": max(x["runs"] for x in results),
        "final_after_last_key": summary(finals),
    }


# -- 2b. one typed character vs cold ---------------------------------------------------------------------------


def spread_positions(text: str, rng: random.Random, n: int, gap: int = 200) -> list[tuple[int, int]]:
    """Up to `n` code-line starts at least `gap` lines apart (so no two share a prompt's start)."""
    picked: list[tuple[int, int]] = []
    for line, col in sorted(line_starts(text, rng, 400, skip=20, code_only=True), key=lambda _: rng.random()):
        if all(abs(line - other) >= gap for other, _ in picked):
            picked.append((line, col))
        if len(picked) == n:
            break
    return sorted(picked)


async def typed_vs_cold(
    client: Client, workdir: Path, files: list[Path], per_file: int, seed: int, tag: str = ""
) -> dict[str, Any]:
    """The cost of a request after one more typed character, against a cold one. At a held-out
    position (a code line with its text removed, as in 3.) of a document the server has not seen:
    an invoked request on a prefix cache holding nothing of that document (cold), then the line's
    next character typed and the same request one column further (typed). Times are the client's;
    `promptTokens`/`cachedTokens` from demi/stats say what the prefix cache gave each run. The
    typed character is the line's own unless the suggestion starts with it (the server would answer
    from its completion cache without a model run): then "x"."""
    rng = random.Random(seed + 3)
    pairs = []
    for f, source in enumerate(files):
        text = source.read_text(encoding="utf-8")
        lines = text.split("\n")
        for k, (line, col) in enumerate(spread_positions(text, rng, per_file)):
            target = lines[line][col:]
            doc_lines = lines[:line] + [lines[line][:col]] + lines[line + 1 :]
            uri = (workdir / f"typed{tag}_{f}_{k}.py").as_uri()
            client.open(uri, "\n".join(doc_lines))
            s0 = await client.stats()
            started = time.perf_counter()
            shown = await client.complete(uri, line, col)
            cold = time.perf_counter() - started
            s1 = await client.stats()
            ch = target[0] if not shown.startswith(target[0]) else "x"
            client.insert(uri, 2, line, col, ch)
            started = time.perf_counter()
            await client.complete(uri, line, col + 1)
            typed = time.perf_counter() - started
            s2 = await client.stats()
            pair = {
                "file": source.name,
                "line": line + 1,
                "cold_ms": round(cold * 1000, 1),
                "typed_ms": round(typed * 1000, 1),
                "ratio": round(typed / cold, 3),
                "cold_job_ms": s1.completions.last_job_ms,
                "typed_job_ms": s2.completions.last_job_ms,
                "cold_prompt_tokens": s1.promptTokens - s0.promptTokens,
                "cold_cached_tokens": s1.cachedTokens - s0.cachedTokens,
                "typed_prompt_tokens": s2.promptTokens - s1.promptTokens,
                "typed_cached_tokens": s2.cachedTokens - s1.cachedTokens,
                "typed_shifted_tokens": s2.shiftedTokens - s1.shiftedTokens,
                "typed_completion_tokens": s2.completions.last_completion_tokens,
                "model_runs": [s1.runsStarted - s0.runsStarted, s2.runsStarted - s1.runsStarted],
            }
            pair["typed_recomputed_tokens"] = (
                pair["typed_prompt_tokens"] - pair["typed_cached_tokens"] - pair["typed_shifted_tokens"]
            )
            pairs.append(pair)
            print(f"typed vs cold: {pair}", file=sys.stderr, flush=True)
    med = statistics.median
    res = {
        "files": sorted({p["file"] for p in pairs}),
        "pairs": len(pairs),
        "cold_ms": round(med(p["cold_ms"] for p in pairs), 1),
        "typed_ms": round(med(p["typed_ms"] for p in pairs), 1),
        "ratio_of_medians": round(med(p["typed_ms"] for p in pairs) / med(p["cold_ms"] for p in pairs), 3),
        "ratio_median": round(med(p["ratio"] for p in pairs), 3),
        "cold_prompt_tokens": med(p["cold_prompt_tokens"] for p in pairs),
        "cold_cached_tokens": med(p["cold_cached_tokens"] for p in pairs),
        "typed_prompt_tokens": med(p["typed_prompt_tokens"] for p in pairs),
        "typed_cached_tokens": med(p["typed_cached_tokens"] for p in pairs),
        "typed_shifted_tokens": med(p["typed_shifted_tokens"] for p in pairs),
        "typed_recomputed_tokens": med(p["typed_recomputed_tokens"] for p in pairs),
        "detail": pairs,
    }
    print(f"typed vs cold: {json.dumps({k: v for k, v in res.items() if k != 'detail'})}", file=sys.stderr, flush=True)
    return res


# -- 3. held-out lines ------------------------------------------------------------------------------------------


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split at least this uneven of the cases only
    one arm got right would be if the arms were equally good."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def arms_of(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(label, settings) of each server the held-out cases go to: one (the defaults) unless
    --workspace-cache asks for a setting, or for both its values (ab), or --context-arms for prompt
    budgets side by side (each crossed with the others)."""
    choices: list[list[tuple[str, dict[str, Any]]]] = []
    for flag, key in (("workspace_cache", "workspaceCache"),):
        value = getattr(args, flag, None)
        if value is None:
            continue
        values = ["off", "on"] if value == "ab" else [value]
        choices.append([(f"{key}={v}", {key: v == "on"}) for v in values])
    if budgets := getattr(args, "context_arms", None):
        choices.append([(f"contextTokens={v}", {"contextTokens": v}) for v in budgets])
    if targets := getattr(args, "target_latency_arms", None):
        choices.append([(f"targetLatencyMs={v:g}", {"targetLatencyMs": v}) for v in targets])
    arms: list[tuple[str, dict[str, Any]]] = [("default", {})]
    for options in choices:
        arms = [
            (label if not arm_opts else f"{arm_label},{label}", {**arm_opts, **opts})
            for arm_label, arm_opts in arms
            for label, opts in options
        ]
    return arms


async def heldout(
    new_server: Callable[[str], Awaitable[Client]],
    workdir: Path,
    model: Path,
    quant: str | None,
    n: int,
    context_tokens: int,
    max_tokens: int,
    seed: int,
    typed: int = 0,
    options: dict[str, Any] | None = None,
    arms: list[tuple[str, dict[str, Any]]] | None = None,
    sources: list[Path] | None = None,
) -> dict[str, Any]:
    """Each file on a fresh server (so no other file it has seen can be context), one document
    edited per case; the direct side builds the same prompt with no other files and reuses no
    cached rows but an exact prefix (`cache_reuse=0`). With `typed` = M, the first M characters of
    the line are typed one at a time, each followed by a request as an editor makes, and the
    request after the last is the one measured (against the rest of the line): the server's
    prefix cache, and shifted reuse if on, then hold rows from the requests before. With several
    `arms` (label, settings), each file gets one server per arm, and every request goes to each
    of them in turns (the first arm alternating by case); the measured request is timed per arm."""
    from demi.assistant.context import fim_context
    from demi.assistant.document import Document
    from demi.assistant.engines import open_engine
    from demi.assistant.syntax import parse

    arms = arms or [("default", {})]
    engine = open_engine(str(model), quant=quant, cache_reuse=0)
    from demi.model.registry import resolve_model_dir

    sources = sources or heldout_files(resolve_model_dir(str(model), download=False))
    rng = random.Random(seed + 2)
    hits = {label: 0 for label, _ in arms}
    agree = {label: 0 for label, _ in arms}
    lost = {label: 0 for label, _ in arms}
    right: dict[str, list[bool]] = {label: [] for label, _ in arms}
    latency: dict[str, list[float]] = {label: [] for label, _ in arms}
    direct_hits = cases_run = shifted = 0
    for f, source in enumerate(sources):
        text = source.read_text(encoding="utf-8")
        cases = line_starts(text, rng, n // len(sources) + (f < n % len(sources)), skip=20, code_only=True)
        lines = text.split("\n")
        name = f"heldout_{f}.py"
        uri = (workdir / name).as_uri()
        clients = {}
        for label, arm_options in arms:
            client = await new_server(label)
            # the whole section, as editors send it
            client.configure({**(options or {}), **arm_options, "maxTokens": max_tokens})
            clients[label] = client
        await asyncio.sleep(0.1)
        for client in clients.values():
            client.open(uri, text)
        version = 1
        for k, (line, start) in enumerate(cases):
            col = typed_column(lines[line], start, typed)
            target = lines[line][col:].rstrip()
            order = [arms[(k + i) % len(arms)][0] for i in range(len(arms))]
            first = order[0]
            before = (await clients[first].stats()).shiftedTokens
            got: dict[str, str] = {}
            for c in range(start, col + 1):  # the typed characters, a request after each
                doc_text = "\n".join(lines[:line] + [lines[line][:c]] + lines[line + 1 :])
                version += 1
                for label in order:
                    clients[label].text_document_did_change(
                        t.DidChangeTextDocumentParams(
                            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
                            content_changes=[t.TextDocumentContentChangeWholeDocument(text=doc_text)],
                        )
                    )
                for label in order:
                    started = time.perf_counter()
                    got[label] = (await clients[label].complete(uri, line, c)).split("\n")[0].rstrip()
                    if c == col:
                        latency[label].append(time.perf_counter() - started)
            shifted += (await clients[first].stats()).shiftedTokens > before
            doc = Document.from_text(doc_text, name)
            offset = sum(len(x) + 1 for x in lines[:line]) + col
            ctx = fim_context(doc, offset, engine.count_tokens, context_tokens, parse(doc), None)
            raw = engine.infill(ctx, max_new_tokens=max_tokens, stop=["\n"]).text.split("\n")[0].rstrip()
            direct_hits += raw == target
            for label, _ in arms:
                hits[label] += got[label] == target
                agree[label] += got[label] == raw
                lost[label] += raw == target and got[label] != target  # a match post-processing threw away
                right[label].append(got[label] == target)
            cases_run += 1
            if os.environ.get("DEMI_BENCH_DEBUG"):
                shown = " ".join(f"{label}={got[label]!r}" for label, _ in arms)
                print(f"{source.name}:{line + 1} target={target!r} {shown} raw={raw!r}", file=sys.stderr)
        for client in clients.values():
            await stop(client)
    engine.close()
    main_label = arms[0][0]
    res: dict[str, Any] = {
        "files": [str(p.relative_to(STDLIB)) if p.is_relative_to(STDLIB) else p.name for p in sources],
        "lines": cases_run,
        "exact_match_server": hits[main_label] / max(1, cases_run),
        "exact_match_model_raw": direct_hits / max(1, cases_run),
        "server_equals_raw_first_line": agree[main_label] / max(1, cases_run),
        "matches_lost_by_the_server": lost[main_label],
        "typed_before_request": typed,
        "cases_with_shifted_rows": shifted,
    }
    if len(arms) > 1:
        base = arms[0][0]
        res["arms"] = {}
        for label, arm_options in arms:
            only = sum(a and not b for a, b in zip(right[label], right[base], strict=True))
            only_base = sum(b and not a for a, b in zip(right[label], right[base], strict=True))
            res["arms"][label] = {
                "settings": arm_options,
                "exact_match_server": hits[label] / max(1, cases_run),
                "hits": hits[label],
                "server_equals_raw_first_line": agree[label] / max(1, cases_run),
                "matches_lost_by_the_server": lost[label],
                "latency": summary(latency[label]) if latency[label] else None,
                f"right_only_here_vs_{base}": only,
                f"right_only_in_{base}": only_base,
                f"mcnemar_p_vs_{base}": round(mcnemar_p(only, only_base), 4),
            }
    print(f"held-out: {json.dumps(res)}", file=sys.stderr, flush=True)
    return res


def ensure_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        print(f"building {path} (python -m demi.model.scaffold)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "demi.model.scaffold", str(path)], check=True)
    return path


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    model = Path(args.model) if args.model else ensure_model(DEFAULT_MODEL)
    out: dict[str, Any] = {
        "model": str(model),
        "quant": args.quant or "default (auto: int8 on CPU)",
        "threads": args.threads,
        "label": "random weights (scaffold, demi-tiny's size class): latency is real, text is noise"
        if not args.model
        else args.model,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": _load(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="demi-lsp-bench-") as tmp:
        workdir = Path(tmp)
        options = {"contextTokens": args.context_tokens, "maxTokens": args.max_tokens[-1]}
        if args.cache_reuse is not None:
            options["cacheReuse"] = args.cache_reuse
        client = await start(model, args.quant, workdir, options, args.threads)
        try:
            st = (await client.stats()).status
            out["engine"] = {"model": st.model, "load_seconds": st.loadSeconds}
            arms = arms_of(args)
            if not args.skip_invoked and len(arms) > 1:  # the arms side by side, the first on `client`
                clients = {arms[0][0]: client}
                client.arm_options = arms[0][1]
                for label, arm_options in arms[1:]:
                    clients[label] = await start(model, args.quant, workdir, options, args.threads, tag="-" + label)
                    clients[label].arm_options = arm_options
                try:
                    out["invoked"] = await invoked_arms(
                        clients, workdir, args.requests, args.max_tokens, args.seed, options
                    )
                finally:
                    for label in list(clients)[1:]:
                        await stop(clients[label])
                client.configure(options)
            elif not args.skip_invoked:
                out["invoked"] = await invoked(client, workdir, args.requests, args.max_tokens, args.seed, options)
            if not args.skip_typing:
                out["typing"] = {}
                for cap in args.max_tokens:
                    client.configure({**options, "maxTokens": cap})
                    out["typing"][f"max_tokens_{cap}"] = await typing(
                        client, workdir, args.typing_runs, 20, 0.05, args.seed, tag=f"_{cap}"
                    )
            if args.typed_files:
                from demi.model.registry import resolve_model_dir

                files = heldout_files(resolve_model_dir("demi-tiny", download=False))[: args.typed_files]
                out["typed_vs_cold"] = {}
                warm = (workdir / "typed_warmup.py").as_uri()  # first-run costs off the clock
                client.open(warm, BENCH_FILE.read_text(encoding="utf-8"))
                await client.complete(warm, 400, 0)
                for cap in args.max_tokens:
                    client.configure({**options, "maxTokens": cap})
                    await asyncio.sleep(0.1)
                    out["typed_vs_cold"][f"max_tokens_{cap}"] = await typed_vs_cold(
                        client, workdir, files, args.typed_positions, args.seed, tag=f"_{cap}"
                    )
            s = await client.stats()
            out["server_stats"] = {
                "runs_started": s.runsStarted,
                "runs_skipped": s.runsSkipped,
                "cache_hits": s.cacheHits,
            }
        finally:
            await stop(client)
        if args.heldout:
            files = None
            if args.heldout_run:
                from demi.model.registry import resolve_model_dir

                trained_on = resolve_model_dir(str(model), download=False)
                files = run_heldout_files(args.heldout_run, trained_on, workdir, args.heldout_packages, args.seed)
            out["heldout"] = await heldout(
                lambda label: start(model, args.quant, workdir, options, args.threads, tag="-" + label),
                workdir,
                model,
                args.quant,
                args.heldout,
                args.context_tokens,
                args.max_tokens[-1],
                args.seed,
                args.heldout_typed,
                options,
                arms_of(args),
                sources=files,
            )
            if files:
                out["heldout"]["files"] = [str(p.relative_to(workdir / "heldout-run")) for p in files]
    out["machine"]["load_after"] = _load()
    return out


def _load() -> list[float] | None:
    """The 1/5/15-minute load averages: numbers taken while other work shares the cores are slower."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model directory or name (default: .demi-build/demo-model, built if missing)")
    ap.add_argument(
        "--quant",
        default=None,
        choices=["none", "int8", "int4", "auto"],
        help="the server's quantization (default: its own default, auto = int8 on a CPU)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the server (DEMI_THREADS)")
    ap.add_argument("--requests", type=int, default=40, help="invoked requests per token cap")
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[16, 64], help="token caps to measure")
    ap.add_argument("--context-tokens", type=int, default=1536, help="prompt budget (about 1,500 tokens)")
    ap.add_argument("--typing-runs", type=int, default=10)
    ap.add_argument("--heldout", type=int, default=30, help="held-out lines for exact match (0 skips)")
    ap.add_argument(
        "--heldout-typed",
        type=int,
        default=0,
        help="type this many characters of each held-out line one at a time, a request after each, before the "
        "measured request",
    )
    ap.add_argument(
        "--cache-reuse",
        type=int,
        default=None,
        help="the server's cacheReuse setting: shortest cached run reused at shifted positions (0: exact reuse only)",
    )
    ap.add_argument(
        "--workspace-cache",
        choices=["on", "off", "ab"],
        default=None,
        help="the servers' workspaceCache setting for --heldout and the invoked requests; ab: both, the same "
        "requests to two servers in turns",
    )
    ap.add_argument(
        "--context-arms",
        type=int,
        nargs="+",
        default=None,
        metavar="TOKENS",
        help="the servers' contextTokens (prompt budget) side by side for --heldout and the invoked requests",
    )
    ap.add_argument(
        "--target-latency-arms",
        type=float,
        nargs="+",
        default=None,
        metavar="MS",
        help="the servers' targetLatencyMs side by side (0: the prompt budget is contextTokens, unmeasured)",
    )
    ap.add_argument(
        "--typed-files",
        type=int,
        default=0,
        help="one-typed-character vs cold requests on this many of demi-tiny's held-out files (0 skips)",
    )
    ap.add_argument("--typed-positions", type=int, default=3, help="positions per file for --typed-files")
    ap.add_argument(
        "--heldout-run",
        type=Path,
        default=None,
        metavar="RUN",
        help="take the held-out lines from this training run's held-out packages (by package) that the model "
        "did not train on, instead of the model's own held-out standard-library files",
    )
    ap.add_argument("--heldout-packages", type=int, default=12, help="packages (one file each) for --heldout-run")
    ap.add_argument("--skip-invoked", action="store_true")
    ap.add_argument("--skip-typing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    out = asyncio.run(main_async(args))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
