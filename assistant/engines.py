"""Engine clients: the one way the session layer and the front ends reach a model.

`InProcessEngine` runs the model in this process (the default: nothing to start).
`HttpEngine` talks to a model server (`demi serve`, llama.cpp's server, llama-cpp-python, Ollama,
vLLM, TGI or any OpenAI-compatible one) through the one HTTP client (`http_client`), in the dialect
of the server's kind (`server_kinds`). Both stream text pieces, take a `CancelToken` and a time
budget, and return the same `Completion`, so tasks never know which one they have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from demi.assistant.budget import approx_tokens
from demi.assistant.config import DEFAULT_CACHE_REUSE
from demi.assistant.context import FimContext
from demi.assistant.fim import FAMILIES
from demi.assistant.generation import END_OF_TURN, build_chat, build_fim
from demi.assistant.http_client import HttpClient, ServerError, ServerRejected, ServerUnreachableError
from demi.assistant.prompts import ChatPrompt, looks_instruct
from demi.assistant.runner import ModelRunner
from demi.assistant.server_kinds import (
    Dialect,
    Params,
    ServerFacts,
    detect,
    dialect_for,
    family_from_model_name,
    kind_name,
)
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
    server_kind: str | None = None  # http: demi | llama.cpp | llama-cpp-python | ollama | vllm | tgi | openai

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

    def __init__(
        self,
        local: LocalModel,
        runner: ModelRunner | None = None,
        speculate: int = DEFAULT_SPECULATE,
        cache_reuse: int = DEFAULT_CACHE_REUSE,
    ):
        self.local = local
        self.speculate = max(0, int(speculate))
        self.cache_reuse = max(0, int(cache_reuse))  # FIM: shortest cached run reused shifted (0: exact)
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

    def measure_speed(self, prompt_tokens: int = 1024, warm: bool = True) -> Future[dict[str, float]]:
        """Prefill and decode speed on this machine (`LocalModel.measure_speed`), timed on the model
        thread behind what is queued there."""
        return self.runner.call(lambda: self.local.measure_speed(prompt_tokens, warm=warm))

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
        kwargs.setdefault("cache_shift", self.cache_reuse)
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


class _StopCut:
    """Stop strings enforced on the client, so every kind of server stops at the same place (a
    server takes only a few stops, and some leave end-of-turn markers in the text). Text that could
    be the start of a stop is held back until it is clear, as the in-process engine does."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.held = ""
        self.hit = False

    def push(self, piece: str) -> str:
        text = self.held + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit, self.held = True, ""
            return text[: min(cuts)]
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), hold, -1):
                if text.endswith(s[:n]):
                    hold = n
                    break
        self.held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class HttpEngine:
    """A model server behind the engine interface: `demi serve`, llama.cpp's `llama-server`,
    llama-cpp-python, Ollama, vLLM, TGI or any OpenAI-compatible server (`server_kinds`).

    The server's kind is detected once, on first use (or named by `kind`, the `server_kind`
    setting); requests go through one pooled `http_client.HttpClient`. FIM, in order: with `fim`
    naming the remote model's template family (the `server_model_family` setting, formerly
    `server_fim`) the prompt is built here by `generation.build_fim` (the same template code as
    in-process; a local copy of the model's tokenizer, when there is one, gives its exact template)
    and sent as a plain prompt with the template's stop strings; else the server's native FIM where
    it has one (llama.cpp's `/infill`, `suffix` for demi serve and Ollama); else the family named by
    the served model's name, built here; else, on an unknown OpenAI server, `suffix`; else the
    prefix alone (a warning says so)."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        tokenizer: Any = None,
        fim: str | None = None,
        kind: str | None = None,
    ):
        self.client = HttpClient(url, api_key, timeout=timeout, connect_timeout=connect_timeout)
        self.url = self.client.url
        try:
            self._forced_kind = kind_name(kind)
        except ValueError as exc:
            raise DemiUserError(f"server_kind: {exc}") from None
        self.tokenizer = tokenizer
        self._model, self._resolved = model, False
        self.name = model or "server"
        self._forced_fim = _client_fim_template(fim, tokenizer) if fim else None
        self._facts: ServerFacts | None = None
        self._dialect: Dialect | None = None
        self._native_failed = False
        self._warned_blind = False
        self._lock = threading.Lock()

    # -- the server ------------------------------------------------------------------------------

    @property
    def facts(self) -> ServerFacts:
        """What serves at the URL (detected once; `ServerUnreachableError` when nothing answers)."""
        with self._lock:
            if self._facts is None:
                self._facts = detect(self.client, self._forced_kind)
                self._dialect = dialect_for(self._facts)
                log.info("server %s: %s, models %s", self.url, self._facts.kind, self._facts.models)
            return self._facts

    @property
    def kind(self) -> str:
        return self.facts.kind

    @property
    def dialect(self) -> Dialect:
        self.facts  # noqa: B018 - detection sets the dialect
        assert self._dialect is not None
        return self._dialect

    @property
    def model(self) -> str:
        """The model id to send: the one asked for if the server has it (or lists nothing); for a
        name it does not list, that name's last path part or the server's only model; with no
        name, the first model the server lists."""
        if not self._resolved:
            ids = self.facts.models
            wanted = self._model
            if not wanted:
                self._model = ids[0] if ids else "default"
            elif ids and wanted not in ids:  # a local path for a model the server knows by its id
                by_name = Path(wanted).name
                self._model = by_name if by_name in ids else ids[0] if len(ids) == 1 else wanted
            self._resolved = True
            self.name = self._model or "default"
            if self.tokenizer is None and self._model:  # a server on this machine (demi serve): its files
                self.tokenizer = _local_tokenizer(self._model)
        return self._model or "default"

    @property
    def fim_template(self) -> Any:
        """The template the client builds FIM prompts with (None: the server's native FIM, or none)."""
        return self._fim_plan()[1]

    def _fim_plan(self) -> tuple[str, Any]:
        """How `infill` fills in the middle: ("prompt", template) built here; ("infill" | "suffix",
        None) the server's native FIM; ("prefix", None) the prefix alone."""
        if self._forced_fim is not None:
            return "prompt", self._forced_fim
        dialect = self.dialect
        if dialect.native_fim and not self._native_failed:
            return dialect.native_fim, None
        family = self.facts.fim_family or family_from_model_name(self.model)
        if family is not None:
            return "prompt", _client_fim_template(family, self.tokenizer)
        if dialect.kind == "openai":  # OpenAI's API has `suffix`: the server may know its template
            return "suffix", None
        return "prefix", None

    # -- streaming -------------------------------------------------------------------------------

    def _params(self, max_new_tokens: int, sampling: Sampling | None, stop: list[str] | None) -> Params:
        return Params(max_new_tokens, sampling or Sampling(), [s for s in (stop or []) if s])

    def _run(
        self,
        route: tuple[str, dict[str, Any]],
        stops: list[str],
        cancel: CancelToken | None,
        time_budget: float | None,
        prompt: str | list[int] = "",
    ) -> Generator[str, None, Completion]:
        """Text pieces of one streamed request, cut at `stops`; the Completion is the return value.
        Prompt tokens are the server's count, or counted here (`prompt`) when the stream was closed
        before the server said (a stop found here, a cancel) or it never says (llama-cpp-python)."""
        path, body = route
        started = time.monotonic()
        deadline = started + time_budget if time_budget else None
        cut = _StopCut(stops)
        text: list[str] = []
        reason, first = "length", None
        prompt_tokens = completion_tokens = cached = None
        events = self.client.events(path, body, cancel, deadline)
        try:
            for event in events:
                got = self.dialect.read(event)
                prompt_tokens = got.prompt_tokens if got.prompt_tokens is not None else prompt_tokens
                completion_tokens = got.completion_tokens if got.completion_tokens is not None else completion_tokens
                cached = got.cached_tokens if got.cached_tokens is not None else cached
                reason = got.finish or reason
                piece = cut.push(got.text) if got.text else ""
                if piece:
                    if first is None:
                        first = time.monotonic() - started
                    text.append(piece)
                    yield piece
                if cut.hit:  # a stop string: close the stream, the server stops generating
                    reason = "stop"
                    break
        finally:
            events.close()  # type: ignore[attr-defined]
        tail = cut.flush()
        if tail:
            text.append(tail)
            yield tail
        if cancel is not None and cancel.cancelled:
            reason = "cancelled"
        elif deadline and time.monotonic() > deadline and reason == "length":
            reason = "time"
        full = "".join(text)
        counted = "server" if prompt_tokens is not None else "client"
        if prompt_tokens is None:
            prompt_tokens = len(prompt) if isinstance(prompt, list) else self.count_tokens(prompt)
        out = Completion(full, [], prompt_tokens, reason, time.monotonic() - started, first)
        out.extra["prompt_tokens_from"] = counted
        out.extra["completion_tokens"] = completion_tokens or self.count_tokens(full)
        out.extra["server_kind"] = self.facts.kind
        if cached is not None:
            out.extra["cached_tokens"] = cached
        return out

    # -- engine interface ------------------------------------------------------------------------

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
        params = self._params(max_new_tokens, sampling, stop)
        route = self.dialect.completion(self.model, prompt, params, suffix)  # type: ignore[arg-type]
        text = prompt + (suffix or "") if isinstance(prompt, str) else prompt
        return self._run(route, params.stop, cancel, time_budget, text)

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
        """Fill in the middle as `_fim_plan` says. Built here: no token healing (a server cannot
        constrain the first token), the caller's stops first, then the template's (a server takes
        a few; the client enforces all). A native FIM the server turns down (llama.cpp without FIM
        tokens) is not tried again: the next plan is used from then on."""
        kwargs.pop("stop_ids", None)
        plan, tpl = self._fim_plan()
        if plan == "prompt":
            built = build_fim(None, tpl, ctx.prefix, ctx.suffix, ctx.path, ctx.other_files, heal=False)
            stops = list(dict.fromkeys([*(stop or []), *built.stop]))
            result = self.complete(built.prompt, on_text=on_text, stop=stops, **kwargs)
            result.extra["fim"] = tpl.family
            return result
        if plan == "infill":
            params = self._params(kwargs.pop("max_new_tokens", 256), kwargs.pop("sampling", None), stop)
            route = self.dialect.infill(self.model, ctx.prefix, ctx.suffix, list(ctx.other_files), ctx.path, params)
            try:
                text = ctx.prefix + ctx.suffix + "".join(c for _, c in ctx.other_files)
                run = self._run(route, params.stop, kwargs.get("cancel"), kwargs.get("time_budget"), text)
                result = drain(run, on_text)
            except (ServerRejected, ServerError) as exc:
                if getattr(exc, "status", None) not in (400, 404, 405, 500, 501):
                    raise
                log.warning("%s: /infill refused (%s); building FIM prompts here instead", self.url, exc)
                self._native_failed = True
                return self.infill(
                    ctx, on_text, stop, max_new_tokens=params.max_tokens, sampling=params.sampling, **kwargs
                )
            result.extra["fim"] = "server"
            return result
        if stop is not None:
            kwargs["stop"] = stop
        prefix = _with_other_files(ctx)
        if plan == "suffix":
            result = self.complete(prefix, on_text=on_text, suffix=ctx.suffix, **kwargs)
            result.extra["fim"] = "server"
            return result
        if not self._warned_blind:
            self._warned_blind = True
            log.warning(
                "%s (%s): the FIM template of %r is unknown: completing the prefix alone "
                "(set server_model_family to one of %s)",
                self.url,
                self.facts.kind,
                self.model,
                ", ".join(FAMILIES),
            )
        result = self.complete(prefix or "\n", on_text=on_text, **kwargs)
        result.extra["fim"] = None
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
        """The server's chat route (it applies its model's chat template); the end-of-turn markers
        are stops here too, for servers that let them through as text."""
        params = self._params(max_new_tokens, sampling, stop)
        route = self.dialect.chat(self.model, prompt.messages, params)
        text = "".join(str(m.get("content") or "") for m in prompt.messages)
        return drain(self._run(route, [*params.stop, *END_OF_TURN], cancel, time_budget, text), on_text)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0
        return approx_tokens(text)

    def info(self) -> EngineInfo:
        plan, tpl = self._fim_plan()
        fim = tpl.family if tpl is not None else ("server" if plan in ("infill", "suffix") else None)
        layout = tpl.order if tpl is not None else None
        facts = self.facts
        return EngineInfo(
            self.model, "http", facts.context, None, fim, None, looks_instruct(self.model), self.url, layout, facts.kind
        )

    def check(self) -> dict[str, Any]:
        """What `demi doctor` and the language server's status report: the server, its kind, its
        model, how FIM is sent and a round trip in milliseconds; or a one-line reason it is unusable
        (`ok` false). Never raises."""
        report: dict[str, Any] = {"url": self.url, "ok": False}
        try:
            facts = self.facts
            report.update({"kind": facts.kind, "detected": facts.detected, "version": facts.version})
            report["model"] = self.model
            if facts.models and self.model not in facts.models:
                report["problem"] = f"the server has no model {self.model!r} (it has {', '.join(facts.models)})"
                return report
            _, seconds = self.client.timed("/v1/models" if facts.kind != "tgi" else "/info", timeout=10.0)
            plan, tpl = self._fim_plan()
            report.update(
                {
                    "round_trip_ms": round(seconds * 1000, 1),
                    "context": facts.context,
                    "fim": {
                        "prompt": f"built here ({tpl.family if tpl else '?'})",
                        "infill": "/infill",
                        "suffix": "suffix",
                        "prefix": "none: prefix only",
                    }[plan],  # fmt: skip
                    "ok": True,
                }
            )
        except DemiError as exc:
            report["problem"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return report

    def close(self) -> None:
        self.client.close()


def _with_other_files(ctx: FimContext) -> str:
    """The prefix with the other files in front as line-comment blocks (for a server's template,
    which takes prefix and suffix only)."""
    if not ctx.other_files:
        return ctx.prefix
    from demi.assistant.fim import line_comment

    mark = line_comment(ctx.path or ctx.other_files[0][0])
    head = "".join(f"{mark} {p}\n{c}" + ("" if c.endswith("\n") else "\n") + "\n" for p, c in ctx.other_files)
    return head + (f"{mark} {ctx.path}\n" if ctx.path else "") + ctx.prefix


def _client_fim_template(family: str, tokenizer: Any) -> Any:
    """The FIM template the HTTP client builds prompts with for a remote model of `family`: the one
    detected on a local copy of the model's tokenizer when it has that format (its exact stops and
    spacing, in the family's order), else the family's template from its name alone."""
    from demi.assistant.fim import detect_fim, fim_template_for

    try:
        tpl = fim_template_for(family)
    except ValueError as exc:
        raise DemiUserError(f"server_model_family: {exc}") from None
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
    cache_reuse: int = DEFAULT_CACHE_REUSE,
    server_kind: str | None = None,
) -> InProcessEngine | HttpEngine:
    """Load `model` in this process, or talk to `server` (a name, a directory or a hub id;
    None means DEMI_MODEL, then the config file, then demi-tiny; no `quant` means "auto", the config's
    default: int8 on a CPU). An in-process model runs on `runner` when given, else on its own, and
    speculates `speculate` draft tokens per step in chat-style answers (0: off)."""
    if server:  # `model` names the server's model; a local copy, if any, gives exact token counts
        # `server_fim` (the `server_model_family` setting) names that model's FIM family: the client
        # then builds FIM prompts itself; `server_kind` skips detecting the kind of server
        tok = _local_tokenizer(model)
        return HttpEngine(
            server, model, api_key=api_key, timeout=timeout, tokenizer=tok, fim=server_fim, kind=server_kind
        )
    if model is None:
        from demi.assistant.config import load_config

        model = load_config()["model"]
    local = LocalModel.load(model, device=device, dtype=dtype, context=context, quant=quant or "auto")
    return InProcessEngine(local, runner, speculate, cache_reuse)


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
        server_fim=cfg["server_model_family"] or cfg["server_fim"],
        cache_reuse=cfg["cache_reuse"],
        server_kind=cfg["server_kind"],
    )
