"""The routes a team's operator uses: `GET /metrics` (Prometheus) and `GET /v1/demi/usage` (usage per key).

Who may read them (the guard, `demi.serve.guard`, checks the key's role before the route runs):
- `/metrics`: keys with the `admin` or `metrics` role (a scraper sends `Authorization: Bearer KEY`);
  on a server without keys, any loopback client, as every other route.
- `/v1/demi/usage`: every key; a `user` key sees its own entry only, an `admin` key every key's (those
  revoked since the start included, `active: false`); on a server without keys, everything (`local`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from demi.serve.api import UsageReport
from demi.serve.keys import ApiKey
from demi.serve.metrics import LOCAL, KeyUsage, Metrics

EXPOSITION = {
    "description": "The server's metrics in Prometheus text format (OpenMetrics when the Accept header asks for it)",
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/openmetrics-text": {"schema": {"type": "string"}},
    },
}


def add_team_routes(app: FastAPI, metrics: Metrics) -> None:
    @app.get("/metrics", response_class=Response, responses={200: EXPOSITION})
    async def prometheus(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    @app.get("/v1/demi/usage", response_model=None, responses={200: {"model": UsageReport}})
    async def usage(request: Request) -> dict[str, Any]:
        caller: ApiKey | None = getattr(request.state, "demi_key", None)
        return {"object": "usage", "since": metrics.started, "keys": usage_entries(metrics, caller)}


def usage_entries(metrics: Metrics, caller: ApiKey | None) -> list[dict[str, Any]]:
    """What `caller` may see: its own entry (a user key), or every key's (an admin key, or no keys at all)."""
    book = metrics.usage()
    if caller is None:  # a server without keys: one local user
        return [_entry(name, "admin", True, u) for name, u in sorted(book.items())] or [
            _entry(LOCAL, "admin", True, KeyUsage())
        ]
    if caller.role != "admin":
        return [_entry(caller.name, caller.role, True, book.get(caller.name, KeyUsage()))]
    live = {k.name: k for k in metrics.keyring.keys()}
    names = sorted(set(live) | set(book))
    return [
        _entry(name, live[name].role if name in live else book[name].role, name in live, book.get(name, KeyUsage()))
        for name in names
    ]


def _entry(name: str, role: str, active: bool, u: KeyUsage) -> dict[str, Any]:
    return {
        "key": name,
        "role": role,
        "active": active,
        "requests": u.requests,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "errors": u.errors,
        "last_request": u.last_request,
    }
