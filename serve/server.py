"""`demi serve`: an OpenAI-compatible HTTP server for one model held in memory.

Routes: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions` (a `suffix` makes it a FIM
request through `fim.py`), `POST /v1/chat/completions` (the tokenizer's chat template, or a plain
`role: content` transcript for base models without one), `GET /v1/demi/stats` (the model runner's
counters), `GET /v1/demi/usage`, `GET /metrics` and `GET /health`. `stream: true` answers with
Server-Sent Events in OpenAI's format, ending with `data: [DONE]`; `stream_options.include_usage` adds
a last chunk with `usage` (and empty `choices`). With one model loaded, `model` may be omitted or name anything.

Generation runs on the model runner's single thread (`demi.assistant.runner`); request coroutines only
validate, tokenize (in the thread pool) and relay events. A client that disconnects, before or during
its stream, cancels its generation. Errors use OpenAI's shape (server_api.py); bad input is always a
4xx and never stops the server.

For a team: `GET /metrics` (Prometheus) and `GET /v1/demi/usage` (usage per key), in `team_routes.py`,
counted by `metrics.py`.

Guards, in front of every route (404s included; `guard.py`): a Bearer API key when keys are configured
(`--api-key`, or named keys in a keys file, `keys.py`; 401 otherwise, 403 for a route the key's role does
not allow); without keys, the Host header must name the loopback (403 otherwise: a web page cannot
reach the model through DNS rebinding); POST bodies must be JSON (415 for text/plain or forms, which
browsers send cross-site without a CORS preflight); a request body limit (413, 4 MB by default) and
a time limit for the body to arrive (408, 30 s by default). Binding a non-loopback address needs an
API key or a keys file (`check_binding`: the CLI, `run` and `ServerThread` refuse otherwise).

`/openapi.json` describes every route exactly, errors and Server-Sent Events included (see
`server_api.document`); `tests/serve/test_server_fuzz.py` fuzzes a live server from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from demi.assistant.engines import DEFAULT_SPECULATE, GenerationRequest, Sampling
from demi.assistant.errors import CancelToken, ContextOverflowError, DemiUserError
from demi.assistant.fim import FimTemplate, detect_fim
from demi.assistant.generation import build_chat, build_fim, end_of_turn_ids, transcript_prompt
from demi.assistant.runner import ModelRunner, QueueFull, Run, RunnerStopped, RunRequest
from demi.serve.api import (
    GENERATION_ERRORS,
    GREEDY_BELOW,
    MAX_REPETITION_PENALTY,
    MAX_SPECULATE,
    MAX_STOP,
    MAX_STOP_LEN,
    MIN_REPETITION_PENALTY,
    ApiError,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Stats,
    bad_unicode,
    document,
    invalid,
    sse_schema,
    unsupported,
    validation_error,
)
from demi.serve.binding import BindingRefused, check_binding, is_loopback  # noqa: F401 - their older home
from demi.serve.guard import ClientGone, Guard
from demi.serve.keys import KeyRing
from demi.serve.metrics import Metrics
from demi.serve.team_routes import add_team_routes

log = logging.getLogger("demi.serve")

MAX_BODY_BYTES = 4 * 1024 * 1024
BODY_TIMEOUT_S = 30.0  # a request body must arrive in full within this (408 otherwise)
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default for /v1/completions; chat: the rest of the context
SHUTTING_DOWN = "the server is shutting down"


# -- request -> generation ----------------------------------------------------------------------


@dataclass
class Prepared:
    """A validated request, ready for the model runner."""

    params: GenerationRequest
    stream: bool
    include_usage: bool
    strip_leading: bool = False  # plain chat transcript: the model answers after "assistant:"
    extra: dict[str, Any] = field(default_factory=dict)


class ModelInfo:
    """What the routes need to know about the loaded model, computed once; `speculate`: chat's
    default draft depth (0: off); `cache_reuse`: completions' shortest cached run reused shifted (0: off)."""

    def __init__(self, model: Any, speculate: int = 0, cache_reuse: int = 0):
        self.model = model
        self.speculate = max(0, int(speculate))
        self.cache_reuse = max(0, int(cache_reuse))
        self.name = str(getattr(model, "name", "model"))
        self.tokenizer = model.tokenizer
        self.context = int(model.context)
        cfg = getattr(getattr(model, "model", None), "config", None)
        self.vocab_size = int(getattr(cfg, "vocab_size", 0) or self.tokenizer.vocab_size)
        self.stop_ids: set[int] = set(getattr(model, "stop_ids", None) or self.tokenizer.eos_token_ids)
        self.fim: FimTemplate | None = detect_fim(self.tokenizer)
        self.turn_ids = end_of_turn_ids(self.tokenizer)
        self.created = int(time.time())


