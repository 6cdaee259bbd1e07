"""`demi serve` over real HTTP: a uvicorn server on 127.0.0.1 in a background thread of the test
process, against a tiny random qwen2 model with the byte-level tokenizer (FIM and ChatML tokens, a
chat template), and a second server on a scripted engine whose speed the tests control (fairness,
queueing, cancellation) and whose tokenizer has neither FIM tokens nor a chat template. One test
runs `python -m demi serve` as a user would (ready line, --json, API key from the environment,
refusing a non-loopback address without a key, Ctrl-C).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from helpers import serve, tiny_checkpoint
from tokenizers_fixture import make_llama_tokenizer

from demi.assistant.fim import detect_fim
from demi.model.check_cost import Price, check_cost
from demi.model.engine import Completion, LocalModel
from demi.model.healing import split_heal
from demi.serve.api import ChatRequest
from demi.serve.server import ModelInfo, prepare_chat

PROMPT = "def add(a, b):"
CONTEXT = 4096


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen2-serve"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def ref(model_dir) -> LocalModel:
    """A separate instance for reference outputs (the server's model belongs to its worker thread)."""
    return LocalModel.load(str(model_dir), context=CONTEXT)


@pytest.fixture(scope="module")
def server(model_dir):
    lm = LocalModel.load(str(model_dir), context=CONTEXT)
    # checks priced at nothing: this tiny model's steps are so short that the engine, pricing checks by
    # its own timings, might rightly stop drafting; the server's speculation path is what is tested
    check_cost(lm.model).pin(Price(fixed=0.0, row=0.0))
    with serve(lm) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


class ScriptedModel:
    """An engine with the LocalModel.stream API: one token "a" every `delay` seconds (the sleep stands
    in for compute on the worker thread), two KV slots, and a record of what it started."""

    max_streams = 2

    def __init__(self, tokenizer, delay: float = 0.002):
        self.tokenizer, self.delay = tokenizer, delay
        self.name, self.context = "scripted", 1_000_000
        self.stop_ids = set(tokenizer.eos_token_ids)
        self.started: list[list[int]] = []
        self.closed = 0
        self.live = 0
        self.max_live = 0

    fail_with: Exception | None = None  # raised on the first step, as the engine raises bad input

    def stream(
        self,
        prompt,
        max_new_tokens=256,
        sampling=None,
        stop=None,
        cancel=None,
        time_budget=None,
        stop_ids=None,
        add_special_tokens=True,
        heal="",
        speculate=0,  # GenerationRequest's field: this scripted engine never drafts
        cache_shift=0,  # GenerationRequest's field: this scripted engine has no KV cache to shift
    ):
        if self.fail_with is not None:
            raise self.fail_with
        self.started.append(list(prompt))
        self.live += 1
        self.max_live = max(self.max_live, self.live)
        t0, ids, reason = time.monotonic(), [], "length"
        try:
            for _ in range(max_new_tokens):
                if cancel is not None and cancel.cancelled:
                    reason = "cancelled"
                    break
                time.sleep(self.delay)
                ids.append(7)
                yield "a"
        finally:
            self.live -= 1
            self.closed += 1
        return Completion("a" * len(ids), ids, len(prompt), reason, time.monotonic() - t0, extra={"cached_tokens": 3})


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory):
    return make_llama_tokenizer(tmp_path_factory.mktemp("llama-tok"))  # no FIM tokens, no chat template


@pytest.fixture(scope="module")
def scripted(plain_tokenizer):
    with serve(ScriptedModel(plain_tokenizer), max_active=4, max_queue=8) as srv:
        yield srv


def stats(url: str, **kw) -> dict:
    return httpx.get(f"{url}/v1/demi/stats", timeout=10, **kw).json()


