"""`demi complete`, `demi explain`, `demi doctor` and demi-lsp's inline completion through real servers
that run here: llama.cpp's `llama-server` and llama-cpp-python's server (both built from the
llama-cpp-python 0.3.36 sdist, see tests/peers.py) and `demi serve`.

Each server is started on 127.0.0.1 with a tiny model: Qwen2.5-Coder's real tokenizer with random
weights (benchmarks/qwen_standin.py --tiny), as a checkpoint for `demi serve` and converted to GGUF by
the sdist's convert_hf_to_gguf.py for the other two. A recording proxy in front of each keeps what
reached the server; a 200 proves nothing, so each test checks that the suffix reached the server in
the form that server honours, with the server's own word for it:

- llama-server: `/infill` with `input_suffix`; the server's rendered prompt (its `prompt` field) has
  `<|fim_suffix|>` then the suffix, and `tokens_evaluated` counts its tokens. Beside it, the request
  the old client sent (`suffix` on /v1/completions) is shown to be evaluated without the suffix.
- llama-cpp-python: the FIM prompt built by the client, sent as `prompt`; the server's tokenizer
  (/extras/tokenize) reads the FIM markers as single special tokens, and the server's `usage`
  counts exactly those tokens.
- demi serve: `suffix` on /v1/completions; the server's job record (/v1/demi/stats) counts the tokens
  of the FIM prompt built from prefix and suffix.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import peers
import pytest
from api_servers import RecordingProxy

from demi.assistant.fim import detect_fim
from demi.assistant.generation import build_fim
from demi.model.tokenizer import Tokenizer

KINDS = ["llama.cpp", "llama-cpp-python", "demi"]
CONTEXT = 2048
CODE = """import math


def area(r):
    return math.pi * r


def circumference(r):
    return 2 * math.pi * r


print(area(2), circumference(2))
"""
AT = (5, 12)  # 1-based: after "    return "
PREFIX = "".join(CODE.splitlines(keepends=True)[: AT[0] - 1]) + "    return "
SUFFIX = CODE[len(PREFIX) :]


@dataclass
class Peer:
    kind: str
    url: str  # the server itself
    proxy: RecordingProxy  # what clients are pointed at
    process: subprocess.Popen
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, path: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} did not become ready: {log.read_text(errors='replace')[-2000:]}")


def _demi_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMI_")}
    env.update({"DEMI_CONFIG": str(tmp / "none.toml"), "DEMI_DATA_DIR": str(tmp / "data"), "DEMI_THREADS": "1"})
    return env


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return peers.tiny_model_dir()


@pytest.fixture(scope="module")
def tokenizer(tiny_dir) -> Tokenizer:
    return Tokenizer.from_dir(tiny_dir)


@pytest.fixture(scope="module", params=KINDS)
def peer(request, tiny_dir, tmp_path_factory) -> Iterator[Peer]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"peer-{kind}")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    env = _demi_env(tmp)
    if kind == "llama.cpp":
        binary = peers.require_llama_server()
        gguf = peers.tiny_gguf()
        cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", str(CONTEXT),
               "-b", "512", "-ub", "512", "-np", "1", "-t", "2", "--no-webui", "-a", peers.TINY_MODEL]  # fmt: skip
        ready = "/health"
    elif kind == "llama-cpp-python":
        python = peers.require_llama_cpp_python()
        gguf = peers.tiny_gguf()
        cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", peers.TINY_MODEL,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT), "--n_threads", "2"]  # fmt: skip
        ready = "/v1/models"
        env.update(peers.llama_cpp_python_env())  # where its bindings find libllama
    else:
        cmd = [sys.executable, "-m", "demi", "serve", "--model", str(tiny_dir), "--port", str(port),
               "--context", str(CONTEXT), "--quant", "none"]  # fmt: skip
        ready = "/health"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(url, ready, proc, log)
        proxy = RecordingProxy(url)
        yield Peer(kind, url, proxy, proc, log)
        proxy.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    (root / "geometry.py").write_text(CODE, encoding="utf-8")
    (root / "units.py").write_text("SCALE = 1000\n\n\ndef to_mm(m):\n    return m * SCALE\n", encoding="utf-8")
    return root


def demi(peer: Peer, tmp: Path, *args: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "demi", *args, "--server", peer.proxy.url, "--json"],
        capture_output=True,
        text=True,
        env=_demi_env(tmp),
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def _fim_requests(peer: Peer) -> list[dict[str, Any]]:
    return peer.proxy.posted("/infill") if peer.kind == "llama.cpp" else peer.proxy.posted("/v1/completions")


def check_suffix_honoured(peer: Peer, body: dict[str, Any], tok: Tokenizer, suffix_head: str) -> None:
    """The suffix reached the server in the form it honours, in the server's own words."""
    if peer.kind == "llama.cpp":
        assert body["input_suffix"].startswith(suffix_head) and body["cache_prompt"] is True
        assert "suffix" not in body and body["input_prefix"].endswith("return ")
        replay = httpx.post(peer.url + "/infill", json={**body, "stream": False, "cache_prompt": False}, timeout=60)
        done = replay.json()
        rendered = done["prompt"]  # the prompt the server built and evaluated
        assert "<|fim_suffix|>" + body["input_suffix"] in rendered and rendered.endswith("<|fim_middle|>")
        assert rendered.index("<|fim_prefix|>") < rendered.index("<|fim_suffix|>")
        ids = httpx.post(peer.url + "/tokenize", json={"content": rendered, "parse_special": True}).json()["tokens"]
        assert done["tokens_evaluated"] == len(ids)
        assert ids.count(tok.token_to_id("<|fim_suffix|>")) == 1  # one special token, not its characters
        # what the old client sent: `suffix` on /v1/completions, evaluated without the suffix
        old = httpx.post(
            peer.url + "/v1/completions",
            json={"prompt": body["input_prefix"], "suffix": body["input_suffix"], "max_tokens": 1, "temperature": 0},
            timeout=60,
        ).json()
        alone = httpx.post(peer.url + "/tokenize", json={"content": body["input_prefix"]}).json()["tokens"]
        assert old["usage"]["prompt_tokens"] == len(alone) < done["tokens_evaluated"]
    elif peer.kind == "llama-cpp-python":
        prompt = body["prompt"]
        assert "suffix" not in body and "<|fim_suffix|>" + suffix_head in prompt and prompt.endswith("<|fim_middle|>")
        ids = httpx.post(peer.url + "/extras/tokenize", json={"input": prompt}).json()["tokens"]
        for marker in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"):
            assert ids.count(tok.token_to_id(marker)) == 1, marker
        cut = ids.index(tok.token_to_id("<|fim_suffix|>"))
        between = ids[cut + 1 : ids.index(tok.token_to_id("<|fim_middle|>"))]
        text = httpx.post(peer.url + "/extras/detokenize", json={"tokens": between}).json()["text"]
        assert text.startswith(suffix_head)
        replay = httpx.post(peer.url + "/v1/completions", json={**body, "stream": False, "max_tokens": 1}, timeout=60)
        assert replay.json()["usage"]["prompt_tokens"] == len(ids)  # what the server evaluated
    else:
        assert body["suffix"].startswith(suffix_head) and body["prompt"].endswith("return ")
        jobs = httpx.get(peer.url + "/v1/demi/stats").json()["recent"]
        built = build_fim(tok, detect_fim(tok), body["prompt"], body["suffix"])
        assert "<|fim_suffix|>" + body["suffix"] in str(built.prompt)
        assert len(tok.encode(str(built.prompt))) in [j["prompt_tokens"] for j in jobs]