def _stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP:
        raise invalid("stop", f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
    if any(len(s) > MAX_STOP_LEN for s in stops):
        raise invalid("stop", f"each stop sequence must be at most {MAX_STOP_LEN} characters")
    return [s for s in stops if s]


def _sampling(req: CompletionRequest | ChatRequest) -> Sampling:
    t = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
    if not 0 <= t <= 2:
        raise invalid("temperature", f"temperature must be between 0 and 2, got {t}")
    top_p = 1.0 if req.top_p is None else req.top_p
    if not 0 < top_p <= 1:
        raise invalid("top_p", f"top_p must be in (0, 1], got {top_p}")
    top_k = req.top_k or 0
    if top_k < 0:
        raise invalid("top_k", f"top_k must be >= 0 (0 turns it off), got {top_k}")
    rep = 1.0 if req.repetition_penalty is None else req.repetition_penalty
    if not MIN_REPETITION_PENALTY <= rep <= MAX_REPETITION_PENALTY:
        raise invalid(
            "repetition_penalty",
            f"repetition_penalty must be between {MIN_REPETITION_PENALTY} and {MAX_REPETITION_PENALTY:g}, got {rep}",
        )
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(req, name) not in (None, 0):
            raise unsupported(
                name,
                f"{name} is not supported; use repetition_penalty (a multiplicative "
                "penalty on repeated tokens, as in Hugging Face's generate)",
            )
    seed = None if req.seed is None else req.seed % 2**64  # torch's own reading of a negative seed
    if t < GREEDY_BELOW:
        t = 0.0
    return Sampling(temperature=t, top_k=top_k, top_p=top_p, repetition_penalty=rep, seed=seed)


def _speculate(req: CompletionRequest | ChatRequest, default: int) -> int:
    """Draft tokens per step for this request: its `speculate` extension, else the route's default."""
    if req.speculate is None:
        return default
    if not 0 <= req.speculate <= MAX_SPECULATE:
        raise invalid(
            "speculate", f"speculate must be between 0 and {MAX_SPECULATE} (0 turns it off), got {req.speculate}"
        )
    return req.speculate


def _common_checks(req: CompletionRequest | ChatRequest) -> None:
    if req.n not in (None, 1):
        raise unsupported("n", "only n=1 is supported (send several requests instead)")
    if req.logit_bias:
        raise unsupported("logit_bias", "logit_bias is not supported")
    if req.stream_options is not None and not req.stream:
        raise invalid("stream_options", "stream_options is only allowed when stream is true")


def _max_tokens(
    value: int | None, default: int, prompt_len: int, context: int, param: str, minimum: int, prompt_param: str
) -> int:
    if prompt_len >= context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{prompt_len} tokens. Please shorten the prompt.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    n = default if value is None else value
    if n < minimum:
        raise invalid(param, f"{param} must be >= {minimum}, got {n}")
    if prompt_len + n > context:
        raise ApiError(
            400,
            f"This model's maximum context length is {context} tokens. However, you "
            f"requested {prompt_len + n} tokens ({prompt_len} in the prompt, {n} for the "
            f"completion). Please reduce the prompt or {param}.",
            param=param,
            code="context_length_exceeded",
        )
    return n


def _end_ids(info: ModelInfo, ignore_eos: bool, extra: Iterable[int] = ()) -> set[int]:
    return set() if ignore_eos else info.stop_ids | set(extra)


def prepare_completion(info: ModelInfo, req: CompletionRequest) -> Prepared:
    """Validate a /v1/completions body and build its prompt (runs in the thread pool)."""
    _common_checks(req)
    if req.echo:
        raise unsupported("echo", "echo is not supported")
    if req.best_of not in (None, 1):
        raise unsupported("best_of", "only best_of=1 is supported")
    if req.logprobs is not None:
        raise unsupported("logprobs", "logprobs are not supported")
    sampling, stops, speculate = _sampling(req), _stop_list(req.stop), _speculate(req, 0)  # FIM gains nothing
    prompt: Any = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise unsupported("prompt", "batched prompts are not supported: send one prompt per request")
        prompt = prompt[0]
    extra_ids: set[int] = set()
    heal = ""
    if isinstance(prompt, list):
        if req.suffix is not None:
            raise invalid("suffix", "suffix needs a text prompt, not token ids")
        bad = next((i for i in prompt if not 0 <= i < info.vocab_size), None)
        if bad is not None:
            raise invalid("prompt", f"token id {bad} is out of range (the vocabulary has {info.vocab_size})")
        ids = list(prompt)
    else:
        text = prompt
        if req.suffix is not None and (req.suffix or info.fim is not None):
            if info.fim is None:
                raise ApiError(
                    400,
                    f"model {info.name} has no fill-in-the-middle tokens, so it cannot "
                    "complete with a suffix; send the prompt alone",
                    param="suffix",
                    code="fim_not_supported",
                )
            built = build_fim(info.tokenizer, info.fim, prompt, req.suffix)  # healed, as in-process engines do
            text, heal = str(built.prompt), built.heal
            stops += built.stop
            extra_ids = built.stop_ids
        ids = info.tokenizer.encode(text)
    if not ids:
        raise invalid("prompt", "the prompt is empty")
    n = _max_tokens(req.max_tokens, DEFAULT_COMPLETION_TOKENS, len(ids), info.context, "max_tokens", 0, "prompt")
    params = GenerationRequest(
        ids,
        n,
        sampling,
        stops,
        _end_ids(info, req.ignore_eos, extra_ids),
        heal,
        speculate=speculate,
        cache_shift=info.cache_reuse,  # a FIM prompt, built here or by the client, changes mid-prompt
    )
    include = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(params, req.stream, include)


def _message_text(i: int, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise unsupported(
                f"messages.{i}.content", f"content parts of type {part.type!r} are not supported (text only)"
            )
        if part.model_extra:  # a text part is {"type": "text", "text": ...}; a typo must not pass silently
            name = f"messages.{i}.content.{j}.{next(iter(part.model_extra))}"
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
        parts.append(part.text)
    return "".join(parts)


def prepare_chat(info: ModelInfo, req: ChatRequest) -> Prepared:
    """Validate a /v1/chat/completions body and render its prompt (runs in the thread pool). Chat
    speculates `info.speculate` draft tokens per step unless the request's `speculate` says otherwise."""
    _common_checks(req)
    if req.logprobs or req.top_logprobs:
        raise unsupported("logprobs", "logprobs are not supported")
    if req.tools:
        raise unsupported("tools", "tools are not supported")
    if req.tool_choice not in (None, "none", "auto"):
        raise unsupported("tool_choice", "tool_choice is not supported")
    if req.response_format not in (None, {"type": "text"}):
        raise unsupported("response_format", 'only response_format {"type": "text"} is supported')
    sampling, stops, speculate = _sampling(req), _stop_list(req.stop), _speculate(req, info.speculate)
    messages = []
    for i, m in enumerate(req.messages):
        if m.tool_calls:
            raise unsupported(f"messages.{i}.tool_calls", "tool calls are not supported")
        role = "system" if m.role == "developer" else m.role
        msg = {"role": role, "content": _message_text(i, m.content)}
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    # The chat template (ending on an end-of-turn token), or for a base model a plain transcript it
    # continues after "assistant:" (the session layer's one chat prompt path).
    built = build_chat(info.tokenizer, transcript_prompt(messages))
    assert isinstance(built.prompt, list)  # build_chat encodes
    ids = built.prompt
    stops += built.stop
    end_ids, strip = built.stop_ids, not built.templated
    if not ids:
        raise invalid("messages", "the conversation is empty")
    default = info.context - len(ids)
    n = _max_tokens(req.max_tokens, default, len(ids), info.context, "max_tokens", 1, "messages")
    if req.max_completion_tokens is not None:  # OpenAI's newer name wins, but both must be valid
        n = _max_tokens(
            req.max_completion_tokens, default, len(ids), info.context, "max_completion_tokens", 1, "messages"
        )
    params = GenerationRequest(ids, n, sampling, stops, _end_ids(info, req.ignore_eos, end_ids), speculate=speculate)
    include = bool(req.stream_options and req.stream_options.include_usage)
    return Prepared(params, req.stream, include, strip_leading=strip)


# -- responses ----------------------------------------------------------------------------------


def _finish(reason: str | None) -> str:
    return "length" if reason in ("length", "time") else "stop"


def _usage(c: Any) -> dict[str, Any]:
    prompt, completion = int(c.prompt_tokens), len(c.token_ids)
    extra = getattr(c, "extra", None) or {}
    cached = int(extra.get("cached_tokens", 0) or 0)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    spec = extra.get("speculation")  # a Demi extension, only when the run speculated
    if spec:
        usage["speculation"] = {key: int(spec[key]) for key in ("k", "drafted", "accepted", "steps")}
        usage["speculation"]["acceptance"] = float(spec["acceptance"])
    return usage


def _sse(obj: Any, ascii_only: bool = False) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=ascii_only, separators=(',', ':'))}\n\n"