def wait_for(cond, timeout: float = 10.0, step: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def sse(lines) -> list:
    """Parse SSE lines into JSON objects, with "[DONE]" kept as the string."""
    out = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _no_cache(usage: dict) -> dict:
    """Usage without cached_tokens (a repeated prompt is served from the prefix cache)."""
    return {k: v for k, v in usage.items() if k != "prompt_tokens_details"}


def stream_events(client, path: str, body: dict) -> list:
    with client.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse(r.iter_lines())


# -- models, completions ------------------------------------------------------------------------


def test_models_list(client, server):
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    card = body["data"][0]
    assert card["id"] == server.model.name and card["object"] == "model" and card["context_length"] == CONTEXT
    assert card["fim"] == "demi-tiny"
    missing = client.get("/v1/models/no-such-model")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_completion_greedy_matches_local_model(client, ref):
    want = ref.complete(PROMPT, max_new_tokens=16)
    r = client.post("/v1/completions", json={"model": "anything", "prompt": PROMPT, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert choice["text"] == want.text
    assert choice["finish_reason"] == ("length" if want.finish_reason == "length" else "stop")
    usage = body["usage"]
    cached = usage.pop("prompt_tokens_details")["cached_tokens"]
    assert usage == {
        "prompt_tokens": want.prompt_tokens,
        "completion_tokens": want.completion_tokens,
        "total_tokens": want.prompt_tokens + want.completion_tokens,
    }
    assert 0 <= cached < want.prompt_tokens
    # the same prompt as token ids, and without a model name at all; its prompt is in the prefix cache now
    ids = ref.tokenizer.encode(PROMPT)
    r2 = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 16, "temperature": 0}).json()
    assert r2["choices"][0]["text"] == want.text
    if hasattr(ref, "prefix_cache"):
        assert r2["usage"]["prompt_tokens_details"]["cached_tokens"] == len(ids) - 1


def test_completion_stream_equals_non_stream(client):
    req = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stop": ["\n\n\n"]}
    whole = client.post("/v1/completions", json=req).json()
    events = stream_events(client, "/v1/completions", {**req, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == whole["choices"][0]["text"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1
    assert finals[0]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    usage = chunks[-1]
    assert usage["choices"] == [] and _no_cache(usage["usage"]) == _no_cache(whole["usage"])
    assert all(c["usage"] is None for c in chunks[:-1])  # OpenAI: "usage": null until the last chunk
    # without include_usage: no usage chunk
    plain = stream_events(client, "/v1/completions", req)
    assert plain[-1] == "[DONE]" and all(c["choices"] and "usage" not in c for c in plain[:-1])


def test_seeded_sampling_is_reproducible(client, ref):
    req = {
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0.9,
        "top_k": 50,
        "top_p": 0.95,
        "seed": 7,
        "repetition_penalty": 1.1,
    }
    a = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    b = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    from demi.model.generate import Sampling

    want = ref.complete(PROMPT, max_new_tokens=12, sampling=Sampling(0.9, 50, 0.95, 1.1, 7)).text
    assert a == b == want


def test_fim_with_suffix(client, ref):
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    fim = detect_fim(ref.tokenizer)
    body_text, heal = split_heal(prefix, ref.tokenizer)  # the indentation is healed, as in-process
    assert heal == "\n    "
    prompt = fim.build(body_text, suffix)
    ids = ref.tokenizer.encode(prompt)
    want = ref.complete(ids, max_new_tokens=12, stop_ids=set(fim.stop_token_ids) | ref.stop_ids, heal=heal)
    r = client.post("/v1/completions", json={"prompt": prefix, "suffix": suffix, "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(ids)  # the model saw the FIM template's prompt
    assert body["choices"][0]["text"] == want.text
    streamed = stream_events(
        client, "/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 12, "temperature": 0}
    )
    assert "".join(c["choices"][0]["text"] for c in streamed[:-1]) == want.text


def test_chat_completions(client, ref):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]},
    ]
    flat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi"}]
    prompt_ids = ref.tokenizer.encode(ref.tokenizer.apply_chat_template(flat), add_special_tokens=False)
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 10, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)
    events = stream_events(
        client,
        "/v1/chat/completions",
        {"messages": messages, "max_tokens": 10, "temperature": 0, "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == msg["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == body["choices"][0]["finish_reason"]
    assert _no_cache(events[-2]["usage"]) == _no_cache(body["usage"])


# -- speculative decoding from the prompt ------------------------------------------------------------

# A chat whose answer copies from its prompt is where prompt lookup drafts; ignore_eos keeps the
# random model going long enough to draft.
SPEC_CHAT = {
    "messages": [
        {"role": "system", "content": "Repeat the code."},
        {"role": "user", "content": "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n"},
    ],
    "max_tokens": 48,
    "temperature": 0,
    "ignore_eos": True,
}


def _speculation_ok(spec: dict, usage: dict, k: int) -> None:
    assert set(spec) == {"k", "drafted", "accepted", "acceptance", "steps"}
    assert 1 <= spec["k"] <= k and spec["drafted"] > 0 and 0 <= spec["accepted"] <= spec["drafted"]
    assert 1 <= spec["steps"] <= usage["completion_tokens"]
    assert spec["acceptance"] == round(spec["accepted"] / spec["drafted"], 3)


def test_chat_speculates_by_default_with_identical_greedy_text(client, model_dir):
    on = client.post("/v1/chat/completions", json=SPEC_CHAT)
    assert on.status_code == 200, on.text
    body = on.json()
    usage = body["usage"]
    _speculation_ok(usage["speculation"], usage, 8)  # create_app's default: DEFAULT_SPECULATE
    text = body["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == 48 and set(usage) >= {"prompt_tokens", "total_tokens"}
    # off for this request only: the same text, no figures
    off = client.post("/v1/chat/completions", json={**SPEC_CHAT, "speculate": 0}).json()
    assert off["choices"][0]["message"]["content"] == text and "speculation" not in off["usage"]
    # another depth, and streamed: the same text, the figures in the usage chunk
    events = stream_events(
        client, "/v1/chat/completions", {**SPEC_CHAT, "speculate": 3, "stream_options": {"include_usage": True}}
    )
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"]) == text
    _speculation_ok(events[-2]["usage"]["speculation"], events[-2]["usage"], 3)
    # a server started with speculation off (`demi serve --speculate 0`): the same text
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), speculate=0) as plain:
        r = httpx.post(f"{plain.url}/v1/chat/completions", json=SPEC_CHAT, timeout=60).json()
    assert r["choices"][0]["message"]["content"] == text and "speculation" not in r["usage"]


def test_completions_speculate_only_when_asked(client, ref):
    req = {"prompt": SPEC_CHAT["messages"][1]["content"], "max_tokens": 32, "temperature": 0, "ignore_eos": True}
    want = ref.complete(req["prompt"], max_new_tokens=32, stop_ids=set()).text
    plain = client.post("/v1/completions", json=req).json()
    assert plain["choices"][0]["text"] == want and "speculation" not in plain["usage"]
    r = client.post("/v1/completions", json={**req, "speculate": 4})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == want
    _speculation_ok(r.json()["usage"]["speculation"], r.json()["usage"], 4)
    for bad in (17, -1):
        err = client.post("/v1/completions", json={**req, "speculate": bad})
        assert err.status_code == 400, err.text
        e = err.json()["error"]
        assert e["param"] == "speculate" and e["code"] == "invalid_value" and "\n" not in e["message"]
        assert "between 0 and 16" in e["message"]


def test_chat_fallback_transcript_without_template(ref):
    tok = copy.copy(ref.tokenizer)
    tok._chat_template = None
    model = SimpleNamespace(tokenizer=tok, context=CONTEXT, name="base", stop_ids={0}, model=None)
    req = ChatRequest.model_validate(
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "max_tokens": 4}
    )
    prep = prepare_chat(ModelInfo(model), req)
    assert tok.decode(prep.params.prompt) == "system: Be brief.\nuser: hi\nassistant:"
    assert "\nuser:" in prep.params.stop and prep.strip_leading


def test_concurrent_streams_all_finish_with_correct_text(server, ref):
    prompts = ["def add(a, b):", "class Cache:", "import os\n", "for i in range(10):"]
    want = {p: ref.complete(p, max_new_tokens=20, stop_ids=set()).text for p in prompts}
    got: dict[str, str] = {}

    def run(p: str) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            events = stream_events(
                c, "/v1/completions", {"prompt": p, "max_tokens": 20, "temperature": 0, "ignore_eos": True}
            )
            assert events[-1] == "[DONE]"
            got[p] = "".join(e["choices"][0]["text"] for e in events[:-1])

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert got == want
    assert stats(server.url)["active"] == 0


def streaming_prompt(ref: LocalModel) -> str:
    """A prompt whose greedy continuation streams steadily: a random model often emits byte tokens that
    never form a character, and the engine holds such text back until it does."""
    for p in ("def add", "for i in range(10):", "x = 1\n", "import os\n"):
        if sum(1 for piece in ref.stream(p, max_new_tokens=40, stop_ids=set()) if piece) >= 15:
            return p
    pytest.fail("no candidate prompt streams text on this random model")


def test_disconnect_mid_stream_cancels_and_frees_the_slot(server, ref):
    prompt = streaming_prompt(ref)
    before = stats(server.url)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        with c.stream(
            "POST",
            "/v1/completions",
            json={"prompt": prompt, "max_tokens": 3000, "stream": True, "temperature": 0, "ignore_eos": True},
        ) as r:
            lines = r.iter_lines()
            for _ in range(3):
                assert next(lines).startswith("data: ")
                next(lines)
            if stats(server.url)["max_active"] > 1:  # the engine has KV slots to interleave generations
                t0 = time.monotonic()  # fairness on the real model: a short request runs beside the long one
                short = httpx.post(f"{server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=30)
                assert short.status_code == 200 and time.monotonic() - t0 < 5
                assert stats(server.url)["active_jobs"][0]["max_tokens"] == 3000  # still running
        # leaving the block closes the connection mid-stream
    after = wait_for(lambda: (s := stats(server.url))["cancelled"] > before["cancelled"] and s["active"] == 0 and s)
    job = [j for j in after["recent"] if j["state"] == "cancelled"][-1]
    assert job["steps"] < 1000, job  # stopped early: far fewer than the 3000 asked for
    t0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and time.monotonic() - t0 < 10


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_disconnect_frees_the_only_slot_at_once(model_dir, ref, path):
    """One KV slot and no queue: a request can only be served if no generation holds the slot, and is a 429
    otherwise. A client that closes its stream after a few events must free that slot within moments (the
    job is cancelled, not run to its max_tokens), so the next request is served, not refused."""
    prompt = streaming_prompt(ref)
    body = {"prompt": prompt} if path == "/v1/completions" else {"messages": [{"role": "user", "content": prompt}]}
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), max_active=1, max_queue=0) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            with c.stream(
                "POST", path, json={**body, "max_tokens": 2000, "stream": True, "temperature": 0, "ignore_eos": True}
            ) as r:
                assert r.status_code == 200
                events = (line for line in r.iter_lines() if line)
                for _ in range(3):
                    assert next(events).startswith("data: {")
                s = stats(srv.url)
                assert s["active"] == 1 and s["max_active"] == 1
                busy = c.post(path, json={**body, "max_tokens": 2})
                assert busy.status_code == 429  # the slot is taken while the stream runs
            closed = time.monotonic()  # leaving the block closed the connection mid-stream
            after = wait_for(lambda: (s := stats(srv.url))["active"] == 0 and s["cancelled"] == 1 and s, timeout=30)
            freed_s = time.monotonic() - closed
            assert freed_s < 10, freed_s  # generous: two cores shared with other work; typically < 0.1 s
            job = after["recent"][-1]
            assert job["state"] == "cancelled" and job["finish_reason"] == "cancelled"
            assert job["steps"] < 1000, job  # stopped early: nowhere near the 2000 tokens asked for
            assert after["queued"] == 0 and after["active_jobs"] == []
            t0 = time.monotonic()
            nxt = c.post(path, json={**body, "max_tokens": 4, "temperature": 0})
            assert nxt.status_code == 200, nxt.text  # with the slot still held this would be a 429
            assert time.monotonic() - t0 < 10
            served = stats(srv.url)["recent"][-1]
            assert served["state"] == "done" and served["queued_ms"] < 1000, served  # not kept waiting


def test_non_stream_client_gone_cancels(scripted):
    before = stats(scripted.url)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{scripted.url}/v1/completions",
            json={"prompt": "hello", "max_tokens": 100_000},
            timeout=httpx.Timeout(10, read=0.3),
        )
    s = wait_for(lambda: (s := stats(scripted.url))["cancelled"] > before["cancelled"] and s["active"] == 0 and s)
    assert s["recent"][-1]["steps"] < 10_000


