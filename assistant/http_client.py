"""The one HTTP client of Demi: every request to a model server goes through `HttpClient`.

Built on httpx: a pool of keep-alive connections per server (one TLS handshake, not one per
keystroke), timeouts (connect, and between bytes), proxies from the environment (`HTTPS_PROXY`,
`HTTP_PROXY`, `NO_PROXY`) and TLS verification on (`SSL_CERT_FILE` names another CA bundle).
Server-Sent Events are parsed by httpx-sse. A stream is cancelled by closing it: a watcher shuts
its socket down as soon as the `CancelToken` fires or the time budget runs out, so a read blocked
on a silent server returns at once.

Errors are one line: `ServerUnreachableError` (nothing answers: a user error, check the URL),
`DemiUserError` for what the server refuses in the request (4xx), `ServerError` for its failures.
The server's own message is taken from whichever error shape it uses (OpenAI's `{"error":
{"message"}}`, vLLM's `{"object": "error", "message"}`, TGI's and Ollama's `{"error": "..."}`,
FastAPI's `{"detail"}`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, SSEError

from demi.model.errors import DemiError, DemiUserError
from demi.model.generate import CancelToken

__all__ = ["HttpClient", "ServerError", "ServerUnreachableError", "error_message"]

USER_AGENT = "demi"
KEEPALIVE_SECONDS = 120.0  # an editor asks again within seconds; keep the connection that long
_USER_STATUS = (400, 401, 403, 404, 405, 413, 422)


class ServerUnreachableError(DemiUserError):
    """--server names a host or port where nothing answers."""


class ServerError(DemiError):
    """The server answered with an error (a runtime failure: exit 1)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerRejected(DemiUserError):
    """The server refused the request (4xx); `status` says how."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def error_message(payload: Any, fallback: str = "") -> str:
    """The server's message, one line, from any of the error shapes servers use."""
    message: Any = payload
    if isinstance(payload, dict):
        err = payload.get("error")
        if isinstance(err, dict):
            message = err.get("message") or err.get("type") or json.dumps(err)
        elif isinstance(err, str) and err:
            message = err
        elif payload.get("object") == "error" or "message" in payload:
            message = payload.get("message")
        elif "detail" in payload:
            detail = payload["detail"]
            message = (
                detail[0].get("msg") if isinstance(detail, list) and detail and isinstance(detail[0], dict) else detail
            )
    text = str(message if message is not None else "").strip()
    return text.splitlines()[0].strip() if text else fallback


class HttpClient:
    """A pooled client for one server. `url` may end in `/v1` (OpenAI's prefix) or not: routes are
    given from the server's root (`/v1/completions`, `/infill`, `/api/version`)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
    ):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DemiUserError(f"bad server URL {url!r}: use http://HOST:PORT")
        try:
            parts.port  # noqa: B018 - a bad port raises here, not on the first request
        except ValueError:
            raise DemiUserError(f"bad server URL {url!r}: the port is not a number") from None
        self.url = f"{parts.scheme}://{parts.netloc}"
        root = parts.path.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self.timeout, self.connect_timeout = timeout, connect_timeout
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=KEEPALIVE_SECONDS),
            trust_env=True,  # proxies and CA bundle from the environment
            follow_redirects=False,
        )

    # -- plain requests ---------------------------------------------------------------------------

    def request_json(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """The JSON answer of one request; one-line errors (see the module docstring)."""
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=min(timeout, self.connect_timeout))
        try:
            response = self._http.request(method, self.root + path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        self._check(response)
        try:
            return response.json()
        except ValueError as exc:
            raise ServerError(f"server {self.url} sent something that is not JSON ({exc})") from None

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        return self.request_json("GET", path, timeout=timeout)

    def post_json(self, path: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        return self.request_json("POST", path, body, timeout=timeout)

    def probe(self, path: str, timeout: float | None = None) -> Any | None:
        """The JSON at `path`, or None when the route is missing, refused or not JSON (detection
        asks servers for routes they may not have). Unreachable servers still raise."""
        try:
            return self.get_json(path, timeout=timeout)
        except (ServerError, ServerRejected):
            return None

    # -- streams ----------------------------------------------------------------------------------

    def events(
        self,
        path: str,
        body: dict[str, Any],
        cancel: CancelToken | None = None,
        deadline: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """The JSON payloads of a Server-Sent Events answer to POST `path`, until `[DONE]` or the
        end. Closing the iterator closes the stream; so do `cancel` and the monotonic `deadline`."""
        request = self._http.build_request(
            "POST", self.root + path, json=body, headers={"Accept": "text/event-stream", "Cache-Control": "no-store"}
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        done = threading.Event()
        try:
            if response.status_code >= 400:
                response.read()
                self._check(response)
            if cancel is not None or deadline is not None:
                threading.Thread(
                    target=_watch, args=(response, done, cancel, deadline), name="demi-http-watch", daemon=True
                ).start()
            try:
                for sse in EventSource(response).iter_sse():
                    if sse.data == "[DONE]":
                        return
                    if not sse.data:
                        continue
                    try:
                        payload = json.loads(sse.data)
                    except ValueError:
                        continue  # a comment or keep-alive line some servers send
                    if sse.event == "error" or (isinstance(payload, dict) and payload.get("error")):
                        raise ServerError(f"server {self.url}: {error_message(payload, 'error')}")
                    if isinstance(payload, dict):
                        yield payload
            except SSEError as exc:  # not an event stream: an error page or a plain JSON answer
                raise ServerError(f"server {self.url} did not stream: {exc}") from None
            except (httpx.StreamError, httpx.TransportError, OSError):
                if done.is_set() or _stopped(cancel, deadline):  # closed by `_watch`: a cancel, not a fault
                    return
                raise ServerError(f"server {self.url} closed the stream") from None
        finally:
            done.set()
            response.close()

    # -- errors -----------------------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> ServerUnreachableError:
        if isinstance(exc, httpx.TimeoutException):
            reason = "timed out"
        else:
            cause = exc.__context__ or exc.__cause__
            reason = getattr(cause, "strerror", None) or str(exc) or type(exc).__name__
        return ServerUnreachableError(
            f"cannot reach the server at {self.url}: {reason} (is it running? check --server or DEMI_SERVER)"
        )

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            payload: Any = response.json()
        except ValueError:
            payload = response.text[:2000]
        first = error_message(payload, response.reason_phrase or "error")
        text = f"server {self.url} answered {response.status_code}: {first}"
        if response.status_code in _USER_STATUS:
            raise ServerRejected(text, response.status_code)
        raise ServerError(text, response.status_code)

    def timed(self, path: str, timeout: float | None = None) -> tuple[Any, float]:
        """GET `path`: its JSON and the round trip in seconds."""
        started = time.perf_counter()
        data = self.get_json(path, timeout=timeout)
        return data, time.perf_counter() - started

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stopped(cancel: CancelToken | None, deadline: float | None) -> bool:
    return (cancel is not None and cancel.cancelled) or (deadline is not None and time.monotonic() > deadline)


def _watch(response: httpx.Response, done: threading.Event, cancel: CancelToken | None, deadline: float | None) -> None:
    """Close the stream as soon as the caller cancels or its time is up (a read may be blocked)."""
    while not done.wait(0.02):
        if _stopped(cancel, deadline):
            done.set()
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read; the pool drops the connection
                except OSError:
                    pass
            return