class _ErrorJSON(JSONResponse):
    """An error body in ASCII JSON: messages may quote the request (a parameter name, a model id), and a
    lone surrogate in it would make UTF-8 encoding, and so the error itself, fail with a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _error_response(err: ApiError, headers: Any = None) -> JSONResponse:
    return _ErrorJSON(err.body(), status_code=err.status, headers=headers)


def _engine_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RunnerStopped):
        return ApiError(503, SHUTTING_DOWN, code="server_busy", type_="server_error")
    if isinstance(exc, QueueFull):
        return ApiError(503, str(exc), code="server_busy", type_="server_error")
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, str(exc), param="prompt", code="context_length_exceeded")
    if isinstance(exc, DemiUserError):
        return ApiError(400, str(exc), code="invalid_request")
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", code="server_error")


class _LeadStrip:
    """Drops the whitespace the model puts right after "assistant:" in a plain transcript."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, piece: str) -> str:
        if self.on:
            piece = piece.lstrip()
            self.on = not piece
        return piece


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


async def _race_disconnect(request: Request, awaitable: Any) -> Any:
    """Await `awaitable`, or raise ClientGone if the client disconnects first."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        gone.cancel()
        raise
    if work in done:
        gone.cancel()
        return work.result()
    work.cancel()
    raise ClientGone


class Job:
    """One request's run on the model runner; the runner's events land on this event loop's queue."""

    def __init__(self, runner: ModelRunner, params: GenerationRequest, kind: str):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.first_piece: float | None = None  # time.monotonic() of the first text piece (metrics)

        def sink(event: str, value: Any) -> None:  # on the model thread
            if event == "piece" and self.first_piece is None:
                self.first_piece = time.monotonic()
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (event, value))
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

        if params.cancel is None:  # the engine's own token: a step already running stops early too
            params.cancel = CancelToken()
        self.run: Run = runner.submit(RunRequest(params, kind=kind), sink)

    def cancel(self) -> None:
        """The client is gone: drop the run if queued, stop it if running. Safe from any thread."""
        self.run.cancel()


