"""Small real HTTP servers on 127.0.0.1 for the HTTP client's tests: routes are functions, every
request is recorded (method, path, JSON body, headers), and the client's TCP connections counted.
tests/assistant/test_http_kinds.py builds the documented APIs of vLLM, TGI and Ollama on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[["Handler", dict[str, Any] | None], None]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers
    server: Server

    def log_message(self, *a: Any) -> None:
        pass

    def _dispatch(self, body: dict[str, Any] | None) -> None:
        self.server.connections.add(self.client_address)
        self.server.seen.append((self.command, self.path, body, dict(self.headers)))
        route = self.server.routes.get((self.command, self.path.split("?")[0]))
        if route is None:
            self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        route(self, body)

    def do_GET(self) -> None:
        self._dispatch(None)

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._dispatch(json.loads(raw) if raw else None)

    def send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def event(self, obj: Any) -> None:
        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[tuple[str, str], Route]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes = routes
        self.connections: set[tuple[str, int]] = set()
        self.seen: list[tuple[str, str, Any, dict[str, str]]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


def chunks(pieces: list[str], delay: float = 0.0, usage: bool = True) -> Route:
    def route(h: Handler, body: dict[str, Any] | None) -> None:
        h.start_events()
        try:
            for p in pieces:
                h.event({"choices": [{"index": 0, "text": p, "finish_reason": None}]})
                time.sleep(delay)
            h.event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
            if usage:
                h.event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(pieces)}})
            h.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client closed the stream
            h.server.seen.append(("CLOSED", h.path, None, {}))

    return route


def models(h: Handler, _: Any) -> None:
    h.send_json(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})


class RecordingProxy(ThreadingHTTPServer):
    """A reverse proxy in front of a real server: every request's method, path and JSON body is
    recorded, then forwarded; the answer (Server-Sent Events included) streams back as it comes.
    What the client sent is exactly what reached the server."""

    daemon_threads = True

    def __init__(self, upstream: str):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(upstream)
        self.requests: list[tuple[str, str, Any]] = []
        outer = self

        class Forward(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                outer.requests.append((self.command, self.path, body))
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=raw or None, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    while chunk := resp.read1(65536):
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except OSError:  # the client closed the stream: so does the proxy, upstream too
                    pass
                finally:
                    conn.close()

            do_GET = do_POST = _forward

        super().__init__(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def posted(self, path: str) -> list[Any]:
        """The JSON bodies POSTed to `path`, oldest first."""
        return [b for m, p, b in self.requests if m == "POST" and p.split("?")[0] == path]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
