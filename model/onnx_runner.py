"""Run a decoder exported by onnx_export.py with onnxruntime on the CPU: prefill, then decode steps
that feed each step's presents back as the next step's pasts.

The cache stays in onnxruntime's own tensors (`OrtValue`) between steps, so only the logits come
back to Python. `greedy` is the reference for tests (the same tokens as Demi's engine), and
`time_generation` measures the same figures as bench.py's (TTFT, prefill and decode rates,
per-token latency percentiles) for `demi bench --engine onnxruntime`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from demi.model.errors import DemiUserError
from demi.model.onnx_export import MANIFEST, require_onnx


class OnnxDecoderSession:
    """One exported graph (`variant` fp32 or int8) in an onnxruntime session on `threads` threads."""

    def __init__(self, onnx_dir: str | Path, variant: str = "fp32", threads: int | None = None):
        require_onnx()
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        try:
            self.manifest: dict[str, Any] = json.loads((onnx_dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DemiUserError(f"{onnx_dir}: not a Demi ONNX export ({MANIFEST} unreadable: {exc})") from None
        files = self.manifest["files"]
        if variant not in files:
            raise DemiUserError(f"{onnx_dir}: no {variant} graph; it has {', '.join(files)}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings on the user's terminal
        self.session = ort.InferenceSession(
            str(onnx_dir / files[variant]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.ort = ort
        self.variant = variant
        self.inputs: list[str] = self.manifest["inputs"]
        self.outputs: list[str] = self.manifest["outputs"]

    def empty_past(self, batch: int = 1) -> list[Any]:
        """Pasts of length 0 (a prefill's), one key and one value per layer."""
        m = self.manifest
        empty = np.zeros((batch, m["kv_heads"], 0, m["head_dim"]), dtype=np.float32)
        return [self.ort.OrtValue.ortvalue_from_numpy(empty) for _ in self.inputs[1:]]

    def step(self, ids: np.ndarray, past: list[Any]) -> tuple[np.ndarray, list[Any]]:
        """Logits [B, T, V] (numpy) for token ids [B, T] after `past` (OrtValues), and the presents."""
        feed = {"input_ids": self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(ids, dtype=np.int64))}
        feed.update(zip(self.inputs[1:], past))
        out = self.session.run_with_ort_values(self.outputs, feed)
        return out[0].numpy(), list(out[1:])

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits [T, V] of a whole sequence in one pass."""
        return self.step(np.array([ids]), self.empty_past())[0][0]

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        """`new_tokens` greedy tokens after `prompt`: one prefill, then one decode step per token."""
        logits, past = self.step(np.array([prompt]), self.empty_past())
        out: list[int] = []
        while len(out) < new_tokens:
            out.append(int(logits[0, -1].argmax()))
            if len(out) < new_tokens:
                logits, past = self.step(np.array([[out[-1]]]), past)
        return out


def time_generation(session: OnnxDecoderSession, prompt: list[int], new_tokens: int, runs: int = 3) -> dict:
    """TTFT, prefill and decode rates and per-token latencies over `runs` runs (after a warm-up),
    measured as bench.time_generation measures Demi's engine."""
    session.greedy(prompt, 4)  # warm-up: allocations, the thread pool
    ttfts, rates, steps = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        logits, past = session.step(np.array([prompt]), session.empty_past())
        stamps = [time.perf_counter()]
        token = int(logits[0, -1].argmax())
        for _ in range(new_tokens - 1):
            logits, past = session.step(np.array([[token]]), past)
            token = int(logits[0, -1].argmax())
            stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - t0)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        steps.extend(gaps)
        rates.append(len(gaps) / sum(gaps) if gaps else 0.0)
    steps.sort()

    def pct(q: int) -> float | None:
        return 1e3 * steps[min(len(steps) - 1, round(q / 100 * (len(steps) - 1)))] if steps else None

    return {
        "ttft_ms": 1e3 * statistics.median(ttfts),
        "prefill_tok_s": len(prompt) / statistics.median(ttfts),
        "decode_tok_s": statistics.median(rates),
        **{f"p{q}_ms": pct(q) for q in (50, 95, 99)},
    }


def bench_prompt(vocab_size: int, tokens: int, seed: int = 0) -> list[int]:
    """bench.py's prompt: `tokens` ids drawn from [10, min(vocab, 4000)) with seed `seed`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, min(vocab_size, 4000), (tokens,), generator=gen).tolist()


def bench_onnx(
    onnx_dir: str | Path, variants: tuple[str, ...], prompt_tokens: int, new_tokens: int, runs: int, threads: int
) -> dict[str, Any]:
    """bench.py's figures for each graph of an export, on `threads` threads, with bench.py's prompt."""
    out: dict[str, Any] = {}
    for variant in variants:
        session = OnnxDecoderSession(onnx_dir, variant, threads)
        prompt = bench_prompt(session.manifest["vocab_size"], prompt_tokens)
        out[variant] = time_generation(session, prompt, new_tokens, runs)
        out[variant]["file_bytes"] = _graph_bytes(Path(onnx_dir) / session.manifest["files"][variant])
        del session
    return out


def _graph_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)
