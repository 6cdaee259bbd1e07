"""Engine clients: the one way the session layer and the front ends reach a model.

`InProcessEngine` runs the model in this process (the default: nothing to start).
`HttpEngine` talks to any OpenAI-compatible server (`demi serve`, vLLM, llama.cpp's server,
Ollama) with the standard library only. Both stream text pieces, take a `CancelToken` and a
time budget, and return the same `Completion`, so tasks never know which one they have.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from demi.assistant.budget import approx_tokens
from demi.assistant.context import FimContext
from demi.assistant.generation import END_OF_TURN, build_chat, build_fim
from demi.assistant.prompts import ChatPrompt, looks_instruct
from demi.assistant.runner import ModelRunner
from demi.model.engine import Completion, LocalModel, drain
from demi.model.errors import DemiError, DemiUserError
from demi.model.generate import CancelToken, GenerationRequest, Sampling

__all__ = [
    "CancelToken",
    "Completion",
    "END_OF_TURN",
    "Engine",
    "EngineInfo",
    "GenerationRequest",
    "HttpEngine",
    "InProcessEngine",
    "Sampling",
    "ServerError",
    "ServerUnreachableError",
    "drain",
    "engine_from_config",
    "open_engine",
]

log = logging.getLogger("demi")

LARGE_MODEL_PARAMS = 300_000_000  # from about here a model's explanation is worth leading with
# Draft tokens per step for speculative decoding from the prompt (`GenerationRequest.speculate`),
# the config's `speculate` default. Chat-style answers (explain, refactor, chat) copy names and code
# from their prompt, so drafts are often right; short FIM completions gain nothing (see
# benchmarks/RESULTS-speculation.md), so `infill` does not speculate.
DEFAULT_SPECULATE = 8


@dataclass
class EngineInfo:
    name: str
    kind: str  # in-process | http
    context: int | None = None
    parameters: int | None = None
    fim: str | None = None  # FIM family, None when the model has no FIM tokens (or unknown)
    chat_template: bool | None = None
    instruct: bool = False
    url: str | None = None
    fim_layout: str | None = None  # psm | spm: the FIM prompt's order (None: no template, or the server's)

    @property
    def large(self) -> bool:
        """Whether the model is big enough that its prose should lead (servers: assumed)."""
        return self.parameters is None or self.parameters >= LARGE_MODEL_PARAMS


class Engine(Protocol):
    name: str

    def stream(self, prompt: str | list[int], **kwargs: Any) -> Iterator[str]: ...

    def complete(
        self, prompt: str | list[int], on_text: Callable[[str], None] | None = None, **kwargs: Any
    ) -> Completion: ...

    def chat(self, prompt: ChatPrompt, on_text: Callable[[str], None] | None = None, **kwargs: Any) -> Completion: ...

    def infill(self, ctx: FimContext, on_text: Callable[[str], None] | None = None, **kwargs: Any) -> Completion: ...

    def count_tokens(self, text: str) -> int: ...

    def info(self) -> EngineInfo: ...

    def close(self) -> None: ...


def _generation(prompt: str | list[int], fields: dict[str, Any]) -> GenerationRequest:
    """The engine's request from the engine interface's keywords (`sampling=None`: the default)."""
    if fields.get("sampling", 0) is None:
        fields = {k: v for k, v in fields.items() if k != "sampling"}
    return GenerationRequest(prompt, **fields)


class InProcessEngine:
    """A `LocalModel` behind the engine interface; every model call goes through the one model
    runner (`runner.ModelRunner`): its own, or the one given (the language server's, shared by
    the models it loads). Generations take the calling thread's priority (`runner.set_priority`):
    at 0 (the default: an editor's completion, the CLI, the terminal UI) `complete` runs whole on
    the model thread; at 1 (a long answer in the editor) it is stepped between other work.
    `speculate` is the default draft depth of `chat` (0: off); a caller's `speculate=` wins."""

    def __init__(self, local: LocalModel, runner: ModelRunner | None = None, speculate: int = DEFAULT_SPECULATE):
        self.local = local
        self.speculate = max(0, int(speculate))
        self.name = local.name
        self._owns_runner = runner is None
        self.runner = runner if runner is not None else ModelRunner(local)
        if runner is not None:
            runner.attach(local)
        self._info: EngineInfo | None = None
        self._fim: Any = False  # not looked up yet

    # -- raw ---------------------------------------------------------------------------------------

    def stream(self, prompt: str | list[int], **kwargs: Any) -> Iterator[str]:
        return self.runner.stream(_generation(prompt, kwargs), model=self.local)

    def complete(
        self, prompt: str | list[int], on_text: Callable[[str], None] | None = None, **kwargs: Any
    ) -> Completion:
        result: Completion = self.runner.complete(_generation(prompt, kwargs), on_text, model=self.local)
        return result

    def perplexity(self, texts: list[str]) -> dict[str, float]:
        return self.runner.call(lambda: self.local.perplexity(texts)).result()

    def warm_up(self, prompt_tokens: range | list[int]) -> Future[list[int]]:
        """Build the prefill kernels of these prompt sizes on the model thread, queued behind what is
        there (see `LocalModel.warm_up`); the sizes run, when done."""
        return self.runner.call(lambda: self.local.warm_up(prompt_tokens))

    def tokenize(self, text: str) -> list[int]:
        return self.local.encode(text)

    def count_tokens(self, text: str) -> int:
        return len(self.local.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    # -- tasks -------------------------------------------------------------------------------------

    @property
    def fim_template(self) -> Any:
        if self._fim is False:
            from demi.assistant.fim import detect_fim

            self._fim = detect_fim(self.local.tokenizer)
        return self._fim

    def infill(
        self,
        ctx: FimContext,
        on_text: Callable[[str], None] | None = None,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Completion:
        """FIM through the model family's template; plain prefix continuation without one."""
        tpl = self.fim_template
        built = build_fim(self.local.tokenizer, tpl, ctx.prefix, ctx.suffix, ctx.path, ctx.other_files)
        stops = list(stop or []) + built.stop
        ids = self.local.stop_ids | built.stop_ids
        result = self.complete(built.prompt, on_text=on_text, stop=stops, stop_ids=ids, heal=built.heal, **kwargs)
        result.extra["fim"] = tpl.family if tpl is not None else None
        return result

    def chat(
        self,
        prompt: ChatPrompt,
        on_text: Callable[[str], None] | None = None,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Completion:
        """The chat template when the tokenizer has one, else the prompt's completion-style text."""
        built = build_chat(self.local.tokenizer, prompt)
        stops = list(stop or []) + built.stop
        end_ids = self.local.stop_ids | built.stop_ids
        kwargs.setdefault("speculate", self.speculate)
        result = self.complete(built.prompt, on_text=on_text, stop=stops, stop_ids=end_ids, **kwargs)
        result.extra["chat_template"] = built.templated
        return result

    def info(self) -> EngineInfo:
        if self._info is None:
            params = None
            try:
                from demi.model.info import model_info

                params = int(model_info(self.local.model.config).params.total)
            except Exception:  # an exotic config: count the tensors instead
                params = sum(p.numel() for p in self.local.model.parameters())
            tpl = self.fim_template
            self._info = EngineInfo(
                self.name,
                "in-process",
                self.local.context,
                params,
                tpl.family if tpl is not None else None,
                bool(self.local.tokenizer.chat_template),
                looks_instruct(self.name, self.local.path),
                fim_layout=tpl.order if tpl is not None else None,
            )
        return self._info

    def close(self) -> None:
        """Stop the engine's own runner (a shared one belongs to whoever passed it)."""
        if self._owns_runner:
            self.runner.stop()


# -- HTTP ------------------------------------------------------------------------------------------


class ServerUnreachableError(DemiUserError):
    """--server names a host or port where nothing answers."""


class ServerError(DemiError):
    """The server answered with an error (a runtime failure: exit 1)."""


class _Response:
    """An open HTTP response; `close` from another thread aborts a blocked read."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self.conn, self.resp = conn, resp

    def close(self) -> None:
        try:
            if self.conn.sock is not None:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


class HttpEngine:
    """An OpenAI-compatible server behind the engine interface (standard library only).

    FIM: with `fim` naming the remote model's template family (the `server_fim` setting: qwen,
    starcoder, starcoder2, codellama, deepseek, codestral, demi-tiny), the prompt is built here by
    `generation.build_fim` with the same template code as in-process (a local copy of the model's
    tokenizer, when there is one, gives its exact template) and sent as a raw prompt with the
    template's stop strings; without it, `suffix` goes to /v1/completions and the server builds it."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        tokenizer: Any = None,
        fim: str | None = None,
    ):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DemiUserError(f"bad server URL {url!r}: use http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.netloc}"
        base = parts.path.rstrip("/")
        self.base_path = base if base.endswith("/v1") else base + "/v1"
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.api_key, self.timeout, self.connect_timeout = api_key, timeout, connect_timeout
        self.tokenizer = tokenizer
        self._model, self._resolved = model, False
        self.name = model or "server"
        self.fim_template = _client_fim_template(fim, tokenizer) if fim else None

    # -- plumbing ----------------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)

    def _open(self, method: str, path: str, body: dict | None = None) -> _Response:
        conn = self._connect()
        headers = {"Accept": "application/json, text/event-stream", "User-Agent": "demi"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.connect()
            conn.sock.settimeout(self.timeout)
            conn.request(method, self.base_path + path, body=data, headers=headers)
            resp = conn.getresponse()
        except (ConnectionError, socket.gaierror, TimeoutError, OSError) as exc:
            conn.close()
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            if isinstance(exc, (socket.timeout, TimeoutError)):
                reason = "timed out"
            raise ServerUnreachableError(
                f"cannot reach the server at {self.url}: {reason} (is it running? check --server or DEMI_SERVER)"
            ) from None
        if resp.status >= 400:
            raw = resp.read(65536)
            conn.close()
            message: Any = raw.decode("utf-8", errors="replace").strip()
            try:
                err = json.loads(message)
                message = (
                    (err.get("error") or {}).get("message")
                    if isinstance(err.get("error"), dict)
                    else err.get("error") or err.get("detail") or message
                )
            except (ValueError, AttributeError):
                pass
            first = str(message).strip().splitlines()[0] if str(message).strip() else resp.reason
            cls = DemiUserError if resp.status in (400, 401, 403, 404, 413, 422) else ServerError
            raise cls(f"server {self.url} answered {resp.status}: {first}")
        return _Response(conn, resp)

    def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        r = self._open(method, path, body)
        try:
            return json.loads(r.resp.read().decode("utf-8"))
        except ValueError as exc:
            raise ServerError(f"server {self.url} sent something that is not JSON ({exc})") from None
        finally:
            r.close()

    @property
    def model(self) -> str:
        """The model id to send: the one asked for if the server has it (or lists nothing); for a
        name it does not list, that name's last path part or the server's only model; with no
        name, the first model the server lists."""
        if not self._resolved:
            try:
                data = self._json("GET", "/models").get("data") or []
                ids = [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
            except (ServerError, KeyError, TypeError, AttributeError):
                ids = []
            wanted = self._model
            if not wanted:
                self._model = ids[0] if ids else "default"
            elif ids and wanted not in ids:  # a local path for a model the server knows by its id
                by_name = Path(wanted).name
                self._model = by_name if by_name in ids else ids[0] if len(ids) == 1 else wanted
            self._resolved = True
            self.name = self._model or "default"
        return self._model or "default"

    def _body(self, max_new_tokens: int, sampling: Sampling | None, stop: list[str] | None) -> dict[str, Any]:
        s = sampling or Sampling()
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_new_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.top_k:
            body["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.seed is not None:
            body["seed"] = s.seed
        stops = [x for x in (stop or []) if x][:4]  # OpenAI's limit
        if stops:
            body["stop"] = stops
        return body

    def _events(
        self, path: str, body: dict[str, Any], cancel: CancelToken | None, time_budget: float | None
    ) -> Generator[str, None, Completion]:
        """Text pieces from an SSE stream; the Completion is the generator's return value."""
        started = time.monotonic()
        deadline = started + time_budget if time_budget else None
        r = self._open("POST", path, body)
        done = threading.Event()

        def watch() -> None:  # close the socket as soon as the caller cancels (a read may be blocked)
            while not done.wait(0.05):
                if (cancel is not None and cancel.cancelled) or (deadline and time.monotonic() > deadline):
                    r.close()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        text: list[str] = []
        reason, usage, first = "length", dict[str, Any](), None
        try:
            while True:
                try:
                    line = r.resp.readline()
                except (OSError, ValueError, AttributeError, http.client.HTTPException):  # closed by `watch`
                    line = b""
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                try:
                    event = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(event.get("error"), dict):
                    raise ServerError(f"server {self.url}: {event['error'].get('message', 'error')}")
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = choice.get("text")
                    if piece is None:
                        piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if first is None:
                            first = time.monotonic() - started
                        text.append(piece)
                        yield piece
                    if choice.get("finish_reason"):
                        reason = choice["finish_reason"]
        finally:
            done.set()
            r.close()
        if cancel is not None and cancel.cancelled:
            reason = "cancelled"
        elif deadline and time.monotonic() > deadline and reason == "length":
            reason = "time"
        full = "".join(text)
        completion_tokens = int(usage.get("completion_tokens") or 0) or self.count_tokens(full)
        out = Completion(full, [], int(usage.get("prompt_tokens") or 0), reason, time.monotonic() - started, first)
        out.extra["completion_tokens"] = completion_tokens
        return out

    # -- engine interface --------------------------------------------------------------------------

    def stream(
        self,
        prompt: str | list[int],
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        stop: list[str] | None = None,
        cancel: CancelToken | None = None,
        time_budget: float | None = None,
        suffix: str | None = None,
        **_: Any,
    ) -> Iterator[str]:
        body = self._body(max_new_tokens, sampling, stop)
        body["prompt"] = prompt
        if suffix is not None:
            body["suffix"] = suffix
        return self._events("/completions", body, cancel, time_budget)

    def complete(
        self, prompt: str | list[int], on_text: Callable[[str], None] | None = None, **kwargs: Any
    ) -> Completion:
        return drain(self.stream(prompt, **kwargs), on_text)

    def infill(
        self,
        ctx: FimContext,
        on_text: Callable[[str], None] | None = None,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Completion:
        """With a known FIM family: the prompt built here (`build_fim`, no token healing: a server
        cannot constrain the first token) and sent raw with the template's stop strings. Otherwise
        `suffix` on /v1/completions: the server applies its model's FIM template."""
        kwargs.pop("stop_ids", None)
        tpl = self.fim_template
        if tpl is not None:
            built = build_fim(None, tpl, ctx.prefix, ctx.suffix, ctx.path, ctx.other_files, heal=False)
            stops = list(dict.fromkeys([*(stop or []), *built.stop]))  # the caller's first: a server takes 4
            result = self.complete(built.prompt, on_text=on_text, stop=stops, **kwargs)
            result.extra["fim"] = tpl.family
            return result
        if stop is not None:
            kwargs["stop"] = stop
        prefix = ctx.prefix
        if ctx.other_files:  # the server's template takes prefix and suffix only: other files go in comments
            from demi.assistant.fim import line_comment

            mark = line_comment(ctx.path or ctx.other_files[0][0])
            head = "".join(f"{mark} {p}\n{c}" + ("" if c.endswith("\n") else "\n") + "\n" for p, c in ctx.other_files)
            prefix = head + (f"{mark} {ctx.path}\n" if ctx.path else "") + prefix
        result = self.complete(prefix, on_text=on_text, suffix=ctx.suffix, **kwargs)
        result.extra["fim"] = "server"
        return result

    def chat(
        self,
        prompt: ChatPrompt,
        on_text: Callable[[str], None] | None = None,
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        stop: list[str] | None = None,
        cancel: CancelToken | None = None,
        time_budget: float | None = None,
        **_: Any,
    ) -> Completion:
        body = self._body(max_new_tokens, sampling, stop)
        body["messages"] = prompt.messages
        return drain(self._events("/chat/completions", body, cancel, time_budget), on_text)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0
        return approx_tokens(text)

    def info(self) -> EngineInfo:
        tpl = self.fim_template
        fim, layout = (tpl.family, tpl.order) if tpl is not None else ("server", None)
        return EngineInfo(self.model, "http", None, None, fim, None, looks_instruct(self.model), self.url, layout)

    def close(self) -> None:
        pass


def _client_fim_template(family: str, tokenizer: Any) -> Any:
    """The FIM template the HTTP client builds prompts with for a remote model of `family`: the one
    detected on a local copy of the model's tokenizer when it has that format (its exact stops and
    spacing, in the family's order), else the family's template from its name alone."""
    from demi.assistant.fim import detect_fim, fim_template_for

    try:
        tpl = fim_template_for(family)
    except ValueError as exc:
        raise DemiUserError(f"server_fim: {exc}") from None
    local = detect_fim(tokenizer, layout=tpl.order if tpl.style == "qwen" else None) if tokenizer is not None else None
    if local is not None and local.style == tpl.style:
        return replace(local, family=tpl.family, stop_token_ids=frozenset())
    return tpl


def _local_tokenizer(model: str | None) -> Any:
    """The tokenizer of `model` when it is on this machine (exact token budgets for a server)."""
    if not model:
        return None
    try:
        from demi.model.registry import resolve_model_dir
        from demi.model.tokenizer import Tokenizer

        return Tokenizer.from_dir(resolve_model_dir(model, download=False))
    except Exception:  # not local, or not a model directory: estimate instead
        return None


def open_engine(
    model: str | None = None,
    device: str | None = "cpu",
    dtype: str | None = "auto",
    context: int | None = None,
    server: str | None = None,
    api_key: str | None = None,
    timeout: float = 120.0,
    quant: str | None = None,
    runner: ModelRunner | None = None,
    speculate: int = DEFAULT_SPECULATE,
    server_fim: str | None = None,
) -> InProcessEngine | HttpEngine:
    """Load `model` in this process, or talk to `server` (a name, a directory or a hub id;
    None means the config file, then DEMI_MODEL, then demi-tiny; no `quant` means "auto", the config's
    default: int8 on a CPU). An in-process model runs on `runner` when given, else on its own, and
    speculates `speculate` draft tokens per step in chat-style answers (0: off)."""
    if server:  # `model` names the server's model; a local copy, if any, gives exact token counts
        # `server_fim` names that model's FIM family: the client then builds FIM prompts itself
        tok = _local_tokenizer(model)
        return HttpEngine(server, model, api_key=api_key, timeout=timeout, tokenizer=tok, fim=server_fim)
    if model is None:
        from demi.assistant.config import load_config

        model = load_config()["model"]
    local = LocalModel.load(model, device=device, dtype=dtype, context=context, quant=quant or "auto")
    return InProcessEngine(local, runner, speculate)


def load_local_model(cfg: Any) -> LocalModel:
    """The model the effective config names, loaded in this process (what `demi serve` shares)."""
    return LocalModel.load(
        cfg["model"], device=cfg["device"] or "cpu", dtype=cfg["dtype"], context=cfg["context"], quant=cfg["quant"]
    )


def engine_from_config(cfg: Any) -> InProcessEngine | HttpEngine:
    """The engine the effective config asks for (flags already folded in)."""
    return open_engine(
        cfg["model"],
        device=cfg["device"] or "cpu",
        dtype=cfg["dtype"],
        context=cfg["context"],
        server=cfg["server"],
        api_key=cfg["api_key"],
        timeout=cfg["server_timeout"],
        quant=cfg["quant"],
        speculate=cfg["speculate"],
        server_fim=cfg["server_fim"],
    )
