"""The guard in front of every `demi serve` route (plain ASGI, so 404s and 405s are covered too).

In order: the API key (`Authorization: Bearer KEY`, checked against the `KeyRing`: 401 without a
valid one) and its role (403 `permission_denied`, see `demi.serve.keys`); without keys, the Host
header must name the loopback (403 `forbidden_host`: a web page cannot reach the model through DNS
rebinding); POST bodies must be JSON (415: browsers send text/plain and forms cross-site without a
CORS preflight); the body must fit the size limit (413) and arrive within the time limit (408).

Every request, refused or served, ends in one `Outcome` for `demi.serve.metrics` (route template,
method, status, key name, latency, tokens, time to first token) and, when asked, one log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.routing import Match

from demi.serve.api import ApiError
from demi.serve.keys import ApiKey, KeyRing
from demi.serve.metrics import CLIENT_GONE, LOCAL, UNAUTHENTICATED, Metrics, Outcome

log = logging.getLogger("demi.serve")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class Guard:
    """API keys and roles, Host check, body size and time limits, metrics and the per-request log line."""

    def __init__(
        self,
        app: FastAPI,
        keyring: KeyRing,
        metrics: Metrics,
        max_body: int,
        body_timeout_s: float,
        loopback_hosts_only: bool,
        log_requests: bool,
        api_key: str | None = None,
    ):
        self.app, self.keyring, self.metrics, self.max_body = app, keyring, metrics, max_body
        self.api_key = api_key or None  # `run` and `ServerThread` check the binding with these two
        self.keys_file = str(keyring.path) if keyring.path is not None else None
        self.body_timeout_s = body_timeout_s
        self.check_host = loopback_hosts_only and not keyring.enabled
        self.log_requests = log_requests
        self.state = app.state  # tests and callers reach the runner through here too

    async def _reject(self, send: Any, err: ApiError, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps(err.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        state = scope.setdefault("state", {})
        route, status, finished = self._route(scope), 0, False
        who: dict[str, Any] = {"label": UNAUTHENTICATED, "role": "user"}
        self.metrics.in_progress.inc()

        def finish() -> None:
            nonlocal finished
            if finished:
                return
            finished = True
            self.metrics.in_progress.dec()
            code = status or CLIENT_GONE
            if self.log_requests:
                self._log(scope, code, started)
            first = getattr(state.get("job"), "first_piece", None)
            usage = state.get("usage")
            self.metrics.record(
                Outcome(
                    route,
                    str(scope.get("method", "")),
                    code,
                    who["label"],
                    time.monotonic() - started,
                    role=who["role"],
                    usage=usage,
                    first_token_s=None if first is None else max(0.0, first - started),
                    failed=bool(state.get("failed")),
                )
            )

        async def logged_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finish()

        try:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            err, key = self._check(headers, scope.get("path", ""))
            if key is not None:
                who.update(label=key.name, role=key.role)
            elif not self.keyring.enabled:
                who.update(label=LOCAL, role="admin")
            state["demi_key"] = key
            if err is None and scope.get("method") == "POST" and not _is_json(headers.get("content-type")):
                err = ApiError(415, "Content-Type must be application/json.", code="unsupported_media_type")
            if err is not None:
                extra = [(b"www-authenticate", b"Bearer")] if err.status == 401 else []
                await self._reject(logged_send, err, extra)
                return
            try:
                body = await self._read_body(receive, headers)
            except ApiError as exc:
                await self._reject(logged_send, exc, [(b"connection", b"close")])
                return
            except ClientGone:
                return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, logged_send)
        finally:
            finish()  # a stream the client left, or a crash: counted all the same

    def _route(self, scope: dict) -> str:
        """The route's path template (a bounded label: any other URL is "other")."""
        partial = None
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path_format", "other"))
            if match == Match.PARTIAL and partial is None:  # the path, another method (a 405)
                partial = str(getattr(route, "path_format", "other"))
        return partial or "other"

    def _check(self, headers: dict[str, str], path: str) -> tuple[ApiError | None, ApiKey | None]:
        if self.keyring.enabled:
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                missing = "Missing API key: send the header 'Authorization: Bearer KEY'."
                return ApiError(401, missing, code="invalid_api_key"), None
            key = self.keyring.match(token.strip())
            if key is None:
                return ApiError(401, "Incorrect API key provided.", code="invalid_api_key"), None
            if not key.allows(path):
                return ApiError(
                    403,
                    f"The key {key.name!r} has the role {key.role!r}, which does not allow {path}.",
                    code="permission_denied",
                ), key
            return None, key
        if self.check_host:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host.startswith("[") and "]" in host:
                name = host[: host.index("]") + 1]
            if name.lower() not in LOOPBACK_NAMES:
                return ApiError(
                    403,
                    f"Host {host!r} is not a loopback name; this server answers local "
                    "clients only (start it with --api-key or --keys-file to serve other hosts).",
                    code="forbidden_host",
                ), None
        return None, None

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes:
        too_big = ApiError(413, f"The request body is larger than {self.max_body} bytes.", code="request_too_large")
        length = headers.get("content-length")
        if length is not None:
            try:
                if int(length) > self.max_body:
                    raise too_big
            except ValueError:
                raise ApiError(400, "invalid Content-Length header", code="invalid_body") from None
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:  # a client that stalls mid-body must not hold its connection (and coroutine) forever
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise ApiError(
                    408, f"The request body did not arrive within {self.body_timeout_s:g} s.", code="request_timeout"
                ) from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            data = message.get("body", b"")
            size += len(data)
            if size > self.max_body:
                raise too_big
            chunks.append(data)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _log(self, scope: dict, status: int, started: float) -> None:
        usage = (scope.get("state") or {}).get("usage")
        tokens = f" {usage[0]}+{usage[1]} tokens" if usage else ""
        ms = (time.monotonic() - started) * 1000
        log.info("%s %s %s%s %.0f ms", scope.get("method"), scope.get("path"), status, tokens, ms)


def _is_json(content_type: str | None) -> bool:
    """A missing Content-Type is read as JSON; text/plain or a form is not (a web page can send those
    cross-site without a CORS preflight, so accepting them would let any page drive the model)."""
    if not content_type:
        return True
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