async def _collect(job: Job, strip: _LeadStrip) -> tuple[str, Any]:
    pieces = []
    while True:
        kind, value = await job.events.get()
        if kind == "piece":
            pieces.append(strip(value))
        elif kind == "done":
            return "".join(pieces), value
        else:
            raise _engine_error(value)


async def _generate(
    request: Request,
    prep: Prepared,
    kind: str,
    render: Callable[[str, Any, str, int], dict[str, Any]],
    chunk: Callable[[str | None, str | None, bool, str, int], dict[str, Any]],
) -> Response:
    """Run one prepared request on the model runner; answer JSON or an SSE stream."""
    runner: ModelRunner = request.app.state.runner
    try:
        job = Job(runner, prep.params, kind)
    except RunnerStopped:
        raise ApiError(429, SHUTTING_DOWN, code="queue_full") from None
    except QueueFull as exc:
        raise ApiError(429, str(exc), code="queue_full") from None
    request.state.job = job  # the guard reads its time to first token
    rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    strip = _LeadStrip(prep.strip_leading)
    if not prep.stream:
        try:
            text, completion = await _race_disconnect(request, _collect(job, strip))
        except ClientGone:
            job.cancel()
            return Response(status_code=499)
        except BaseException:
            job.cancel()
            raise
        request.state.usage = (completion.prompt_tokens, len(completion.token_ids))
        return JSONResponse(render(rid, completion, text, created))

    try:  # wait for the first event, so an error before any text is still a proper status code
        first = await _race_disconnect(request, job.events.get())
    except ClientGone:
        job.cancel()
        return Response(status_code=499)
    except BaseException:
        job.cancel()
        raise
    if first[0] == "error":
        raise _engine_error(first[1])

    def out(obj: dict[str, Any]) -> str:
        if prep.include_usage:  # as OpenAI: every chunk has "usage", null until the last one
            obj.setdefault("usage", None)
        return _sse(obj)

    async def events() -> AsyncIterator[str]:
        ev = first
        try:
            opening = chunk(None, None, True, rid, created)
            if opening:
                yield out(opening)
            while True:
                kind_, value = ev
                if kind_ == "piece":
                    piece = strip(value)
                    if piece:
                        yield out(chunk(piece, None, False, rid, created))
                elif kind_ == "done":
                    request.state.usage = (value.prompt_tokens, len(value.token_ids))
                    yield out(chunk(None, _finish(value.finish_reason), False, rid, created))
                    if prep.include_usage:
                        tail = chunk(None, None, False, rid, created)
                        tail["choices"], tail["usage"] = [], _usage(value)
                        yield out(tail)
                    yield "data: [DONE]\n\n"
                    return
                else:
                    request.state.failed = True  # a 200 that failed: an error in the usage counts
                    yield _sse(_engine_error(value).body(), ascii_only=True)
                    yield "data: [DONE]\n\n"
                    return
                ev = await job.events.get()
        finally:
            job.cancel()  # a no-op when finished; otherwise the client went away mid-stream

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# -- app ----------------------------------------------------------------------------------------


