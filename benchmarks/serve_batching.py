"""Continuous batching in `demi serve`, measured: 4 concurrent clients against the same 4 requests
served one by one, side by side in one run.

Starts `demi serve` as a subprocess on 127.0.0.1 (a free port) with the Qwen2.5-Coder-0.5B-shaped
random-weight stand-in (benchmarks/qwen_standin.py; built into .demi-build/qwen-standin when missing)
in int8, or with `--tiny` the built-in demi-tiny. Each trial sends 4 different prompts to
/v1/completions (streaming, `ignore_eos`, `max_tokens` tokens each): once one after another
(`sequential`), once all 4 at the same moment from 4 threads (`concurrent`), in alternating order so
the machine's load falls on both alike. Every prompt starts with a per-trial nonce, so no request
finds its prompt in the server's prefix cache. Reported per mode: aggregate tokens per second (all
tokens over the wall time from the first request to the last token), each client's time to first
token and total time; and the ratio concurrent / sequential of the aggregates (the issue's goal:
>= 2.5x with 4 clients on the 0.5B shape). "No client's first token waits behind another's whole
answer" is checked as: the slowest concurrent first token against the fastest whole answer alone.

    .venv/bin/python benchmarks/serve_batching.py                      # 0.5B stand-in, int8
    .venv/bin/python benchmarks/serve_batching.py --tiny --trials 5    # demi-tiny, int8
    .venv/bin/python benchmarks/serve_batching.py --json out.json
    .venv/bin/python benchmarks/serve_batching.py --in-process          # the engine's terms of the ratio

`--in-process` loads the model here instead and times, alternated, the engine's terms of the ratio:
a prompt's prefill P, a lone decode step t1 and a 4-row batched step t4. With N new tokens a request,
the engine serving 4 one by one works 4P + 4N t1 and at once 4P + N t4: the ratio of those is what
batching gives where the server adds nothing (its own per-token work, also shared by a batch, comes on
top), and (4P + 4N t1) / (4P + N t1) what it would give if a batched step cost no more than a lone one
(the prefill, paid either way, caps it). The server's measured ratio against the engine's shows what
serving several requests at once costs beyond the engine.

Only the standard library on the client side (http.client, threads).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STANDIN = ROOT / ".demi-build" / "qwen-standin"
CLIENTS = 4

# Four different pieces of code to continue (54 to 76 tokens on Qwen's tokenizer, with the nonce).
PROMPTS = [
    "import json\nfrom pathlib import Path\n\n\ndef load_settings(path: Path) -> dict:\n"
    '    """Read the settings file, falling back to defaults for missing keys."""\n'
    "    defaults = {'theme': 'dark', 'font_size': 12, 'autosave': True}\n    if not path.exists():\n",
    "class LRUCache:\n    def __init__(self, capacity: int) -> None:\n        self.capacity = capacity\n"
    "        self.items: dict[str, int] = {}\n        self.order: list[str] = []\n\n"
    "    def get(self, key: str) -> int | None:\n        if key not in self.items:\n",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
    '    """Merge two sorted lists into one sorted list in linear time."""\n'
    "    out: list[int] = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n",
    "async def fetch_all(client, urls: list[str]) -> list[bytes]:\n"
    "    results: list[bytes] = []\n    for url in urls:\n        response = await client.get(url)\n"
    "        response.raise_for_status()\n",
]


def cpu_description() -> dict[str, Any]:
    """The CPU (lscpu's model name and flags) and the load average, for the results file."""
    info: dict[str, Any] = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Flags"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


class Server:
    """`demi serve` as a subprocess; its URL from the JSON line it prints when ready."""

    def __init__(self, model: str, quant: str, parallel: int, context: int, threads: int | None):
        cmd = [sys.executable, "-m", "demi", "serve", "--json", "--port", "0", "--model", model]
        cmd += ["--quant", quant, "--parallel", str(parallel), "--context", str(context)]
        env = dict(os.environ)
        if threads:
            env["DEMI_THREADS"] = str(threads)
        self.command = " ".join([f"DEMI_THREADS={threads}"] * bool(threads) + ["demi", *cmd[3:]])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise SystemExit(f"demi serve did not start: {err.strip()[-2000:]}")
        ready = json.loads(line)
        self.host, self.port = ready["host"], int(ready["port"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def complete(server: Server, prompt: str, max_tokens: int, start: threading.Event | None = None) -> dict[str, Any]:
    """One streamed /v1/completions request: its start, first-token and end times and token count."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    body = json.dumps(
        {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    )
    if start is not None:
        start.wait()
    began = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"the server answered {resp.status}: {resp.read()[:500]!r}")
    first, tokens, text = None, 0, []
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            tokens = int(event["usage"]["completion_tokens"])
        for choice in event.get("choices", []):
            if choice.get("text"):
                text.append(choice["text"])
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    conn.close()
    return {"began": began, "first": (first or end) - began, "end": end, "tokens": tokens, "text": "".join(text)}


def same_text_check(server: Server, max_tokens: int) -> bool:
    """Whether 4 prompts answered at once (batched) give the texts they give one by one. Both runs
    must prefill from scratch: between them, 4 requests with no token in common with anything
    (the prefix cache then hands each one the least recently used slot) push the first answers out
    of the server's 4 prefix-cache slots."""
    prompts = [f"# check {i}\n{p}" for i, p in enumerate(PROMPTS)]
    together = concurrent(server, prompts, max_tokens)["texts"]
    for word in ("Alpha", "Bravo", "Charlie", "Delta"):
        complete(server, f"{word} {word.lower()} {word.upper()}\n", 2)
    alone = sequential(server, prompts, max_tokens)["texts"]
    return together == alone


def sequential(server: Server, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    results = [complete(server, p, max_tokens) for p in prompts]
    return summarize(results)


def concurrent(server: Server, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    start = threading.Event()
    results: list[dict[str, Any] | None] = [None] * len(prompts)

    def client(i: int) -> None:
        results[i] = complete(server, prompts[i], max_tokens, start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    time.sleep(0.05)  # every client is waiting on the event
    start.set()
    for t in threads:
        t.join()
    return summarize([r for r in results if r is not None])


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    wall = max(r["end"] for r in results) - min(r["began"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tok_per_s": round(tokens / wall, 2),
        "first_token_s": [round(r["first"], 3) for r in results],
        "answer_s": [round(r["end"] - r["began"], 3) for r in results],
        "texts": [r["text"] for r in results],
    }


def in_process(model_dir: str, quant: str, max_tokens: int, reps: int = 15) -> dict[str, Any]:
    """Medians (ms) of a 70-token prompt's prefill, a lone decode step and a 4-row `decode_batch`
    step, alternated in rounds in this process, and the engine's ratios they give for `max_tokens`."""
    import torch

    from demi.model.batch import decode_batch
    from demi.model.decoder import KVCache
    from demi.model.engine import LocalModel
    from demi.model.generate import prefill as prefill_prompt

    model = LocalModel.load(model_dir, quant=quant, context=1024).model
    gen = torch.Generator().manual_seed(0)
    vocab, length = model.config.vocab_size, 70
    caches = [KVCache(model.config, 1024, dtype=model.dtype, device=model.device) for _ in range(CLIENTS)]
    prompts = [torch.randint(0, vocab, (1, length), generator=gen) for _ in range(CLIENTS)]
    tokens = torch.randint(0, vocab, (CLIENTS,), generator=gen)

    def prefill() -> None:  # as a request's: the last row's logits only
        caches[0].length = 0
        prefill_prompt(model, prompts[0], 0, caches[0])

    def lone() -> None:
        model(tokens[:1].view(1, 1), length, caches[0])
        caches[0].length = length

    def batched() -> None:
        decode_batch(model, tokens, [length] * CLIENTS, caches)
        for c in caches:
            c.length = length

    times: dict[str, list[float]] = {"prefill": [], "lone": [], "batched": []}
    with torch.inference_mode():
        for p, c in zip(prompts, caches):
            prefill_prompt(model, p, 0, c)
        for _ in range(reps):  # alternated, so the machine's moods fall on all three alike
            for name, fn in (("prefill", prefill), ("lone", lone), ("batched", batched)):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    med = {name: round(statistics.median(ts), 2) for name, ts in times.items()}
    p, t1, t4, n, c = med["prefill"], med["lone"], med["batched"], max_tokens, CLIENTS
    return {
        "prompt_tokens": length,
        "new_tokens": n,
        "prefill_ms": p,
        "lone_step_ms": t1,
        "batched_step_ms": t4,
        "batched_over_lone": round(t4 / t1, 2),
        "engine_ratio": round((c * p + c * n * t1) / (c * p + n * t4), 2),
        "engine_ratio_if_batch_step_free": round((c * p + c * n * t1) / (c * p + n * t1), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="demi-tiny instead of the 0.5B stand-in")
    ap.add_argument("--model", default=None, help="a model directory or name (default: the stand-in)")
    ap.add_argument("--quant", default="int8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=3, help="pairs of (sequential, concurrent) runs")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="the server's DEMI_THREADS (default: its own choice)")
    ap.add_argument("--json", default=None, help="write every measurement to this file")
    ap.add_argument("--in-process", action="store_true", help="time the engine's terms here instead (see above)")
    args = ap.parse_args()

    model = args.model or ("demi-tiny" if args.tiny else str(STANDIN))
    if not args.tiny and args.model is None and not (STANDIN / "config.json").exists():
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "qwen_standin.py"), "--out", str(STANDIN)], check=True
        )
    cpu = cpu_description()
    print(f"cpu: {cpu.get('model_name')} ({cpu['cores']} cores), load average {cpu['load_average']}", flush=True)
    if args.in_process:
        terms = in_process(model, args.quant, args.max_tokens)
        print(json.dumps(terms), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"cpu": cpu, **terms}, indent=2) + "\n")
        return 0
    server = Server(model, args.quant, CLIENTS, args.context, args.threads)
    trials: list[dict[str, Any]] = []
    try:
        complete(server, "def warm_up():\n", 8)  # kernels built, plan loaded
        for trial in range(args.trials):
            order = ("sequential", "concurrent") if trial % 2 == 0 else ("concurrent", "sequential")
            row: dict[str, Any] = {"load_before": [round(x, 2) for x in os.getloadavg()]}
            for mode in order:
                # a nonce per trial and mode: every request prefills its whole prompt (no prefix-cache hit)
                prompts = [f"# request {trial}-{mode[:3]}-{i}\n{p}" for i, p in enumerate(PROMPTS)]
                row[mode] = (sequential if mode == "sequential" else concurrent)(server, prompts, args.max_tokens)
            seq, con = row["sequential"], row["concurrent"]
            row["ratio"] = round(con["tok_per_s"] / seq["tok_per_s"], 2)
            row["slowest_first_token_s"] = max(con["first_token_s"])
            row["fastest_answer_alone_s"] = min(seq["answer_s"])
            trials.append(row)
            print(
                f"trial {trial + 1}: one by one {seq['tok_per_s']:.1f} tok/s ({seq['wall_s']:.1f} s), "
                f"4 at once {con['tok_per_s']:.1f} tok/s ({con['wall_s']:.1f} s): {row['ratio']:.2f}x; "
                f"first tokens at once {con['first_token_s']} s (one answer alone takes "
                f">= {row['fastest_answer_alone_s']:.2f} s); load {row['load_before']}",
                flush=True,
            )
        same_text = same_text_check(server, args.max_tokens)
        print(f"greedy texts answered 4 at once equal the texts answered one by one: {same_text}", flush=True)
    finally:
        server.close()
    ratios = [t["ratio"] for t in trials]
    summary = {
        "command": " ".join(["python", *sys.argv]),
        "server": server.command,
        "model": model,
        "cpu": cpu,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "same_text_batched_and_alone": same_text,
        "first_token_never_behind_a_whole_answer": all(
            t["slowest_first_token_s"] < t["fastest_answer_alone_s"] for t in trials
        ),
        "trials": [{k: v for k, v in t.items()} for t in trials],
    }
    for t in summary["trials"]:
        for mode in ("sequential", "concurrent"):
            t[mode] = {k: v for k, v in t[mode].items() if k != "texts"}
    print(
        f"median ratio {summary['ratio_median']:.2f}x over {len(ratios)} trials {ratios}; "
        f"first token never behind a whole answer: {summary['first_token_never_behind_a_whole_answer']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