# -- scheduling on the scripted engine ----------------------------------------------------------


def test_long_request_does_not_block_a_short_one(scripted):
    url = scripted.url
    with (
        httpx.Client(base_url=url, timeout=60) as long_client,
        long_client.stream(
            "POST", "/v1/completions", json={"prompt": "long one", "max_tokens": 100_000, "stream": True}
        ) as long_r,
    ):
        lines = long_r.iter_lines()
        assert next(lines).startswith("data: ")
        t0 = time.monotonic()
        short = httpx.post(f"{url}/v1/completions", json={"prompt": "short", "max_tokens": 5}, timeout=30)
        elapsed = time.monotonic() - t0
        assert short.status_code == 200 and short.json()["choices"][0]["text"] == "aaaaa"
        assert short.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
        assert elapsed < 5, elapsed
        s = stats(url)
        assert s["active"] == 1 and s["active_jobs"][0]["max_tokens"] == 100_000  # the long one still runs
        # round-robin: the long stream kept producing while the short one ran
        got = sum(1 for line in (next(lines) for _ in range(20)) if line.startswith("data: "))
        assert got >= 5
    wait_for(lambda: stats(url)["active"] == 0)
    assert scripted.model.max_live <= 2


def test_queue_is_fifo_bounded_by_slots_and_cancelled_waiters_are_dropped(scripted):
    url, model = scripted.url, scripted.model
    base = stats(url)
    assert base["max_active"] == 2  # --parallel 4, but the engine has 2 KV slots
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(2)]
    streams = []
    try:
        for i, c in enumerate(clients):
            cm = c.stream(
                "POST", "/v1/completions", json={"prompt": f"slot {i}", "max_tokens": 100_000, "stream": True}
            )
            r = cm.__enter__()
            lines = r.iter_lines()  # keep it: a dropped line iterator closes the response
            streams.append((cm, lines))
            assert next(lines).startswith("data: ")
        assert stats(url)["active"] == 2
        n_started = len(model.started)
        waiter = threading.Thread(
            target=lambda: pytest.raises(
                httpx.ReadTimeout,
                httpx.post,
                f"{url}/v1/completions",
                json={"prompt": "third", "max_tokens": 3},
                timeout=httpx.Timeout(10, read=0.5),
            )
        )
        waiter.start()
        wait_for(lambda: stats(url)["queued"] == 1)
        waiter.join(10)
        s = wait_for(lambda: (s := stats(url))["dropped"] == base["dropped"] + 1 and s)
        assert s["queued"] == 0 and s["active"] == 2
        assert len(model.started) == n_started  # the dropped request never reached the engine
    finally:
        for cm, _ in streams:
            cm.__exit__(None, None, None)
        for c in clients:
            c.close()
    s = wait_for(lambda: (s := stats(url))["active"] == 0 and s)
    assert s["cancelled"] >= base["cancelled"] + 2
    # both closed generators ran their cleanup (the engine's slot release would go there)
    wait_for(lambda: model.live == 0)


