"""`demi serve` for a team, over real sockets: named keys in a keys file (written by the real
`demi serve keys` commands, run as subprocesses), roles, revocation while the server runs, usage per
key at /v1/demi/usage, and /metrics parsed with prometheus_client's own text parser, against a tiny
random qwen2 model (byte-level tokenizer) so token counts are real.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import clean_env, demi, one_json, serve, tiny_checkpoint
from prometheus_client.parser import text_string_to_metric_families

from demi.model.engine import LocalModel
from demi.serve.keys import KeyRing, KeysFileError, hash_key, parse_keys
from demi.serve.server import BindingRefused, check_binding, create_app

CONTEXT = 256
BODY = {"prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("qwen2-team"), max_position_embeddings=CONTEXT)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def add_key(env: dict[str, str], name: str, *extra: str) -> str:
    """`demi serve keys add NAME` as a user runs it: the key is the one line on stdout."""
    p = demi(env, "serve", "keys", "add", name, *extra)
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert re.fullmatch(r"demi-[A-Za-z0-9_-]{43}", key), p.stdout
    assert "shown only this once" in p.stderr and key not in p.stderr
    return key


def scrape(url: str, key: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed by prometheus_client's parser: (sample name, sorted labels) -> value."""
    r = httpx.get(f"{url}/metrics", headers=auth(key) if key else {}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def histogram_count(metrics: dict, name: str, **labels: str) -> float:
    return sample(metrics, f"{name}_count", **labels)


def wait_idle(url: str, key: str) -> None:
    """Until the runner has no run left (a stream's bookkeeping ends just after its last byte)."""
    end = time.monotonic() + 30
    while time.monotonic() < end:
        s = httpx.get(f"{url}/v1/demi/stats", headers=auth(key), timeout=10).json()
        if not s["active"] and not s["queued"]:
            return
        time.sleep(0.02)
    raise AssertionError("the runner did not go idle")


# -- the keys commands ----------------------------------------------------------------------------


def test_keys_commands_add_list_revoke(tmp_path):
    env = clean_env(tmp_path)
    alice = add_key(env, "alice")
    p = demi(env, "serve", "keys", "add", "prom", "--role", "metrics", "--json")
    added = one_json(p)
    assert added["name"] == "prom" and added["role"] == "metrics" and added["key"].startswith("demi-")
    path = Path(added["keys_file"])
    assert path == tmp_path / "config" / "demi" / "serve-keys.toml"  # the default: Demi's config folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert alice not in text and added["key"] not in text  # only digests are stored
    assert hash_key(alice).hex() in text
    listed = one_json(demi(env, "serve", "keys", "list", "--json"))
    assert [(k["name"], k["role"]) for k in listed["keys"]] == [("alice", "user"), ("prom", "metrics")]
    plain = demi(env, "serve", "keys", "list")
    assert plain.returncode == 0 and "alice" in plain.stdout and alice not in plain.stdout

    for args, says in [
        (["add", "alice"], "already exists"),
        (["add", "bad name"], "invalid key name"),
        (["add", "_x"], "invalid key name"),
        (["add", "x", "--role", "root"], "invalid choice"),
        (["revoke", "bob"], "no key named 'bob'"),
    ]:
        p = demi(env, "serve", "keys", *args)
        assert p.returncode == 2 and p.stdout == "", (args, p.stdout)
        assert len(p.stderr.strip().splitlines()) == 1 and says in p.stderr, (args, p.stderr)

    p = demi(env, "serve", "keys", "revoke", "alice")
    assert p.returncode == 0 and "revoked key 'alice'" in p.stderr
    assert [k["name"] for k in one_json(demi(env, "serve", "keys", "list", "--json"))["keys"]] == ["prom"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [f for f in path.parent.iterdir() if f.name != path.name]  # no temporary file left behind

    # DEMI_KEYS_FILE and --keys-file name other files (the flag wins, before or after `keys`)
    other, third = tmp_path / "team" / "keys.toml", tmp_path / "third.toml"
    add_key({**env, "DEMI_KEYS_FILE": str(other)}, "carol")
    assert "carol" in other.read_text()
    add_key({**env, "DEMI_KEYS_FILE": str(other)}, "dave", "--keys-file", str(third))
    p = demi(env, "serve", "--keys-file", str(third), "keys", "list", "--json")
    assert [k["name"] for k in one_json(p)["keys"]] == ["dave"]


# -- a server with named keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def team(model_dir, home):
    """A server on a keys file with alice and bob (users), carol (admin) and prom (metrics)."""
    env = clean_env(home)
    keys = {name: add_key(env, name, *extra) for name, extra in [
        ("alice", ()), ("bob", ()), ("carol", ("--role", "admin")), ("prom", ("--role", "metrics"))
    ]}  # fmt: skip
    path = home / "config" / "demi" / "serve-keys.toml"
    with serve(LocalModel.load(str(model_dir), context=CONTEXT), keys_file=path) as srv:
        srv.keys, srv.env, srv.path = keys, env, path
        yield srv


def test_two_keys_usage_and_metrics_count_each_request(team):
    url, keys = team.url, team.keys
    usage: dict[str, list[int]] = {"alice": [0, 0], "bob": [0, 0]}
    texts: dict[str, list[str]] = {"/v1/completions": [], "/v1/chat/completions": []}  # for time to first token
    with httpx.Client(base_url=url, timeout=60) as c:
        for _ in range(2):
            r = c.post("/v1/completions", json=BODY, headers=auth(keys["alice"]))
            assert r.status_code == 200, r.text
            usage["alice"][0] += r.json()["usage"]["prompt_tokens"]
            usage["alice"][1] += r.json()["usage"]["completion_tokens"]
            texts["/v1/completions"].append(r.json()["choices"][0]["text"])
        r = c.post("/v1/chat/completions", json=CHAT, headers=auth(keys["bob"]))
        assert r.status_code == 200
        usage["bob"] = [r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"]]
        texts["/v1/chat/completions"].append(r.json()["choices"][0]["message"]["content"])
        stream = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
        with c.stream("POST", "/v1/completions", json=stream, headers=auth(keys["bob"])) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        usage["bob"][0] += events[-1]["usage"]["prompt_tokens"]
        usage["bob"][1] += events[-1]["usage"]["completion_tokens"]
        texts["/v1/completions"].append("".join(e["choices"][0]["text"] for e in events if e["choices"]))
        assert usage["alice"][1] == 6 and usage["bob"][1] == 5  # ignore_eos: exactly max_tokens each
        bad = c.post("/v1/completions", json={**BODY, "max_tokens": -1}, headers=auth(keys["bob"]))
        assert bad.status_code == 400  # counted as bob's error
        for headers in ({}, auth("demi-wrong"), {"authorization": f"Basic {keys['alice']}"}):
            r = c.post("/v1/completions", json=BODY, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers=auth(keys["alice"])).status_code == 200
        wait_idle(url, keys["carol"])

        # each user key sees its own usage only; the admin key sees everyone's
        own = c.get("/v1/demi/usage", headers=auth(keys["alice"])).json()
        assert own["object"] == "usage" and [e["key"] for e in own["keys"]] == ["alice"]
        a = own["keys"][0]
        assert (a["requests"], a["errors"], a["role"], a["active"]) == (2, 0, "user", True)
        assert [a["prompt_tokens"], a["completion_tokens"]] == usage["alice"]
        b = c.get("/v1/demi/usage", headers=auth(keys["bob"])).json()["keys"]
        assert len(b) == 1 and (b[0]["key"], b[0]["requests"], b[0]["errors"]) == ("bob", 3, 1)
        assert [b[0]["prompt_tokens"], b[0]["completion_tokens"]] == usage["bob"]
        everyone = {e["key"]: e for e in c.get("/v1/demi/usage", headers=auth(keys["carol"])).json()["keys"]}
        assert set(everyone) == {"alice", "bob", "carol", "prom"}
        assert everyone["alice"] == a and everyone["prom"]["requests"] == 0 and everyone["prom"]["role"] == "metrics"

        # roles: a user key may not read /metrics; the metrics key reads only /metrics and /health
        r = c.get("/metrics", headers=auth(keys["alice"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
        for method, path in [("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/v1/demi/usage")]:
            r = c.request(method, path, json=BODY if method == "POST" else None, headers=auth(keys["prom"]))
            assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", path
        assert c.get("/health", headers=auth(keys["prom"])).status_code == 200

    m = scrape(url, keys["prom"])
    for name, (prompt, completion) in usage.items():
        assert sample(m, "demi_prompt_tokens_total", key=name) == prompt
        assert sample(m, "demi_completion_tokens_total", key=name) == completion
    assert sample(m, "demi_generation_requests_total", key="alice") == 2
    assert sample(m, "demi_generation_requests_total", key="bob") == 3
    assert sample(m, "demi_generation_errors_total", key="bob") == 1
    assert sample(m, "demi_generation_errors_total", key="alice") == 0
    completions = {"route": "/v1/completions", "method": "POST"}
    assert sample(m, "demi_http_requests_total", **completions, status="200", key="alice") == 2
    assert sample(m, "demi_http_requests_total", **completions, status="200", key="bob") == 1
    assert sample(m, "demi_http_requests_total", **completions, status="400", key="bob") == 1
    assert sample(m, "demi_http_requests_total", **completions, status="401", key="-") == 3
    assert sample(m, "demi_http_requests_total", **completions, status="403", key="prom") == 1
    assert sample(m, "demi_http_requests_total", route="/metrics", method="GET", status="403", key="alice") == 1
    # latency: every /v1/completions request; time to first token: each answer with text (a piece)
    assert histogram_count(m, "demi_http_request_duration_seconds", **completions) == 8
    for route, answers in texts.items():
        assert histogram_count(m, "demi_time_to_first_token_seconds", route=route) == sum(map(bool, answers))
    ttft_sum = sample(m, "demi_time_to_first_token_seconds_sum", route="/v1/completions")
    assert ttft_sum <= sample(m, "demi_http_request_duration_seconds_sum", **completions)
    # the runner, read at scrape time
    assert sample(m, "demi_queue_depth") == 0 and sample(m, "demi_live_runs") == 0
    assert sample(m, "demi_runs_submitted_total") >= 4 and sample(m, "demi_max_live_runs") >= 1
    assert sample(m, "demi_keys_loaded") == 4
    assert not any(v in str(k) for k in m for v in team.keys.values())  # names label the series, never keys


def test_openmetrics_when_asked(team):
    r = httpx.get(
        f"{team.url}/metrics",
        headers={**auth(team.keys["prom"]), "accept": "application/openmetrics-text; version=1.0.0"},
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n") and "demi_queue_depth" in r.text


def test_revoke_and_add_take_effect_without_restart(team, caplog):
    url, keys, env = team.url, team.keys, team.env
    body = {**BODY, "max_tokens": 1}
    with httpx.Client(base_url=url, timeout=60) as c:
        assert c.post("/v1/completions", json=body, headers=auth(keys["bob"])).status_code == 200
        p = demi(env, "serve", "keys", "revoke", "bob")
        assert p.returncode == 0, p.stderr
        r = c.post("/v1/completions", json=body, headers=auth(keys["bob"]))
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/completions", json=body, headers=auth(keys["alice"])).status_code == 200
        dave = add_key(env, "dave")
        assert c.post("/v1/completions", json=body, headers=auth(dave)).status_code == 200
        everyone = {e["key"]: e for e in c.get("/v1/demi/usage", headers=auth(keys["carol"])).json()["keys"]}
        assert everyone["bob"]["active"] is False and everyone["bob"]["requests"] >= 1  # usage outlives the key
        assert everyone["dave"]["active"] is True and everyone["dave"]["requests"] == 1

        # a file broken while the server runs: the previous keys stay, with one warning in the log
        caplog.set_level("WARNING", logger="demi.serve")
        good = team.path.read_text()
        team.path.write_text(good + "\n[keys.eve]\nsha256 = 'not-hex'\n")
        assert c.post("/v1/completions", json=body, headers=auth(dave)).status_code == 200
        assert c.post("/v1/completions", json=body, headers=auth(keys["alice"])).status_code == 200
        warnings = [r.getMessage() for r in caplog.records if r.name == "demi.serve" and r.levelname == "WARNING"]
        assert len(warnings) == 1 and "keys.eve.sha256" in warnings[0] and "keeping the" in warnings[0]
        m = scrape(url, keys["prom"])
        assert sample(m, "demi_keys_file_reloads_total", result="error") == 1
        assert sample(m, "demi_keys_file_reloads_total", result="ok") >= 2  # the revoke and the add
        team.path.write_text(good)  # mended: read again
        assert c.post("/v1/completions", json=body, headers=auth(dave)).status_code == 200
        assert sample(scrape(url, keys["prom"]), "demi_keys_file_reloads_total", result="ok") >= 3


def test_openapi_describes_the_team_routes(team):
    doc = httpx.get(f"{team.url}/openapi.json", headers=auth(team.keys["alice"]), timeout=30).json()
    metrics = doc["paths"]["/metrics"]["get"]["responses"]
    assert set(metrics["200"]["content"]) == {"text/plain", "application/openmetrics-text"}
    usage = doc["paths"]["/v1/demi/usage"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert usage == {"$ref": "#/components/schemas/UsageReport"}
    entry = doc["components"]["schemas"]["KeyUsageEntry"]
    assert {"key", "role", "active", "requests", "prompt_tokens", "completion_tokens", "errors"} <= set(
        entry["properties"]
    )
    assert doc["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "401" in op["responses"] and "permission_denied" in op["responses"]["403"]["description"]


# -- without keys, with --api-key, and two servers in one process ---------------------------------


def test_without_keys_metrics_are_local_and_servers_do_not_share_counts(model_dir, team):
    with (
        serve(LocalModel.load(str(model_dir), context=CONTEXT)) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        assert c.post("/v1/completions", json=BODY).status_code == 200
        assert c.get("/metrics", headers={"host": "evil.example"}).status_code == 403  # the loopback rule
        m = scrape(srv.url)
        assert sample(m, "demi_generation_requests_total", key="local") == 1
        assert sample(m, "demi_generation_requests_total", key="alice") == 0  # the team server's, not here
        assert sample(m, "demi_keys_loaded") == 0
        usage = c.get("/v1/demi/usage").json()["keys"]
        assert [(e["key"], e["requests"]) for e in usage] == [("local", 1)]
        assert "security" not in c.get("/openapi.json").json()
    assert sample(scrape(team.url, team.keys["prom"]), "demi_generation_requests_total", key="local") == 0


def test_api_key_is_the_default_admin_beside_a_keys_file(model_dir, tmp_path):
    env = clean_env(tmp_path, DEMI_KEYS_FILE=str(tmp_path / "k.toml"))
    erin = add_key(env, "erin")
    with (
        serve(
            LocalModel.load(str(model_dir), context=CONTEXT), api_key="op-s3cret", keys_file=tmp_path / "k.toml"
        ) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        assert c.post("/v1/completions", json=BODY, headers=auth(erin)).status_code == 200
        assert c.get("/metrics", headers=auth("op-s3cret")).status_code == 200
        usage = {e["key"]: e for e in c.get("/v1/demi/usage", headers=auth("op-s3cret")).json()["keys"]}
        assert usage["default"]["role"] == "admin" and usage["erin"]["requests"] == 1
    add_key(env, "default")
    with pytest.raises(KeysFileError, match="'default' is taken"):
        KeyRing("op-s3cret", tmp_path / "k.toml")


class FailsMidStream:
    """The tiny model, except that each generation fails after its first piece (an engine error mid-stream)."""

    def __init__(self, model: LocalModel):
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def run(self, request):
        yield "x"
        raise RuntimeError("the engine failed mid-stream")


def test_a_stream_that_fails_after_its_200_counts_as_an_error(model_dir):
    with (
        serve(FailsMidStream(LocalModel.load(str(model_dir), context=CONTEXT))) as srv,
        httpx.Client(base_url=srv.url, timeout=60) as c,
    ):
        with c.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert '"server_error"' in events[-2] and events[-1] == "data: [DONE]"
        assert c.post("/v1/completions", json=BODY).status_code == 500
        (entry,) = c.get("/v1/demi/usage").json()["keys"]
        assert (entry["key"], entry["requests"], entry["errors"]) == ("local", 2, 2)
        m = scrape(srv.url)
        completions = {"route": "/v1/completions", "method": "POST", "key": "local"}
        assert sample(m, "demi_http_requests_total", **completions, status="200") == 1
        assert sample(m, "demi_http_requests_total", **completions, status="500") == 1
        assert sample(m, "demi_generation_errors_total", key="local") == 2
        assert histogram_count(m, "demi_time_to_first_token_seconds", route="/v1/completions") == 2
        assert sample(m, "demi_runs_finished_total", outcome="error") == 2


# -- bad keys files -------------------------------------------------------------------------------

DIGEST = "a" * 64
BAD_FILES = [
    ("not TOML", "[keys.alice\n", "not valid TOML"),
    ("bad digest", '[keys.alice]\nsha256 = "abc"\n', "keys.alice.sha256 must be 64 lowercase hex digits"),
    ("raw key", '[keys.alice]\nkey = "s3cret"\n', "unknown entry 'key'"),
    ("bad role", f'[keys.alice]\nsha256 = "{DIGEST}"\nrole = "root"\n', "role must be one of"),
    ("bad name", f'[keys."a b"]\nsha256 = "{DIGEST}"\n', "invalid key name 'a b'"),
    ("top level", f'[users.alice]\nsha256 = "{DIGEST}"\n', "unknown top-level entry 'users'"),
    ("same key twice", f'[keys.a]\nsha256 = "{DIGEST}"\n[keys.b]\nsha256 = "{DIGEST}"\n', "are the same key"),
]


@pytest.mark.parametrize("text,says", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_keys_file_is_one_line_before_the_model_loads(tmp_path, text, says):
    path = tmp_path / "keys.toml"
    path.write_text(text)
    with pytest.raises(KeysFileError, match=re.escape(says)):
        parse_keys(text, str(path))
    # the command line: exit 2, one line, and before the model is looked up (it does not exist)
    p = demi(clean_env(tmp_path), "serve", "--model", "/nonexistent/model", "--port", "0", "--keys-file", path)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and says in lines[0], p.stderr


def test_missing_keys_file_and_binding_rules(tmp_path):
    env = clean_env(tmp_path)
    p = demi(env, "serve", "--model", "/nonexistent/model", "--port", "0", "--keys-file", tmp_path / "none.toml")
    assert p.returncode == 2 and "does not exist" in p.stderr and "demi serve keys add" in p.stderr
    with pytest.raises(KeysFileError, match="does not exist"):
        create_app(object(), keys_file=tmp_path / "none.toml")  # before it looks at the model
    # a keys file is enough to bind every interface; nothing at all is not
    check_binding("0.0.0.0", None, str(tmp_path / "k.toml"))
    with pytest.raises(BindingRefused, match="--keys-file"):
        check_binding("0.0.0.0", None, None)


def test_key_ring_matches_the_right_key_among_many(tmp_path):
    path = tmp_path / "k.toml"
    env = clean_env(tmp_path, DEMI_KEYS_FILE=str(path))
    added = {name: add_key(env, name) for name in ("a", "b", "c")}
    ring = KeyRing(None, path)
    for name, key in added.items():
        found = ring.match(key)
        assert found is not None and found.name == name
    assert ring.match(added["a"] + "x") is None and ring.match("") is None


# -- the real command -----------------------------------------------------------------------------


def test_cli_serve_with_keys_file_from_env_revokes_live(model_dir, tmp_path):
    path = tmp_path / "keys.toml"
    env = clean_env(tmp_path, DEMI_KEYS_FILE=str(path))
    alice, bob = add_key(env, "alice"), add_key(env, "bob")
    proc = subprocess.Popen(
        [sys.executable, "-m", "demi", "serve", "--model", str(model_dir), "--port", "0", "--context", str(CONTEXT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        line = proc.stderr.readline()
        m = re.match(r"demi serve: listening on (http://127\.0\.0\.1:\d+) ", line)
        assert m, line
        url = m.group(1)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        for key in (alice, bob):
            r = httpx.post(f"{url}/v1/completions", json=BODY, headers=auth(key), timeout=60)
            assert r.status_code == 200, r.text
        assert demi(env, "serve", "keys", "revoke", "bob").returncode == 0
        assert httpx.post(f"{url}/v1/completions", json=BODY, headers=auth(bob), timeout=60).status_code == 401
        usage = httpx.get(f"{url}/v1/demi/usage", headers=auth(alice), timeout=10).json()["keys"]
        assert [(e["key"], e["requests"]) for e in usage] == [("alice", 1)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert not any("Traceback" in line for line in lines)
