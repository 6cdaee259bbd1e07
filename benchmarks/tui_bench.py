"""demi-chat's two latency goals, measured through `App.run_test()` on a real in-process engine.

    .venv/bin/python benchmarks/tui_bench.py [--model DIR] [--rounds 20] [--json out.json]

The model is the scaffolded random-weight 4M-parameter qwen2 (`python -m demi.model.scaffold DIR`,
the same as `make demo`'s; written to DIR when missing): the goals are about the screen, not the
prose. Both numbers run from the moment the key event exists (Textual stamps every event when it
is created) to the first screen refresh after it was handled, headless at 120x40:

1. first token: Enter in the message box -> the answer's first text painted (goal <= 300 ms);
   the message is a short question with one earlier exchange in the session, as in a real chat.
2. key while streaming: a printable key typed into the message box while a long answer streams
   -> the character painted (goal <= 50 ms). Keys are sent every 37 ms during the answer.

A real terminal adds its own write and paint time on top (small: Textual writes one frame's
diff); the numbers here are what the app itself costs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p95_ms": round(percentile(values, 95) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "mean_ms": round(statistics.fmean(values) * 1000, 1),
    }


async def measure(model_dir: Path, rounds: int, data: Path, key_target: int = 150) -> dict:
    from textual import events

    from demi.assistant.engines import open_engine
    from demi.tui.app import DemiChat
    from demi.tui.widgets import PromptInput

    engine = open_engine(str(model_dir))
    app = DemiChat(engine=engine, data_dir=data, root=ROOT, sidebar=True)
    app.config._values["chat.max_tokens"] = 48
    first_token: list[float] = []
    keys: list[float] = []
    tok_s: list[float] = []
    empty = 0
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        prompt = app.query_one(PromptInput)

        async def ask(text: str) -> None:
            prompt.load_text(text)
            await pilot.pause()
            before = app.last_job
            await pilot.press("enter")
            await app.workers.wait_for_complete()
            while app.job is not None or app.last_job is before:
                await pilot.pause()
            deadline = time.monotonic() + 1.0  # the paint stamp lands on the refresh after the last text
            while app.last_job.widget.text and app.last_job.first_paint_at is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)

        await ask("warm up: what does this project do?")
        for i in range(rounds):
            await ask(f"question {i}: how do I read a file line by line in Python?")
            job = app.last_job
            if job.first_paint_at is None:  # the random model ended at once: no first token to time
                empty += 1
                continue
            first_token.append(job.first_paint_at - job.submitted_at)
            if app.status.fields["speed"]:
                tok_s.append(float(app.status.fields["speed"].split()[0]))
            if i % 5 == 4:
                await pilot.press("ctrl+n")  # a fresh session now and then keeps the prompt short
                await pilot.pause()

        # keys while a long answer streams
        app.config._values["chat.max_tokens"] = 1200
        log: list[tuple[float, float]] = []

        def record(event_time: float) -> None:
            log.append((event_time, time.monotonic()))

        original = PromptInput._on_key

        async def timed(self, event):  # the bench's probe: stamp the first refresh after each key
            await original(self, event)
            if event.is_printable:
                self.call_after_refresh(record, event.time)

        PromptInput._on_key = timed
        try:
            topics = [
                "a parser",
                "a cache",
                "an HTTP client",
                "a CSV reader",
                "a thread pool",
                "a trie",
                "a JSON encoder",
                "a rate limiter",
                "a priority queue",
                "a tokenizer",
                "a state machine",
                "a diff tool",
                "a file watcher",
                "a retry decorator",
                "a config loader",
                "an LRU map",
            ]
            for r in range(40):  # answers until enough keys were typed into live streams
                if len(log) >= key_target:
                    break
                await pilot.press("ctrl+n")
                prompt.load_text(f"Write {topics[r % len(topics)]} in Python, with tests ({r}).")
                await pilot.press("enter")
                while app.job is not None and not app.job.widget.text:
                    await asyncio.sleep(0.002)
                sent = 0
                while app.job is not None and sent < 80:
                    app.post_message(events.Key("x", "x"))
                    sent += 1
                    await asyncio.sleep(0.037)
                if app.job is not None:
                    app.action_escape()
                await app.workers.wait_for_complete()
                await pilot.pause()
                prompt.load_text("")
        finally:
            PromptInput._on_key = original
        keys = [done - made for made, done in log]
    engine.close()
    return {
        "first_token": summary(first_token),
        "key_while_streaming": summary(keys),
        "samples": {
            "first_token_ms": [round(x * 1000, 1) for x in first_token],
            "key_ms": [[round(made, 4), round((done - made) * 1000, 1)] for made, done in log],
        },
        "decode_tok_s_p50": round(statistics.median(tok_s), 1) if tok_s else None,
        "empty_answers": empty,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        type=Path,
        default=ROOT / ".demi-build" / "demo-model",
        help="a model directory; the 4M random scaffold is written there when missing",
    )
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"scaffolding a 4M-parameter random model in {args.model} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "demi.model.scaffold", str(args.model)], check=True)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DEMI_DATA_DIR"] = tmp
        result = asyncio.run(measure(args.model, args.rounds, Path(tmp)))
    import torch

    result["machine"] = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_before": round(load_before, 2),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    result["model"] = str(args.model)
    ft, ks = result["first_token"], result["key_while_streaming"]
    print(
        f"first token after Enter : p50 {ft['p50_ms']} ms, p95 {ft['p95_ms']} ms, max {ft['max_ms']} ms "
        f"({ft['n']} answers; goal <= 300 ms)"
    )
    print(
        f"key while streaming     : p50 {ks['p50_ms']} ms, p95 {ks['p95_ms']} ms, max {ks['max_ms']} ms "
        f"({ks['n']} keys; goal <= 50 ms)"
    )
    print(
        f"decode speed (status bar): {result['decode_tok_s_p50']} tok/s median; {os.cpu_count()} CPUs, "
        f"load average {result['machine']['load_avg_1min_before']} before, "
        f"{result['machine']['load_avg_1min_after']} after (other work on the machine skews the numbers)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