def test_queue_full_is_429(plain_tokenizer):
    model = ScriptedModel(plain_tokenizer, delay=0.01)
    model.max_streams = 1
    with (
        serve(model, max_active=1, max_queue=0) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
        c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 10_000, "stream": True}) as r,
    ):
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
        busy = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "y", "max_tokens": 2}, timeout=10)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"


def test_fim_on_model_without_fim_tokens_and_plain_chat(scripted):
    with httpx.Client(base_url=scripted.url, timeout=30) as c:
        r = c.post("/v1/completions", json={"prompt": "def f(", "suffix": "):\n", "max_tokens": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "suffix"
        assert r.json()["error"]["code"] == "fim_not_supported"
        ok = c.post("/v1/completions", json={"prompt": "def f(", "suffix": "", "max_tokens": 2})
        assert ok.status_code == 200  # an empty suffix is plain completion
        chat = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "aaa"


def test_engine_errors_are_answered_and_the_worker_survives(plain_tokenizer):
    from demi.model.errors import ContextOverflowError

    model = ScriptedModel(plain_tokenizer)
    with serve(model) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        body = {"prompt": "x", "max_tokens": 2}
        cases = (
            (ContextOverflowError("too long for the engine"), 400, "context_length_exceeded"),
            (RuntimeError("boom"), 500, "server_error"),
        )
        for exc, status, code in cases:
            model.fail_with = exc
            for stream in (False, True):
                r = c.post("/v1/completions", json={**body, "stream": stream})
                assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        model.fail_with = None
        assert c.post("/v1/completions", json=body).json()["choices"][0]["text"] == "aa"
        assert stats(srv.url)["errors"] == 4


# -- bad input -------------------------------------------------------------------------------------

BIG = 5 * 1024 * 1024
BAD = [
    ("malformed json", "/v1/completions", b'{"prompt": "x",', 400, "invalid_json", None),
    ("not an object", "/v1/completions", b"[1, 2]", 400, "invalid_body", None),
    ("empty body", "/v1/completions", b"", 400, "invalid_body", None),
    ("unknown field", "/v1/completions", {"prompt": "x", "max_token": 3}, 400, "unknown_parameter", "max_token"),
    ("missing prompt", "/v1/completions", {"max_tokens": 3}, 400, "missing_parameter", "prompt"),
    ("string max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": "3"}, 400, "invalid_type", "max_tokens"),
    ("bool max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": True}, 400, "invalid_type", "max_tokens"),
    ("float max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": 2.5}, 400, "invalid_type", "max_tokens"),
    ("prompt type", "/v1/completions", {"prompt": {"a": 1}}, 400, "invalid_type", "prompt"),
    ("negative max_tokens", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "invalid_value", "max_tokens"),
    (
        "huge max_tokens",
        "/v1/completions",
        {"prompt": "x", "max_tokens": 10**12},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    (
        "prompt over context",
        "/v1/completions",
        {"prompt": [5] * CONTEXT, "max_tokens": 1},
        400,
        "context_length_exceeded",
        "prompt",
    ),
    ("token id out of range", "/v1/completions", {"prompt": [5, 99999]}, 400, "invalid_value", "prompt"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "invalid_value", "prompt"),
    ("batched prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "unsupported_parameter", "prompt"),
    ("temperature", "/v1/completions", {"prompt": "x", "temperature": 5}, 400, "invalid_value", "temperature"),
    ("top_p", "/v1/completions", {"prompt": "x", "top_p": 0}, 400, "invalid_value", "top_p"),
    ("n=2", "/v1/completions", {"prompt": "x", "n": 2}, 400, "unsupported_parameter", "n"),
    ("echo", "/v1/completions", {"prompt": "x", "echo": True}, 400, "unsupported_parameter", "echo"),
    (
        "frequency_penalty",
        "/v1/completions",
        {"prompt": "x", "frequency_penalty": 0.5},
        400,
        "unsupported_parameter",
        "frequency_penalty",
    ),
    ("too many stops", "/v1/completions", {"prompt": "x", "stop": ["a"] * 17}, 400, "invalid_value", "stop"),
    (
        "stream_options without stream",
        "/v1/completions",
        {"prompt": "x", "stream_options": {"include_usage": True}},
        400,
        "invalid_value",
        "stream_options",
    ),
    ("no messages", "/v1/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    (
        "bad role",
        "/v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid_value",
        "messages.0.role",
    ),
    (
        "image part",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "unsupported_parameter",
        "messages.0.content",
    ),
    (
        "tools",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
        400,
        "unsupported_parameter",
        "tools",
    ),
    (
        "chat max_tokens 0",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
        400,
        "invalid_value",
        "max_tokens",
    ),
    ("too large", "/v1/completions", {"prompt": "x" * BIG}, 413, "request_too_large", None),
    (
        "chat too large",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x" * BIG}]},
        413,
        "request_too_large",
        None,
    ),
    # limits
    (
        "max_tokens over the context",
        "/v1/completions",
        {"prompt": "x", "max_tokens": CONTEXT},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    (
        "chat max_tokens over the context",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": CONTEXT},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    (
        "chat prompt over the context",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x" * CONTEXT}]},
        400,
        "context_length_exceeded",
        "messages",
    ),
    (
        "negative max_completion_tokens",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -5},
        400,
        "invalid_value",
        "max_completion_tokens",
    ),
    # found by the fuzzer: max_tokens was ignored, unchecked, whenever max_completion_tokens was given
    (
        "bad max_tokens beside max_completion_tokens",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2, "max_tokens": CONTEXT},
        400,
        "context_length_exceeded",
        "max_tokens",
    ),
    ("negative token id", "/v1/completions", {"prompt": [5, -1]}, 400, "invalid_value", "prompt"),
    ("stop too long", "/v1/completions", {"prompt": "x", "stop": "s" * 513}, 400, "invalid_value", "stop"),
    (
        "a stop in the list too long",
        "/v1/completions",
        {"prompt": "x", "stop": ["a", "s" * 513]},
        400,
        "invalid_value",
        "stop",
    ),
    ("stop of the wrong type", "/v1/completions", {"prompt": "x", "stop": [1, 2]}, 400, "invalid_type", "stop"),
    ("n=0", "/v1/completions", {"prompt": "x", "n": 0}, 400, "unsupported_parameter", "n"),
    (
        "chat n=3",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "n": 3},
        400,
        "unsupported_parameter",
        "n",
    ),
    ("best_of=2", "/v1/completions", {"prompt": "x", "best_of": 2}, 400, "unsupported_parameter", "best_of"),
    ("logprobs", "/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "unsupported_parameter", "logprobs"),
    (
        "logit_bias",
        "/v1/completions",
        {"prompt": "x", "logit_bias": {"5": 1.0}},
        400,
        "unsupported_parameter",
        "logit_bias",
    ),
    ("top_k negative", "/v1/completions", {"prompt": "x", "top_k": -1}, 400, "invalid_value", "top_k"),
    ("fractional top_k", "/v1/completions", {"prompt": "x", "top_k": 2.5}, 400, "invalid_type", "top_k"),
    # found by the fuzzer: 5e-324 made every seen token's logit infinite, and sampling a 500
    (
        "repetition_penalty too low",
        "/v1/completions",
        {"prompt": "x", "repetition_penalty": 5e-324},
        400,
        "invalid_value",
        "repetition_penalty",
    ),
    (
        "repetition_penalty too high",
        "/v1/completions",
        {"prompt": "x", "repetition_penalty": 11},
        400,
        "invalid_value",
        "repetition_penalty",
    ),
    ("suffix with token ids", "/v1/completions", {"prompt": [5, 6], "suffix": ""}, 400, "invalid_value", "suffix"),
    # found by the fuzzer: unknown fields in a text part were silently ignored
    (
        "unknown field in a text part",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "txet": "y"}]}]},
        400,
        "unknown_parameter",
        "messages.0.content.0.txet",
    ),
    # found by reading past the fuzzer (its strings are always valid UTF-8): JSON's \\ud800 escapes carry
    # lone surrogates, on which the tokenizer raised TypeError (a 500), and an error message quoting one
    # could not be encoded (a 500 instead of the 400)
    ("lone surrogate in the prompt", "/v1/completions", b'{"prompt": "a\\ud800b"}', 400, "invalid_value", "prompt"),
    (
        "lone surrogate in the suffix",
        "/v1/completions",
        b'{"prompt": "a", "suffix": "\\udfff"}',
        400,
        "invalid_value",
        "suffix",
    ),
    (
        "lone surrogate in a message",
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        400,
        "invalid_value",
        "messages.0.content.0.text",
    ),
    (
        "lone surrogate in an unknown key",
        "/v1/completions",
        b'{"prompt": "x", "\\ud800": 1}',
        400,
        "invalid_value",
        None,
    ),
    ("not UTF-8", "/v1/completions", b'{"prompt": "a\xff\xfe"}', 400, "invalid_json", None),
    ("speculate too high", "/v1/completions", {"prompt": "x", "speculate": 17}, 400, "invalid_value", "speculate"),
    (
        "speculate negative",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "speculate": -1},
        400,
        "invalid_value",
        "speculate",
    ),
    (
        "speculate not an integer",
        "/v1/completions",
        {"prompt": "x", "speculate": "4"},
        400,
        "invalid_type",
        "speculate",
    ),
    (
        "response_format json",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
        400,
        "unsupported_parameter",
        "response_format",
    ),
]


