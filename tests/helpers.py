"""Shared pieces of the CLI, chat UI and server tests, kept in one place so that every test agrees on
what "offline, no user config" means, how `demi` runs as a subprocess, what a tiny checkpoint is,
and how a scripted OpenAI-compatible server answers.

The scripted server stands in for a capable model: no random model writes a valid rewrite, and a
real server with a real model is not available to tests. It uses the standard library only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
from hf_models import save_family
from tokenizers_fixture import make_bytelevel_tokenizer

if TYPE_CHECKING:
    from demi.serve.server import ServerThread

# A small module for explain and refactor tests, and a valid rewrite of its `area` (what a capable
# model would return for "add type hints").
CODE = '''import math


def area(r):
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return 3.14 * r * r


def main():
    print(area(2))
'''
REWRITE = '''def area(r: float) -> float:
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return math.pi * r ** 2
'''


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The parent's environment without DEMI_/HF_/XDG_ settings, every user dir under `home`, offline:
    so a developer's own config or hub cache never leaks into a subprocess test."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DEMI_", "HF_", "XDG_"))}
    out.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_CACHE_HOME=str(home / "cache"),
        HF_HOME=str(home / "hf"),
        DEMI_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return out


def demi(env: dict[str, str], *args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m demi ARGS` as a user runs it (arguments may be paths or numbers)."""
    return subprocess.run(
        [sys.executable, "-m", "demi", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=cwd,
        timeout=120,
    )


def one_json(proc: subprocess.CompletedProcess) -> dict:
    """A successful `--json` run: exactly one JSON object on one line of stdout."""
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("\n") and proc.stdout.count("\n") == 1, proc.stdout
    obj = json.loads(proc.stdout)
    assert isinstance(obj, dict)
    return obj


def tiny_checkpoint(out: Path, family: str = "qwen2", **config: Any) -> Path:
    """A random-weight checkpoint of `family` with the byte-level tokenizer (FIM and ChatML tokens)."""
    save_family(family, out, **config)
    make_bytelevel_tokenizer(out)
    return out


def looping_checkpoint(out: Path, phrase: str = " the stock of") -> Path:
    """A tiny llama checkpoint that writes `phrase` over and over whatever the prompt, on every CPU.

    A random model's greedy text depends on the machine's float rounding, so whether it loops
    differs between CPUs. Here every layer's output projection is zero (the residual stream is the
    token's own embedding), the phrase's tokens have orthogonal embeddings and every other token
    shares one more, and the output head maps each phrase token to the next (any other token to the
    first) with a margin far above rounding."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tiny_checkpoint(out, "llama", max_position_embeddings=2048)
    ids = Tokenizer.from_file(str(out / "tokenizer.json")).encode(phrase, add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(out)
    hidden = model.config.hidden_size
    assert len(set(ids)) == len(ids) < hidden, f"{phrase!r} needs distinct tokens, fewer than {hidden}: {ids}"
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        embed[:, 0] = 1.0  # every token not in the phrase: direction 0
        head.zero_()
        head[ids[0], 0] = 1.0  # ... is followed by the phrase's first token
        for i, tok in enumerate(ids):
            embed[tok].zero_()
            embed[tok, i + 1] = 1.0
            head[ids[(i + 1) % len(ids)], i + 1] = 1.0
    model.save_pretrained(out)
    return out


@contextmanager
def serve(model: Any, **app_options: Any) -> Iterator[ServerThread]:
    """`demi serve`'s app for `model` on a background thread; the app and model ride on the handle
    so tests can inspect them. Imported here: the CLI tests need no web stack."""
    from demi.serve.server import ServerThread, create_app

    app = create_app(model, **app_options)
    with ServerThread(app) as srv:
        srv.app, srv.model = app, model
        yield srv


class ScriptedServer:
    """An OpenAI-compatible chat endpoint that streams one fixed reply in `piece`-character chunks,
    lists one model `model_id`, and records every request body."""

    def __init__(self, reply: str, model_id: str = "scripted", piece: int = 7):
        outer = self
        self.reply, self.requests = reply, []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": [{"id": model_id, "object": "model"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for i in range(0, len(outer.reply), piece):
                    chunk = {"choices": [{"index": 0, "delta": {"content": outer.reply[i : i + piece]}}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                usage = {"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 17}}
                for event in (end, usage):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def pinned_kernel() -> str:
    """The first native kernel path this CPU runs (else "torch"), for DEMI_KERNEL in subprocess tests
    that compare two runs' tokens: each run calibrates its own plan (one measured under load is not
    cached), and two native paths may round differently, so unpinned runs can differ by kernel."""
    from demi.model import native_kernels

    return next((p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None), "torch")


def load_script(path: Path) -> ModuleType:
    """A script that is not part of the package (a benchmark, an editor's build script), imported from
    its file under its stem's name (registered first, so its dataclasses can find their module)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
