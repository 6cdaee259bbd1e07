"""Fuzzing `demi serve` from its own OpenAPI document with schemathesis, against a live server (uvicorn on
127.0.0.1 in a background thread) serving a real tiny random-weight model.

Every generated request, valid or not (schemathesis generates both, plus its boundary-value "coverage"
cases and undeclared methods), must get an answer within `HANG_S` seconds that is never a 5xx, whose
status code, content type and body (JSON, or each Server-Sent Event's JSON) are what the document
declares; a schema-valid request must be served and a schema-invalid one refused. The one allowance:
a schema-valid request may still be a 400 `context_length_exceeded`, because how many tokens a prompt
takes is not something JSON Schema can say.

The default run is bounded (about 750 requests, 10 to 30 s on two busy cores) and derandomized, so it
is the same run every time. `pytest -m slow tests/serve/test_server_fuzz.py` runs a larger, randomized one
(about 3,700 requests, plus a fuzz of a server with an API key, where schemathesis also re-sends
requests without the key expecting 401s). The module prints how many requests it made.

Schemathesis only generates valid UTF-8 strings, so lone surrogates (JSON `\\ud800` escapes) are tested
by hand in test_server.py, with the regression tests for what the fuzzer found (their ids say so).
The last test here runs many clients at once, some leaving mid-stream, and checks that no job is left
behind.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from helpers import serve, tiny_checkpoint
from hypothesis import HealthCheck, settings
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance

from demi.model.engine import LocalModel

CONTEXT = 128  # small, so a chat request's default max_tokens (the rest of the context) is quick
HANG_S = 60.0  # any response slower than this is a hang (generous: two cores shared with other work)
FAST_EXAMPLES = 20  # per operation and run, besides schemathesis's explicit coverage cases
SLOW_EXAMPLES = 1000

REQUESTS: Counter[str] = Counter()  # label -> requests made, reported at the end of the module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random qwen2 checkpoint (FIM tokens, a chat template)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen2-fuzz"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module", autouse=True)
def report_requests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prints how many requests this module's tests made, and in how long."""
    started = time.monotonic()
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and REQUESTS:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(REQUESTS.items()))
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line(
                f"\nschemathesis fuzz of demi serve: {sum(REQUESTS.values())} requests "
                f"({detail}) in {time.monotonic() - started:.0f} s"
            )


@pytest.fixture(scope="module")
def live(model_dir: Path) -> Iterator[Any]:
    """A live `demi serve` app for the tiny model."""
    with serve(LocalModel.load(str(model_dir), context=CONTEXT)) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(live: Any) -> Any:
    """The document as the live server publishes it (with its model's context and vocabulary)."""
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed(model_dir: Path) -> Iterator[Any]:
    """The same model behind an API key (as `demi serve --api-key` runs it)."""
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), api_key=KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_schema(keyed: Any) -> Any:
    return schemathesis.openapi.from_url(f"{keyed.url}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")
keyed_api = schemathesis.pytest.from_fixture("keyed_schema")


def accepts_valid_requests(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's `positive_data_acceptance`, except for prompts that do not fit the context."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except Failure:
        if response.status_code == 400 and _error_code(response) == "context_length_exceeded":
            return None
        raise


def _error_code(response: Any) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _check(case: Any, http: requests.Session, kind: str, headers: dict[str, str] | None = None) -> None:
    """One request: answered in time, then every schemathesis check (see the module docstring)."""
    t0 = time.monotonic()
    response = case.call(session=http, timeout=HANG_S, headers=headers)
    elapsed = time.monotonic() - t0
    REQUESTS[kind] += 1
    assert elapsed < HANG_S, f"{case.method} {case.path} took {elapsed:.1f} s"
    assert response.status_code < 500, response.text
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepts_valid_requests],
    )


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


_COMMON = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck)}


@schema.parametrize()
@settings(max_examples=FAST_EXAMPLES, derandomize=True, **_COMMON)
def test_fuzz_openapi(case: Any, http: requests.Session) -> None:
    _check(case, http, "fast")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=SLOW_EXAMPLES, **_COMMON)
def test_fuzz_openapi_long(case: Any, http: requests.Session) -> None:
    _check(case, http, "slow")