@pytest.mark.parametrize("name,path,body,status,code,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_in_openai_shape(client, name, path, body, status, code, param):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["code"] == code and err["param"] == param and err["type"] == "invalid_request_error"
    assert client.get("/v1/models").status_code == 200  # still serving


ACCEPTED = [
    # at the edges of the limits, and what the fuzzer found refused or crashing although the document allows it
    ("max_tokens 0 (completions allow it)", "/v1/completions", {"prompt": PROMPT, "max_tokens": 0}),
    (
        "prompt and max_tokens fill the context exactly",
        "/v1/completions",
        {"prompt": [5] * (CONTEXT - 2), "max_tokens": 2, "ignore_eos": True},
    ),
    (
        "16 stops of 512 characters",
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 2, "stop": ["s" * 511 + chr(97 + i) for i in range(16)]},
    ),
    (
        "n=1 and the neutral values",
        "/v1/completions",
        {
            "prompt": PROMPT,
            "max_tokens": 2,
            "n": 1,
            "best_of": 1,
            "echo": False,
            "logprobs": None,
            "frequency_penalty": 0,
            "presence_penalty": 0.0,
            "logit_bias": {},
        },
    ),
    (
        "an integral float is an integer (fuzzer: 10.0 was a 400)",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.0, "seed": 3.0},
    ),
    (
        "a tiny temperature is greedy (fuzzer: a 500)",
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 4, "temperature": 5e-324},
    ),
    (
        "any integer seed (fuzzer: 2**64 + 383 was a 400 the document did not declare)",
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 2, "temperature": 1, "seed": 18446744073709551999},
    ),
    (
        "an empty prompt beside a suffix: FIM at the start of a file (long fuzz: the document said minLength 1)",
        "/v1/completions",
        {"prompt": [""], "suffix": "", "max_tokens": 2},
    ),
    ("an empty prompt beside a real suffix", "/v1/completions", {"prompt": "", "suffix": "x = 1\n", "max_tokens": 2}),
    (
        "the lowest repetition_penalty with a tiny temperature",
        "/v1/completions",
        {"prompt": PROMPT, "max_tokens": 4, "repetition_penalty": 0.01, "temperature": 1e-30},
    ),
]


