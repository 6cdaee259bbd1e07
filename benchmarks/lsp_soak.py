"""Soak test for demi-lsp: thousands of inline completions, a third of them cancelled, through a
real LSP client, watching that every request is answered and that the server's memory levels off.

    .venv/bin/python benchmarks/lsp_soak.py [--model demi-tiny] [--requests 5000] [--json OUT]

The server runs as its own process over stdio (`python -m demi.lsp.server`), as an editor starts
it. One worker per document (several documents, copies of standard-library modules) types a
character before three requests in four (an incremental didChange; a typed run is deleted again
after a dozen characters, so the documents keep their size), then asks for an inline completion
at the cursor, mostly invoked, sometimes automatic (debounced). Every third request is cancelled
with `$/cancelRequest` after 0-30 ms. Each request waits for its answer (a result or an error) up
to --timeout seconds; one that gets none is counted as unanswered.

The server's resident memory (VmRSS from /proc/PID/status) is read once --warmup requests have
been answered and again at the end, after a short settle. The run passes (exit code 0) when no
request went unanswered, the server is still alive, shutdown/exit ends it with code 0, and the
end RSS is within --max-growth percent of the warmup RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types as t
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SOURCES = ("textwrap.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py", "heapq.py", "colorsys.py")
MAX_LINES = 220  # per document: long enough for real context, short enough for a quick prompt
CANCELLED = -32800


def rss_kb(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Client(LanguageClient):
    """A quiet client: it answers what the server may ask and ignores its notifications."""

    def __init__(self) -> None:
        super().__init__("demi-lsp-soak", "1")

        @self.feature(t.WORKSPACE_CONFIGURATION)
        def _configuration(ls: Any, params: t.ConfigurationParams) -> list[Any]:
            return [{} for _ in params.items]

        @self.feature(t.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _progress_create(ls: Any, params: Any) -> None:
            return None

        for method in ("demi/status", t.PROGRESS, t.WINDOW_LOG_MESSAGE, t.WINDOW_SHOW_MESSAGE):
            self.feature(method)(lambda ls, params: None)


@dataclass
class Tally:
    """What the run saw, shared by the workers."""

    target: int
    warmup: int
    sent: int = 0
    answered: int = 0
    cancels_sent: int = 0
    results: int = 0
    with_text: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    rss_samples: list[tuple[int, int]] = field(default_factory=list)  # (answered, KiB)
    rss_warmup_kb: int | None = None

    def take(self) -> int | None:
        """The number of the next request to send, or None when the target is reached."""
        if self.sent >= self.target:
            return None
        self.sent += 1
        return self.sent


@dataclass
class Doc:
    uri: str
    lines: list[str]
    version: int = 1
    line: int = 0
    col: int = 0
    typed: int = 0


def documents(workdir: Path, count: int) -> list[tuple[str, str]]:
    out = []
    for i in range(count):
        src = STDLIB / SOURCES[i % len(SOURCES)]
        text = "\n".join(src.read_text(encoding="utf-8").split("\n")[:MAX_LINES]) + "\n"
        out.append(((workdir / f"soak{i}_{src.name}").as_uri(), text))
    return out


async def worker(client: Client, doc: Doc, tally: Tally, rng: random.Random, pid: int, timeout: float) -> None:
    while (n := tally.take()) is not None:
        if rng.random() < 0.75:
            await type_or_reset(client, doc, rng)
        invoked = rng.random() < 0.8
        kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
        msg_id = f"soak-{n}"
        fut = asyncio.wrap_future(
            client.protocol.send_request(
                t.TEXT_DOCUMENT_INLINE_COMPLETION,
                t.InlineCompletionParams(
                    text_document=t.TextDocumentIdentifier(uri=doc.uri),
                    position=t.Position(line=doc.line, character=doc.col),
                    context=t.InlineCompletionContext(trigger_kind=kind),
                ),
                msg_id=msg_id,
            )
        )
        if n % 3 == 0:
            await asyncio.sleep(rng.uniform(0, 0.03))
            client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id=msg_id))
            tally.cancels_sent += 1
        try:
            result = await asyncio.wait_for(asyncio.shield(fut), timeout)
            tally.results += 1
            tally.with_text += bool(result.items)
        except JsonRpcException as exc:
            key = str(exc.code)
            tally.errors[key] = tally.errors.get(key, 0) + 1
        except asyncio.TimeoutError:
            tally.unanswered.append(msg_id)
            continue
        tally.answered += 1
        if tally.answered == tally.warmup:
            tally.rss_warmup_kb = rss_kb(pid)
        if tally.answered % 250 == 0:
            tally.rss_samples.append((tally.answered, rss_kb(pid)))


async def type_or_reset(client: Client, doc: Doc, rng: random.Random) -> None:
    """Type one character at the cursor; after a dozen, delete the run and move to another line."""
    doc.version += 1
    if doc.typed >= 12:
        start, end = (
            t.Position(line=doc.line, character=doc.col - doc.typed),
            t.Position(line=doc.line, character=doc.col),
        )
        change = t.TextDocumentContentChangePartial(range=t.Range(start, end), text="")
        doc.line = rng.randrange(len(doc.lines))
        doc.col, doc.typed = len(doc.lines[doc.line]), 0
    else:
        pos = t.Position(line=doc.line, character=doc.col)
        change = t.TextDocumentContentChangePartial(range=t.Range(pos, pos), text=rng.choice("abcxyz_(). "))
        doc.col += 1
        doc.typed += 1
    client.text_document_did_change(
        t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=doc.uri, version=doc.version), content_changes=[change]
        )
    )
    await asyncio.sleep(0)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="demi-lsp-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "demi.lsp.server", "--model", args.model, "--log-file", str(workdir / "server.log")]
    if args.quant:
        cmd += ["--quant", args.quant]
    if args.context:
        cmd += ["--context", str(args.context)]
    env = {
        **os.environ,
        "DEMI_LSP_NO_PROBE": "1",
        "DEMI_DATA_DIR": str(workdir / "data"),
        "DEMI_CONFIG": str(workdir / "no-config.toml"),
    }
    if args.threads:
        env["DEMI_THREADS"] = str(args.threads)
    client = Client()
    await client.start_io(*cmd, env=env)
    pid = client._server.pid
    options = {"maxTokens": args.max_tokens, "contextTokens": args.context_tokens, "history": False}
    await client.initialize_async(
        t.InitializeParams(
            capabilities=t.ClientCapabilities(), root_uri=workdir.as_uri(), initialization_options=options
        )
    )
    client.initialized(t.InitializedParams())
    await wait_ready(client)
    rng = random.Random(args.seed)
    docs = []
    for uri, text in documents(workdir, args.docs):
        client.text_document_did_open(
            t.DidOpenTextDocumentParams(
                text_document=t.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
            )
        )
        lines = text.split("\n")
        line = rng.randrange(len(lines))
        docs.append(Doc(uri, lines, line=line, col=len(lines[line])))
    tally = Tally(args.requests, args.warmup)
    rss_start = rss_kb(pid)
    started = time.monotonic()
    await asyncio.gather(
        *(worker(client, d, tally, random.Random(args.seed + i + 1), pid, args.timeout) for i, d in enumerate(docs))
    )
    wall = time.monotonic() - started
    await asyncio.sleep(args.settle)
    rss_end = rss_kb(pid)
    stats = await client.protocol.send_request_async("demi/stats", {})
    alive = client._server.returncode is None
    exit_code, stderr_tail = await stop(client)
    warm = tally.rss_warmup_kb or rss_end
    growth = 100.0 * (rss_end - warm) / warm
    return {
        "requests": tally.sent,
        "answered": tally.answered,
        "unanswered": len(tally.unanswered),
        "unanswered_ids": tally.unanswered[:20],
        "cancelled": tally.cancels_sent,
        "answers": {"result": tally.results, "result_with_text": tally.with_text, **tally.errors},
        "answered_cancelled": tally.errors.get(str(CANCELLED), 0),
        "rss_start_kb": rss_start,
        "rss_after_warmup_kb": tally.rss_warmup_kb,
        "rss_end_kb": rss_end,
        "warmup_requests": args.warmup,
        "rss_growth_pct": round(growth, 2),
        "max_growth_pct": args.max_growth,
        "rss_samples": tally.rss_samples,
        "wall_s": round(wall, 1),
        "requests_per_s": round(tally.sent / wall, 1) if wall else None,
        "model_runs": getattr(stats, "runsStarted", None),
        "runs_skipped": getattr(stats, "runsSkipped", None),
        "server_alive_at_end": alive,
        "server_exit_code": exit_code,
        "server_stderr_tail": stderr_tail,
        "documents": args.docs,
        "max_tokens": args.max_tokens,
        "context_tokens": args.context_tokens,
        "model": args.model,
        "command": shlex.join([sys.executable, *sys.argv]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "workdir": str(workdir),
    }


async def wait_ready(client: Client, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = (await client.protocol.send_request_async("demi/stats", {})).status
        if status.state == "ready":
            return
        if status.state == "error":
            raise RuntimeError(f"the server could not load the model: {getattr(status, 'message', '')}")
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the model did not load in {limit_s:.0f} s")


async def stop(client: Client) -> tuple[int | None, str]:
    """shutdown, exit: the server's exit code (0 is a clean exit after shutdown) and the last of
    what it wrote to stderr (where a crash at exit says why)."""
    try:
        await asyncio.wait_for(client.shutdown_async(None), 30)
        client.exit(None)
        server = client._server
        if server is None:
            return None, ""
        code = await asyncio.wait_for(server.wait(), 30)
        err = b""
        if server.stderr is not None:
            err = await asyncio.wait_for(server.stderr.read(), 10)
        return code, err.decode("utf-8", "replace")[-3000:]
    finally:
        await client.stop()


def passed(r: dict[str, Any]) -> bool:
    return (
        r["unanswered"] == 0
        and r["server_alive_at_end"]
        and r["server_exit_code"] == 0
        and r["rss_growth_pct"] <= r["max_growth_pct"]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demi-tiny", help="model name or directory (default demi-tiny)")
    p.add_argument("--quant", default=None)
    p.add_argument("--context", type=int, default=None, help="the model's context length (--context of demi-lsp)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=500, help="RSS is compared with its value after this many")
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--context-tokens", type=int, default=256)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait for its answer")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before the last RSS reading")
    p.add_argument("--max-growth", type=float, default=10.0, help="allowed RSS growth after warmup, percent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.warmup >= args.requests:
        p.error("--warmup must be smaller than --requests")
    result = asyncio.run(soak(args))
    result["passed"] = passed(result)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