@pytest.mark.slow
@keyed_api.parametrize()
@settings(max_examples=SLOW_EXAMPLES // 4, **_COMMON)
def test_fuzz_openapi_with_api_key(case: Any, http: requests.Session) -> None:
    """With a key: the document declares the bearer scheme and 401s, and schemathesis's `ignored_auth`
    check re-sends requests without the key (or with a wrong one) expecting a 401."""
    _check(case, http, "slow, with a key", AUTH)


def test_fuzz_made_requests(live: Any) -> None:
    """The fuzz really ran: it sent requests to every operation (runs after the fuzz tests above)."""
    if not REQUESTS:
        pytest.skip("the fuzz tests were not selected")
    assert REQUESTS["fast"] + REQUESTS["slow"] >= 6 * FAST_EXAMPLES
    assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200  # and the server still serves


# -- many clients at once, some of them leaving early -------------------------------------------------


def _client_session(url: str, seed: int, n: int, seen: Counter[str]) -> None:
    """`n` random requests: answered in full, streamed, dropped mid-stream, given up on before the
    answer, or invalid. Every status must be 200, 400 or 429 (the queue is small on purpose)."""
    rng = random.Random(seed)
    body = {"prompt": "def f(x):", "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=url, timeout=HANG_S) as c:
        for _ in range(n):
            action = rng.choice(["json", "stream", "chat", "drop_stream", "drop_wait", "bad"])
            seen[action] += 1
            tokens = rng.randint(1, 24)
            if action == "json":
                r = c.post("/v1/completions", json={**body, "max_tokens": tokens})
            elif action == "chat":
                r = c.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}
                )
            elif action == "bad":
                r = c.post("/v1/completions", json={**body, "max_tokens": -tokens})
                assert r.status_code == 400, r.text
                continue
            elif action == "drop_wait":  # gives up before the answer: the server must cancel the job
                try:
                    r = c.post(
                        "/v1/completions", json={**body, "max_tokens": 100}, timeout=httpx.Timeout(HANG_S, read=0.05)
                    )
                except httpx.ReadTimeout:
                    continue
            else:
                with c.stream(
                    "POST",
                    "/v1/completions",
                    json={**body, "max_tokens": 100 if action == "drop_stream" else tokens, "stream": True},
                ) as r:
                    if r.status_code == 200 and action == "drop_stream":
                        assert next(line for line in r.iter_lines() if line).startswith("data: {")
                        seen["left_mid_stream"] += 1
                        continue  # leaving the block closes the connection mid-stream
                    if r.status_code == 200:
                        lines = [line for line in r.iter_lines() if line]
                        assert lines[-1] == "data: [DONE]", lines[-3:]
                    else:
                        r.read()
            assert r.status_code in (200, 429), (action, r.status_code, r.text)


def test_concurrent_clients_that_leave_early_leave_no_job_behind(model_dir: Path) -> None:
    """Eight clients at once against two slots and a queue of two. Whatever they do, once they are done
    the scheduler is empty (no slot held by a client that left), its books balance, no generation failed,
    and the next request is served."""
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), max_active=2, max_queue=2) as srv:
        seen: Counter[str] = Counter()
        errors: list[BaseException] = []

        def run(seed: int) -> None:
            try:
                _client_session(srv.url, seed, 12, seen)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(HANG_S * 3)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not errors, errors[0]
        end = time.monotonic() + 30
        while (s := httpx.get(f"{srv.url}/v1/demi/stats", timeout=10).json())["active"] + s[
            "queued"
        ] and time.monotonic() < end:
            time.sleep(0.05)
        assert s["active"] == 0 and s["queued"] == 0 and s["active_jobs"] == [], s
        assert s["submitted"] == s["completed"] + s["cancelled"] + s["dropped"] + s["errors"], s
        assert s["errors"] == 0 and s["submitted"] > 0
        assert seen["left_mid_stream"] and seen["drop_wait"]
        # each stream left after its first event was stopped, not run to its 100 tokens
        assert s["cancelled"] >= seen["left_mid_stream"], (s, seen)
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=HANG_S)
        assert r.status_code == 200
        REQUESTS["concurrent"] += sum(v for k, v in seen.items() if k != "left_mid_stream") + 1