def test_complete_sends_the_suffix_the_server_honours(peer, project, tmp_path, tokenizer):
    before = len(_fim_requests(peer))
    out = demi(peer, tmp_path, "complete", str(project / "geometry.py"), "--at", f"{AT[0]}:{AT[1]}",
               "--context-file", str(project / "units.py"), "--max-tokens", "8", "--no-history")  # fmt: skip
    assert out["line"] == AT[0] and isinstance(out["completion"], str) and out["prompt_tokens"] > 0
    assert out["fim"] == ("qwen2.5-coder" if peer.kind == "llama-cpp-python" else "server")
    sent = _fim_requests(peer)[before:]
    assert len(sent) == 1
    body = sent[0]
    check_suffix_honoured(peer, body, tokenizer, SUFFIX[:40])
    if peer.kind == "llama.cpp":  # the other file goes as input_extra, by name
        assert [e["filename"] for e in body["input_extra"]] == [str(project / "units.py")] or any(
            "units.py" in e["filename"] for e in body["input_extra"]
        )
    elif peer.kind == "llama-cpp-python":  # Qwen2.5-Coder's repository format, built here
        assert "<|file_sep|>" in body["prompt"] and "SCALE = 1000" in body["prompt"]


def test_explain_goes_through_the_chat_route(peer, project, tmp_path):
    before = len(peer.proxy.posted("/v1/chat/completions"))
    out = demi(peer, tmp_path, "explain", str(project / "geometry.py"), "--symbol", "area", "--max-tokens", "8",
               "--no-history")  # fmt: skip
    assert "area" in out["explanation"] and out["symbol"] == "area"
    sent = peer.proxy.posted("/v1/chat/completions")[before:]
    assert len(sent) == 1 and sent[0]["stream"] is True
    assert any("def area(r)" in str(m.get("content")) for m in sent[0]["messages"])


def test_doctor_reports_the_server(peer, tmp_path):
    out = demi(peer, tmp_path, "doctor")
    server = out["server"]
    assert server["ok"] and server["kind"] == peer.kind and server["detected"] is True
    assert server["round_trip_ms"] > 0 and server["model"]
    assert server["fim"] == {"llama.cpp": "/infill", "demi": "suffix"}.get(peer.kind, "built here (qwen2.5-coder)")


def test_lsp_inline_completion(peer, project, tmp_path, tokenizer):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lsp"))
    from lsp_support import inline_params, open_doc, server_env, start_client, stats, stop_client

    async def run() -> dict[str, Any]:
        cmd = [sys.executable, "-m", "demi.lsp.server", "--server", peer.proxy.url]
        client = await start_client(cmd, server_env(tmp_path), project, init_options={"maxTokens": 8})
        try:
            uri = (project / "geometry.py").as_uri()
            open_doc(client, uri, CODE)
            result = await client.text_document_inline_completion_async(inline_params(uri, AT[0] - 1, AT[1] - 1))
            assert isinstance(result.items, (list, tuple))
            return await stats(client)
        finally:
            await stop_client(client)

    before = len(_fim_requests(peer))
    s = asyncio.run(run())
    status = s["status"]
    assert status["engine"] == "http" and status["serverKind"] == peer.kind and status["roundTripMs"] > 0
    assert status["server"] == peer.proxy.url and status["serverModel"]
    sent = _fim_requests(peer)[before:]
    assert len(sent) == 1
    check_suffix_honoured(peer, sent[0], tokenizer, SUFFIX[:40])