ACCEPTED += [
    ("speculate at its maximum", "/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "speculate": 16}),
    (
        "speculate 0 on chat",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "speculate": 0},
    ),
]


@pytest.mark.parametrize("name,path,body", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_limits_accept_their_edges(client, name, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["completion_tokens"] <= body.get("max_tokens", 16)
    if "ignore_eos" in body:
        assert usage["prompt_tokens"] + usage["completion_tokens"] == CONTEXT


def test_surrogate_pair_escapes_are_text(client):
    """A pair of surrogate escapes is one character (here an emoji) and is served like any text."""
    r = client.post(
        "/v1/completions",
        content=b'{"prompt": "x = \\ud83d\\ude00", "max_tokens": 1}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text


def test_tiny_temperature_is_greedy(client):
    """Below GREEDY_BELOW the answer is the greedy one (the limit of sampling as the temperature goes to 0)."""
    body = {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0}).json()["choices"][0]["text"]
    for t in (5e-324, 1e-30, 9e-6):
        r = client.post("/v1/completions", json={**body, "temperature": t, "seed": 1})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy, (t, r.text)


def test_seed_is_taken_modulo_2_64(client):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.5, "ignore_eos": True}
    texts = [
        client.post("/v1/completions", json={**body, "seed": s}).json()["choices"][0]["text"]
        for s in (-5, 2**64 - 5, 2**65 - 5)
    ]
    assert texts[0] == texts[1] == texts[2]  # torch reads a negative seed the same way


def test_body_limit_without_content_length(server):
    """A chunked body (no Content-Length) is cut off at the limit too, and the server keeps serving."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(6):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert c.get("/health").status_code == 200


def test_a_stalled_body_is_a_408(plain_tokenizer):
    """A client that sends half a body and stalls gets a 408 once the body time limit passes, instead of
    holding its connection open for good; the server keeps serving."""
    import socket

    with serve(ScriptedModel(plain_tokenizer), body_timeout_s=0.5) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"prompt"'
            )
            t0 = time.monotonic()
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
            waited = time.monotonic() - t0
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert 0.4 < waited < 20, waited
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200


def test_405_names_the_allowed_methods(client):
    """Found by the fuzzer: the 405 lost Starlette's Allow header (RFC 9110 requires it)."""
    r = client.request("TRACE", "/v1/models")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_openapi_declares_the_errors(client):
    """The document /openapi.json serves says what each route answers (the fuzz test relies on it)."""
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes  # validation errors are 400s here
            assert {"200", "403", "408", "413"} <= codes, (method, path)
            if method == "post":
                assert {"400", "415", "429"} <= codes, path
    assert "404" in doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert "securitySchemes" not in doc.get("components", {})  # no key on this server
    req = doc["components"]["schemas"]["CompletionRequest"]
    assert req["properties"]["max_tokens"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": CONTEXT - 1}
    assert req["properties"]["prompt"]["anyOf"][0] == {"type": "string", "minLength": 0}  # FIM: "" + suffix
    empty_needs_suffix = req["allOf"][-1]["anyOf"]
    assert empty_needs_suffix[0] == {"required": ["suffix"], "properties": {"suffix": {"type": "string"}}}


def test_openapi_of_a_model_without_fim(scripted):
    """No FIM tokens: the document allows only an empty suffix and a non-empty prompt."""
    req = httpx.get(f"{scripted.url}/openapi.json", timeout=10).json()["components"]["schemas"]["CompletionRequest"]
    assert req["properties"]["suffix"]["anyOf"] == [{"type": "string", "maxLength": 0}, {"type": "null"}]
    assert req["properties"]["prompt"]["anyOf"][0] == {"type": "string", "minLength": 1}


def test_routes_and_transport_errors(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = client.delete("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.post("/v1/completions", content=b'{"prompt": "x"}', headers={"content-type": "text/plain"})
    assert r.status_code == 415  # browsers send text/plain cross-site without a preflight
    r = client.get("/v1/models", headers={"host": "evil.example:8642"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"  # DNS rebinding
    r = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200


def _route_calls(app) -> list[tuple[str, str]]:
    """(method, path) for every route the FastAPI app has, path parameters filled in."""
    calls = []
    for route in app.app.routes:  # app is the guard; app.app the FastAPI app
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        calls += [(m, path) for m in sorted(getattr(route, "methods", None) or ["GET"]) if m != "HEAD"]
    return calls


def test_api_key_guards_every_route_the_app_has(model_dir):
    """Every route, enumerated from the app itself (so a route added later cannot escape): without the key,
    with a wrong one or another scheme it is a 401; with it, the route answers."""
    with (
        serve(LocalModel.load(str(model_dir), context=CONTEXT), api_key="s3cret") as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        calls = _route_calls(srv.app)
        paths = {p for _, p in calls}
        assert {
            "/v1/models",
            "/v1/models/x",
            "/v1/demi/stats",
            "/health",
            "/openapi.json",
            "/v1/completions",
            "/v1/chat/completions",
        } <= paths
        body = {"prompt": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
        for method, path in calls:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "Basic s3cret"},
                {"authorization": "Bearer s3cret2"},
                {"x-api-key": "s3cret"},
            ):
                r = c.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
            ok = c.request(
                method,
                path,
                headers={"authorization": "Bearer s3cret"},
                json={"prompt": "x", "max_tokens": 1}
                if path == "/v1/completions"
                else {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
                if method == "POST"
                else None,
            )
            assert ok.status_code == (404 if path == "/v1/models/x" else 200), (method, path, ok.text)
        doc = c.get("/openapi.json", headers={"authorization": "Bearer s3cret"}).json()
        assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
        ops = [op for ops in doc["paths"].values() for op in ops.values()]
        assert all("401" in op["responses"] and "403" not in op["responses"] for op in ops)  # no Host check
        # with a key, other Host names are fine (a reverse proxy, a LAN name)
        assert c.get("/v1/models", headers={"authorization": "Bearer s3cret", "host": "box.lan"}).status_code == 200


def test_embedding_refuses_non_loopback_without_key(plain_tokenizer):
    """The rule lives in the server, not only in the CLI: ServerThread refuses before binding anything."""
    from demi.serve.server import BindingRefused, ServerThread, check_binding, create_app

    app = create_app(ScriptedModel(plain_tokenizer))
    for host in ("0.0.0.0", "::", "", "192.0.2.1", "example.com"):
        with pytest.raises(BindingRefused, match="API key"):
            ServerThread(app, host=host)
    for host in ("127.0.0.1", "127.3.2.1", "::1", "localhost"):
        check_binding(host, None)
    check_binding("0.0.0.0", "k")
    with pytest.raises(BindingRefused, match="empty"):
        check_binding("127.0.0.1", "  ")


def test_one_log_line_per_request_only_when_asked(plain_tokenizer, caplog):
    caplog.set_level("INFO", logger="demi.serve")
    for verbose in (False, True):
        caplog.clear()
        with (
            serve(ScriptedModel(plain_tokenizer), log_requests=verbose) as srv,
            httpx.Client(base_url=srv.url, timeout=30) as c,
        ):
            c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
            body = {"prompt": "x", "max_tokens": 2, "stream": True}
            with c.stream("POST", "/v1/completions", json=body) as r:
                r.read()
            c.get("/v1/nope")
        lines = [r.getMessage() for r in caplog.records if r.name == "demi.serve"]
        if not verbose:
            assert lines == []
            continue
        assert len(lines) == 3, lines
        assert re.fullmatch(r"POST /v1/completions 200 \d+\+3 tokens \d+ ms", lines[0])
        assert re.fullmatch(r"POST /v1/completions 200 \d+\+2 tokens \d+ ms", lines[1])
        assert re.fullmatch(r"GET /v1/nope 404 \d+ ms", lines[2])


# -- the command line -----------------------------------------------------------------------------


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMI_", "HF_"))}
    env.update(DEMI_OFFLINE="1", HF_HUB_OFFLINE="1", **extra)
    return env


REFUSED = [
    (["--host", "0.0.0.0"], {}, "binding 0.0.0.0"),
    (["--host", "::"], {}, "binding ::"),
    (["--host", "0.0.0.0"], {"DEMI_API_KEY": ""}, "binding 0.0.0.0"),  # an empty variable is no key
    (["--host", "0.0.0.0", "--api-key", ""], {}, "the API key is empty"),
    (["--api-key", "   "], {}, "the API key is empty"),  # a blank key would lock every client out
]


@pytest.mark.parametrize("args,env,says", REFUSED, ids=[" ".join(r[0]) + str(r[1]) for r in REFUSED])
def test_cli_refuses_non_loopback_without_key(args, env, says):
    """One line on stderr, exit code 2, nothing on stdout, and before the model is even looked up (the
    model path does not exist, yet the answer is about the key)."""
    cmd = [sys.executable, "-m", "demi", "serve", "--model", "/nonexistent/model", "--port", "0", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert "--api-key" in lines[0] and "DEMI_API_KEY" in lines[0]


def test_cli_serve_port_0_with_key_from_env(model_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "demi", "serve", "--model", str(model_dir), "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(DEMI_API_KEY="k3y"),
    )
    try:
        line = proc.stderr.readline()
        m = re.fullmatch(r"demi serve: listening on (http://127\.0\.0\.1:(\d+)) \(model (.+)\)\n", line)
        assert m, line
        url, port = m.group(1), int(m.group(2))
        assert port > 0 and m.group(3) == str(model_dir)
        info = json.loads(proc.stdout.readline())
        assert info["url"] == url and info["port"] == port and info["model"] == str(model_dir)
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        r = httpx.post(
            f"{url}/v1/completions",
            json={"prompt": PROMPT, "max_tokens": 3},
            headers={"authorization": "Bearer k3y"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGTERM)  # stops like Ctrl-C: clean shutdown, exit 0
        assert proc.wait(timeout=20) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("reuse", [16, 0])
def test_completions_reuse_a_moved_run_of_the_cached_prompt_only_with_cache_reuse(model_dir, reuse):
    """`--cache-reuse N`: a completion whose prompt changed before a run of cached tokens (a FIM
    suffix after a typed character) moves that run instead of recomputing it; 0 is exact reuse."""
    head, run, last = list(range(10, 50)), list(range(100, 160)), [7]
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), cache_reuse=reuse) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for prompt in (head + [1] + run + last, head + [1, 2, 3] + run + last):
                r = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2, "temperature": 0})
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] in (0, 41)
            stats = c.get("/v1/demi/stats").json()
    assert stats["shifted_tokens"] == (len(run) if reuse else 0)
