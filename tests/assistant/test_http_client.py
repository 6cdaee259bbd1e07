"""The one HTTP client (assistant/http_client.py) against small real servers on 127.0.0.1: pooled
keep-alive connections, proxies from the environment, Server-Sent Events, cancellation by closing
the stream, time budgets, client-side stop strings, and one-line errors from every error shape."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_servers import Handler, Route, Server, chunks, models

from demi.assistant.engines import CancelToken, HttpEngine, _StopCut
from demi.assistant.http_client import HttpClient, ServerError, ServerUnreachableError, error_message
from demi.model.errors import DemiUserError


@pytest.fixture
def make_server() -> Iterator[Callable[[dict[tuple[str, str], Route]], Server]]:
    made: list[Server] = []

    def make(routes: dict[tuple[str, str], Route]) -> Server:
        made.append(Server(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_one_pooled_connection_for_many_requests(make_server):
    srv = make_server({("GET", "/v1/models"): models})
    with HttpClient(srv.url + "/v1") as client:
        for _ in range(5):
            assert client.get_json("/v1/models")["data"][0]["id"] == "m"
    assert len(srv.connections) == 1  # keep-alive: one TCP connection (one TLS handshake on https)
    assert all(h.get("User-Agent") == "demi" for *_, h in srv.seen)


def test_api_key_and_paths_below_a_prefix(make_server):
    srv = make_server({("GET", "/proxy/v1/models"): models})
    with HttpClient(srv.url + "/proxy/v1/", api_key="k1") as client:  # a server behind a path prefix
        assert client.get_json("/v1/models")["data"]
    assert srv.seen[-1][3]["Authorization"] == "Bearer k1"


def test_proxies_come_from_the_environment(make_server, monkeypatch):
    """HTTP_PROXY is honoured (httpx's trust_env): the request goes to the proxy with the absolute URL."""
    proxy = make_server({})
    proxy.routes[("GET", "http://model-box.invalid:8000/v1/models")] = models
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with HttpClient("http://model-box.invalid:8000") as client:
        assert client.get_json("/v1/models")["data"][0]["id"] == "m"
    assert proxy.seen[-1][1] == "http://model-box.invalid:8000/v1/models"


def test_tls_is_verified_by_default(tmp_path, monkeypatch):
    """A self-signed certificate is refused with a one-line reason; trusted through SSL_CERT_FILE it works."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl makes the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = Server({("GET", "/v1/models"): models})
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    url = srv.url.replace("http://", "https://")
    try:
        with HttpClient(url) as client, pytest.raises(ServerUnreachableError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get_json("/v1/models")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with HttpClient(url) as client:
            assert client.get_json("/v1/models")["data"][0]["id"] == "m"
    finally:
        srv.close()


def test_events_and_done(make_server):
    srv = make_server({("POST", "/v1/completions"): chunks(["a", "b", "c"])})
    with HttpClient(srv.url) as client:
        got = list(client.events("/v1/completions", {"prompt": "x"}))
    assert [c["choices"][0]["text"] for c in got[:3]] == ["a", "b", "c"] and got[-1]["usage"]["prompt_tokens"] == 11


def test_cancel_closes_the_stream_promptly(make_server):
    srv = make_server({("POST", "/v1/completions"): chunks(["tok "] * 200, delay=0.05)})
    cancel = CancelToken()
    seen: list[str] = []

    def on_text(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.cancel()

    engine = HttpEngine(srv.url, "m", kind="openai")
    started = time.monotonic()
    res = engine.complete("x", on_text=on_text, max_new_tokens=200, cancel=cancel)
    assert res.finish_reason == "cancelled" and len(seen) <= 4
    assert time.monotonic() - started < 2.0  # not the 10 s the whole answer takes
    deadline = time.monotonic() + 5
    while not any(m == "CLOSED" for m, *_ in srv.seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(m == "CLOSED" for m, *_ in srv.seen)  # the server saw the stream closed: it stops generating


def test_a_silent_server_is_cut_by_the_time_budget(make_server):
    def silent(h: Handler, _: Any) -> None:
        h.start_events()
        time.sleep(3)

    srv = make_server({("POST", "/v1/completions"): silent, ("GET", "/v1/models"): models})
    engine = HttpEngine(srv.url, "m", kind="openai")
    started = time.monotonic()
    res = engine.complete("x", max_new_tokens=5, time_budget=0.3)
    assert res.finish_reason == "time" and res.text == "" and time.monotonic() - started < 1.5


def test_stop_strings_are_enforced_on_the_client(make_server):
    """Pieces that split a stop string are held back; the stream is closed at the stop."""
    srv = make_server({("POST", "/v1/completions"): chunks(["ret", "urn x<|fi", "m_pad|>more", " text"])})
    engine = HttpEngine(srv.url, "m", kind="openai")
    pieces: list[str] = []
    res = engine.complete("x", on_text=pieces.append, stop=["\n\n", "<|fim_pad|>"], max_new_tokens=9)
    assert res.text == "return x" and "".join(pieces) == "return x" and res.finish_reason == "stop"
    assert "<" not in "".join(pieces)


def test_stop_cut_holds_partial_matches():
    cut = _StopCut(["<|im_end|>", "\n"])
    assert cut.push("abc<|im") == "abc" and cut.push("_e") == "" and cut.push("x") == "<|im_ex"
    assert cut.push("y<|im_end|>z") == "y" and cut.hit


def test_chat_stops_at_end_of_turn_text(make_server):
    """A server that lets `<|im_end|>` through as text: the answer still ends there."""

    def chat(h: Handler, body: Any) -> None:
        h.start_events()
        for p in ["Hi", " there<|im_", "end|>", "<|im_start|>user"]:
            h.event({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
        h.wfile.write(b"data: [DONE]\n\n")

    srv = make_server({("POST", "/v1/chat/completions"): chat, ("GET", "/v1/models"): models})
    from demi.assistant.prompts import ChatPrompt

    res = HttpEngine(srv.url, "m", kind="openai").chat(ChatPrompt([{"role": "user", "content": "hi"}], "hi"))
    assert res.text == "Hi there" and res.finish_reason == "stop"


@pytest.mark.parametrize(
    "payload,expected",
    [
        ({"error": {"message": "This model's maximum context length is 2048 tokens", "type": "x"}}, "maximum context"),
        ({"object": "error", "message": "suffix is not currently supported", "type": "BadRequestError"}, "suffix is"),
        ({"error": "Input validation error: `temperature` must be strictly positive", "error_type": "validation"},
         "`temperature`"),
        ({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}, "field required"),
        ({"error": {"code": 501, "message": "This server does not support infill.", "type": "not_supported_error"}},
         "infill"),
    ],
)  # fmt: skip
def test_error_shapes_become_one_line(make_server, payload, expected):
    assert expected in error_message(payload)
    srv = make_server({("POST", "/v1/completions"): lambda h, _: h.send_json(400, payload)})
    engine = HttpEngine(srv.url, "m", kind="openai")
    with pytest.raises(DemiUserError, match=rf"answered 400: .*{expected[:6]}") as info:
        engine.complete("x", max_new_tokens=1)
    assert "\n" not in str(info.value)


def test_server_faults_are_runtime_errors(make_server):
    srv = make_server({("POST", "/v1/completions"): lambda h, _: h.send_json(503, {"error": "overloaded"})})
    with pytest.raises(ServerError, match="answered 503: overloaded"):
        HttpEngine(srv.url, "m", kind="openai").complete("x", max_new_tokens=1)


def test_an_error_event_mid_stream(make_server):
    def broken(h: Handler, _: Any) -> None:
        h.start_events()
        h.event({"choices": [{"index": 0, "text": "a"}]})
        h.event({"error": {"message": "CUDA out of memory"}})

    srv = make_server({("POST", "/v1/completions"): broken})
    with pytest.raises(ServerError, match="CUDA out of memory"):
        HttpEngine(srv.url, "m", kind="openai").complete("x", max_new_tokens=3)


def test_unreachable_and_bad_urls():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerUnreachableError, match=rf"cannot reach the server at http://127.0.0.1:{port}"):
        HttpEngine(f"http://127.0.0.1:{port}", connect_timeout=1).complete("x", max_new_tokens=1)
    for bad in ("ftp://x", "http://", "http://host:port"):
        with pytest.raises(DemiUserError, match="bad server URL"):
            HttpClient(bad)
    with pytest.raises(DemiUserError, match="unknown server kind"):
        HttpEngine("http://127.0.0.1:9", kind="triton")