def create_app(
    model: Any,
    *,
    api_key: str | None = None,
    keys_file: str | os.PathLike[str] | None = None,
    max_active: int = 4,
    max_queue: int = 64,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    loopback_hosts_only: bool = True,
    log_requests: bool = False,
    speculate: int = DEFAULT_SPECULATE,
    cache_reuse: int = 0,
) -> Guard:
    """The ASGI app serving `model` (a LocalModel or anything with the same stream/tokenizer API).

    `speculate`: draft tokens per step of speculative decoding from the prompt for chat requests (the
    config's `speculate`; 0: off; a request's `speculate` wins). Completions speculate only when asked.
    `cache_reuse`: completions reuse cached runs of at least this many tokens at shifted positions
    (the config's `cache_reuse`; 0: exact reuse only; see demi.model.prefix_cache).

    `api_key` (one key, named "default", role admin) and/or `keys_file` (named keys, see
    `demi.serve.keys`; read here, so a bad file raises KeysFileError before anything starts).

    `loopback_hosts_only`: without keys, answer only requests whose Host header is a loopback
    name (set it False when binding a non-loopback address behind a proxy that rewrites Host).
    """
    keyring = KeyRing(api_key, keys_file)  # first: a bad keys file fails before anything starts
    info = ModelInfo(model, speculate, cache_reuse)
    runner = ModelRunner(model, max_live=max_active, max_queue=max_queue, name="demi-serve-worker")
    metrics = Metrics(runner.stats, keyring)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(
        title="Demi",
        description="OpenAI-compatible API of a local Demi model",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runner, app.state.info, app.state.metrics = runner, info, metrics
    app.state.scheduler = runner  # its older name

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = document(
                base,
                context=info.context,
                vocab_size=info.vocab_size,
                fim=info.fim is not None,
                api_key=keyring.enabled,
                host_check=loopback_hosts_only and not keyring.enabled,
                roles=keyring.path is not None,
            )  # as Guard decides
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(validation_error(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = ApiError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
        elif exc.status_code == 405:
            err = ApiError(
                405, f"Method {request.method} is not allowed for {request.url.path}.", code="method_not_allowed"
            )
        elif exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, nested too deep)
            err = ApiError(400, f"We could not parse the JSON body of your request: {exc.detail}", code="invalid_json")
        else:
            err = ApiError(exc.status_code, str(exc.detail), code=None)
        return _error_response(err, exc.headers)  # a 405 keeps its "Allow" header

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", exc, exc_info=True)
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}", code="server_error"))

    def model_card() -> dict[str, Any]:
        return {
            "id": info.name,
            "object": "model",
            "created": info.created,
            "owned_by": "demi",
            "context_length": info.context,
            "fim": info.fim.family if info.fim else None,
            "quantization": str(getattr(model, "quantization", "none")),
        }

    @app.get("/v1/models", response_model=None, responses={200: {"model": ModelList}})
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get(
        "/v1/models/{model_id:path}",
        response_model=None,
        responses={
            200: {"model": ModelCard},
            404: {"model": ErrorResponse, "description": "No such model (code `model_not_found`)"},
        },
    )
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != info.name:
            raise ApiError(
                404,
                f"The model '{model_id}' does not exist (this server has '{info.name}').",
                param="model",
                code="model_not_found",
            )
        return model_card()

    @app.get("/health", response_model=None, responses={200: {"model": Health}})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": info.name}

    @app.get("/v1/demi/stats", response_model=None, responses={200: {"model": Stats}})
    async def stats() -> dict[str, Any]:
        return {"model": info.name, "context": info.context, **runner.stats()}

    @app.post(
        "/v1/completions",
        response_model=None,
        responses={200: _generation_ok(CompletionResponse, CompletionChunk), **GENERATION_ERRORS},
    )
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prep = await _prepare(prepare_completion, info, body)

        def render(rid: str, c: Any, text: str, created: int) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": info.name,
                "system_fingerprint": None,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": _finish(c.finish_reason)}],
                "usage": _usage(c),
            }

        def chunk(text: str | None, finish: str | None, opening: bool, rid: str, created: int) -> dict[str, Any]:
            if opening:
                return {}
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": info.name,
                "choices": [{"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}],
            }

        return await _generate(request, prep, "completion", render, chunk)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses={200: _generation_ok(ChatResponse, ChatChunk), **GENERATION_ERRORS},
    )
    async def chat(body: ChatRequest, request: Request) -> Response:
        prep = await _prepare(prepare_chat, info, body)

        def render(rid: str, c: Any, text: str, created: int) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": info.name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": _finish(c.finish_reason),
                    }
                ],
                "usage": _usage(c),
            }

        def chunk(text: str | None, finish: str | None, opening: bool, rid: str, created: int) -> dict[str, Any]:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if opening else {}
            if text:
                delta["content"] = text
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": info.name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        return await _generate(request, prep, "chat", render, chunk)

    add_team_routes(app, metrics)
    return Guard(
        app,
        keyring,
        metrics,
        api_key=api_key,
        max_body=max_body_bytes,
        body_timeout_s=body_timeout_s,
        loopback_hosts_only=loopback_hosts_only,
        log_requests=log_requests,
    )


def _generation_ok(model: type, chunk: type) -> dict[str, Any]:
    """The 200 of a generation route: JSON, or Server-Sent Events with `stream: true`."""
    return {
        "model": model,
        "description": "The answer; with `stream: true`, Server-Sent Events ending with `data: [DONE]`",
        "content": {"text/event-stream": {"schema": sse_schema(chunk)}},
    }


def _checked(fn: Callable[[ModelInfo, Any], Prepared], info: ModelInfo, body: Any) -> Prepared:
    bad = bad_unicode(body.model_dump())
    if bad is not None:  # the tokenizer would fail on it with a TypeError
        raise invalid(
            bad, f"'{bad}' is not valid Unicode: it has a lone UTF-16 surrogate (an unpaired \\uD800-\\uDFFF escape)"
        )
    return fn(info, body)


async def _prepare(fn: Callable[[ModelInfo, Any], Prepared], info: ModelInfo, body: Any) -> Prepared:
    try:
        return await run_in_threadpool(_checked, fn, info, body)
    except ApiError:
        raise
    except DemiUserError as exc:  # e.g. a chat template that rejects the conversation
        raise _engine_error(exc) from None


# -- running it ---------------------------------------------------------------------------------


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; port 0 picks a free port (see getsockname())."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def url_for(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: Any, on_ready: Callable[[], None] | None):
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit and on_ready is not None:
                on_ready()

    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", http="h11", ws="none", timeout_graceful_shutdown=3
    )
    return _Server(config)


def run(app: Any, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Serve `app` on the bound socket until interrupted (Ctrl-C or SIGTERM)."""
    check_binding(str(sock.getsockname()[0]), getattr(app, "api_key", None), getattr(app, "keys_file", None))
    _uvicorn_server(app, on_ready).run(sockets=[sock])


class ServerThread:
    """The server on a background thread (tests, or embedding it in another program)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        check_binding(host, getattr(app, "api_key", None), getattr(app, "keys_file", None))
        self.sock = bind_socket(host, port)
        self.url = url_for(self.sock)
        self.port = self.sock.getsockname()[1]
        self._ready = threading.Event()
        self.server = _uvicorn_server(app, self._ready.set)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="demi-serve", daemon=True
        )

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("demi serve did not start")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
