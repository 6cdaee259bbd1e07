"""The servers Demi talks to, how each is recognised, and how each is spoken to.

A team's model server is usually one of: `demi serve`, llama.cpp's `llama-server`, llama-cpp-python's
server, Ollama, vLLM or TGI (text-generation-inference); anything else that speaks OpenAI's API is
"openai". `detect` finds which, once per engine, from a route only that server has:

    demi              GET /v1/demi/stats        (its model card also names the FIM family)
    llama.cpp         GET /props                (`default_generation_settings`, `total_slots`)
    ollama            GET /api/version
    tgi               GET /info                 (`model_id`, `max_total_tokens`)
    vllm              GET /version              (and `owned_by: vllm` in /v1/models)
    llama-cpp-python  GET /openapi.json         (its FastAPI title names "llama.cpp Python")

or the `server_kind` setting names it (no probing). Each kind is a `Dialect`: the request bodies
of a completion, a chat and, where the server has one, its native fill-in-the-middle, and how to
read one streamed event. FIM, per kind:

- llama.cpp: `/infill` (`input_prefix`, `input_suffix`, `input_extra` with the other files,
  `cache_prompt`), the server applies its model's FIM tokens;
- demi serve and Ollama: `suffix` on /v1/completions (both build the model's template);
- vLLM, TGI, llama-cpp-python and unknown OpenAI servers: no usable suffix (vLLM refuses it,
  llama-cpp-python mis-builds it, TGI has none), so the client builds the prompt itself with the
  family's template (`generation.build_fim`) and sends it as a plain prompt. The family comes from
  the `server_model_family` setting or the served model's name (`family_from_model_name`).

Stop strings go to the server up to its limit; the client enforces all of them itself, so every
kind stops at the same place.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from demi.assistant.fim import family_name
from demi.assistant.http_client import HttpClient, ServerRejected
from demi.model.generate import Sampling

__all__ = [
    "DIALECTS",
    "KINDS",
    "Dialect",
    "Event",
    "Params",
    "ServerFacts",
    "detect",
    "dialect_for",
    "family_from_model_name",
    "kind_name",
]

KINDS = ("demi", "llama.cpp", "llama-cpp-python", "ollama", "vllm", "tgi", "openai")
# Other spellings a person may write in `server_kind`.
KIND_ALIASES = {
    "demi-serve": "demi",
    "llama-server": "llama.cpp",
    "llamacpp": "llama.cpp",
    "llama_cpp": "llama.cpp",
    "llama-cpp": "llama.cpp",
    "llama_cpp_python": "llama-cpp-python",
    "text-generation-inference": "tgi",
    "openai-compatible": "openai",
}
KIND_CHOICES = (*KINDS, *KIND_ALIASES, "auto")
PROBE_TIMEOUT = 5.0  # seconds for one detection request


def kind_name(name: str | None) -> str | None:
    """A kind as `KINDS` spells it (aliases and case accepted); None for unset or "auto"."""
    if not name:
        return None
    key = name.strip().lower()
    if key == "auto":
        return None
    key = KIND_ALIASES.get(key, key)
    if key not in KINDS:
        raise ValueError(f"unknown server kind {name!r} (known: {', '.join(KINDS)}, auto)")
    return key


# Model names as servers report them ("Qwen/Qwen2.5-Coder-1.5B", "qwen2.5-coder:7b",
# "/models/starcoder2-3b-Q8_0.gguf") to the FIM family their template belongs to; first match wins.
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"demi-?tiny", "demi-tiny"),
    (r"qwen[\d.]*-?coder", "qwen2.5-coder"),
    (r"starcoder-?2", "starcoder2"),
    (r"starcoder|santacoder|stable-?code", "starcoder"),
    (r"code-?llama", "codellama"),
    (r"deepseek-?coder", "deepseek-coder"),
    (r"codestral", "codestral"),
)


def family_from_model_name(name: str | None) -> str | None:
    """The FIM family a served model's name says it is, or None when the name does not tell."""
    if not name:
        return None
    text = re.sub(r"[\s_]+", "-", name.lower())
    for pattern, family in _NAME_PATTERNS:
        if re.search(pattern, text):
            return family
    return None


@dataclass
class Params:
    """What every request carries besides its prompt."""

    max_tokens: int
    sampling: Sampling
    stop: list[str] = field(default_factory=list)


@dataclass
class Event:
    """One streamed event, read: new text, and what the last events say about the run."""

    text: str = ""
    finish: str | None = None  # stop | length
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


@dataclass
class ServerFacts:
    """What detection learned about a server."""

    kind: str
    models: list[str] = field(default_factory=list)
    version: str | None = None
    context: int | None = None
    fim_family: str | None = None  # the family the server reports for its model (demi serve)
    max_stops: int | None = None  # TGI's `max_stop_sequences`
    detected: bool = True  # False: named by the `server_kind` setting
    seconds: float = 0.0  # how long detection took


def _finish(reason: Any) -> str | None:
    if not reason:
        return None
    return "length" if str(reason) in ("length", "limit", "max_tokens") else "stop"


class Dialect:
    """An OpenAI-compatible server (the base every kind refines)."""

    kind = "openai"
    native_fim: str | None = None  # how the server fills in the middle itself: "suffix" | "infill" | None
    max_stops: int | None = 4  # OpenAI's limit on `stop`
    extensions = False  # takes `top_k` and `repetition_penalty` (not OpenAI's)
    stream_usage = True  # honours `stream_options.include_usage`

    def sampling(self, p: Params) -> dict[str, Any]:
        s = p.sampling
        body: dict[str, Any] = {"max_tokens": p.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.seed is not None:
            body["seed"] = s.seed
        if self.extensions:
            if s.top_k:
                body["top_k"] = s.top_k
            if s.repetition_penalty != 1.0:
                body["repetition_penalty"] = s.repetition_penalty
        stops = [x for x in p.stop if x]
        if self.max_stops is not None:
            stops = stops[: self.max_stops]
        if stops:
            body["stop"] = stops
        return body

    def _stream(self, body: dict[str, Any]) -> dict[str, Any]:
        body["stream"] = True
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def completion(self, model: str, prompt: str, p: Params, suffix: str | None = None) -> tuple[str, dict[str, Any]]:
        body = {"model": model, "prompt": prompt, **self.sampling(p)}
        if suffix is not None:
            body["suffix"] = suffix
        return "/v1/completions", self._stream(body)

    def chat(self, model: str, messages: list[dict[str, Any]], p: Params) -> tuple[str, dict[str, Any]]:
        return "/v1/chat/completions", self._stream({"model": model, "messages": messages, **self.sampling(p)})

    def infill(
        self, model: str, prefix: str, suffix: str, other_files: list[tuple[str, str]], path: str | None, p: Params
    ) -> tuple[str, dict[str, Any]]:
        """The native FIM request (only for kinds whose `native_fim` is "infill")."""
        raise NotImplementedError(self.kind)

    def read(self, event: dict[str, Any]) -> Event:
        """An OpenAI streaming chunk (completion `text` or chat `delta.content`, then usage)."""
        out = Event()
        usage = event.get("usage")
        if isinstance(usage, dict):
            out.prompt_tokens = _int(usage.get("prompt_tokens"))
            out.completion_tokens = _int(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                out.cached_tokens = _int(details.get("cached_tokens"))
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            piece = choice.get("text")
            if piece is None:
                piece = (choice.get("delta") or {}).get("content")
            out.text += piece or ""
            out.finish = _finish(choice.get("finish_reason")) or out.finish
        return out


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class DemiServe(Dialect):
    """`demi serve`: builds the FIM prompt from `suffix` with the model's exact tokenizer (token
    healing included); takes `top_k` and `repetition_penalty`."""

    kind = "demi"
    native_fim = "suffix"
    extensions = True


class LlamaServer(Dialect):
    """llama.cpp's `llama-server`: `/infill` for FIM (the server's FIM tokens, other files through
    `input_extra`, the prompt cache kept between keystrokes). Its /v1/completions ignores `suffix`."""

    kind = "llama.cpp"
    native_fim = "infill"
    max_stops = None
    extensions = True

    def sampling(self, p: Params) -> dict[str, Any]:
        body = super().sampling(p)
        if "repetition_penalty" in body:  # llama.cpp's name
            body["repeat_penalty"] = body.pop("repetition_penalty")
        return body

    def infill(
        self, model: str, prefix: str, suffix: str, other_files: list[tuple[str, str]], path: str | None, p: Params
    ) -> tuple[str, dict[str, Any]]:
        body = self.sampling(p)
        body["n_predict"] = body.pop("max_tokens")
        body.update(
            {
                "input_prefix": prefix,
                "input_suffix": suffix,
                "input_extra": [{"filename": f, "text": t} for f, t in other_files],
                "prompt": "",
                "cache_prompt": True,
                "stream": True,
            }
        )
        return "/infill", body

    def read(self, event: dict[str, Any]) -> Event:
        if "choices" in event or "usage" in event:  # an OpenAI route's chunk
            return super().read(event)
        out = Event(text=str(event.get("content") or ""))
        if event.get("stop"):  # the last event: why it stopped, and the prompt it evaluated
            out.finish = "length" if event.get("stop_type") == "limit" else "stop"
            timings = event.get("timings")
            # `timings.cache_n`: prompt tokens reused from the slot's cache (`tokens_cached` counts the
            # whole cache, generated tokens included)
            out.cached_tokens = _int(timings.get("cache_n")) if isinstance(timings, dict) else None
            out.prompt_tokens = _int(event.get("tokens_evaluated"))
            out.completion_tokens = _int(event.get("tokens_predicted"))
        return out


class LlamaCppPython(Dialect):
    """llama-cpp-python's server: OpenAI routes; its `suffix` puts token 0 where the FIM tokens
    belong, so the prompt is built here. It sends no usage while streaming."""

    kind = "llama-cpp-python"
    max_stops = None
    stream_usage = False

    def sampling(self, p: Params) -> dict[str, Any]:
        body = super().sampling(p)
        s = p.sampling
        if s.top_k:
            body["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            body["repeat_penalty"] = s.repetition_penalty
        return body


class Ollama(Dialect):
    """Ollama: its OpenAI route takes `suffix` and fills it in with the model's template."""

    kind = "ollama"
    native_fim = "suffix"
    max_stops = None


class Vllm(Dialect):
    """vLLM: OpenAI routes with `top_k` and `repetition_penalty`; refuses `suffix` (400)."""

    kind = "vllm"
    max_stops = None
    extensions = True


class Tgi(Dialect):
    """TGI: completions through its native `/generate_stream` (`inputs` + `parameters`; temperature
    strictly positive, so greedy is `do_sample: false`; `top_p` below 1; at most `max_stop_sequences`
    stops); chat through its OpenAI route /v1/chat/completions."""

    kind = "tgi"
    extensions = True

    def __init__(self, max_stops: int | None = None):
        self.max_stops = max_stops if max_stops is not None else 4

    def _parameters(self, p: Params) -> dict[str, Any]:
        s = p.sampling
        params: dict[str, Any] = {"max_new_tokens": p.max_tokens, "details": True}
        if s.greedy:
            params["do_sample"] = False
        else:
            params.update({"do_sample": True, "temperature": s.temperature})
            if s.top_p < 1.0:
                params["top_p"] = s.top_p
            if s.top_k:
                params["top_k"] = s.top_k
        if s.repetition_penalty != 1.0:
            params["repetition_penalty"] = s.repetition_penalty
        if s.seed is not None:
            params["seed"] = s.seed
        stops = [x for x in p.stop if x][: self.max_stops]
        if stops:
            params["stop"] = stops
        return params

    def completion(self, model: str, prompt: str, p: Params, suffix: str | None = None) -> tuple[str, dict[str, Any]]:
        return "/generate_stream", {"inputs": prompt, "parameters": self._parameters(p), "stream": True}

    def chat(self, model: str, messages: list[dict[str, Any]], p: Params) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": p.max_tokens, "stream": True}
        s = p.sampling
        if not s.greedy:
            body["temperature"] = s.temperature
            if s.top_p < 1.0:
                body["top_p"] = s.top_p
        if s.seed is not None:
            body["seed"] = s.seed
        stops = [x for x in p.stop if x][: self.max_stops]
        if stops:
            body["stop"] = stops
        return "/v1/chat/completions", body

    def read(self, event: dict[str, Any]) -> Event:
        if "choices" in event or "usage" in event:
            return super().read(event)
        token = event.get("token")
        token = token if isinstance(token, dict) else {}
        out = Event(text="" if token.get("special") else str(token.get("text") or ""))
        details = event.get("details")
        if isinstance(details, dict):
            reason = details.get("finish_reason")
            out.finish = "length" if reason == "length" else "stop"
            out.completion_tokens = _int(details.get("generated_tokens"))
        return out


DIALECTS: dict[str, type[Dialect]] = {
    "demi": DemiServe,
    "llama.cpp": LlamaServer,
    "llama-cpp-python": LlamaCppPython,
    "ollama": Ollama,
    "vllm": Vllm,
    "tgi": Tgi,
    "openai": Dialect,
}


def dialect_for(facts: ServerFacts) -> Dialect:
    if facts.kind == "tgi":
        return Tgi(facts.max_stops)
    return DIALECTS[facts.kind]()


# -- detection -------------------------------------------------------------------------------------


def _model_ids(client: HttpClient) -> tuple[list[str], list[dict[str, Any]]]:
    data = client.probe("/v1/models", timeout=PROBE_TIMEOUT)
    cards = data.get("data") if isinstance(data, dict) else None
    cards = [c for c in cards or [] if isinstance(c, dict) and "id" in c]
    return [str(c["id"]) for c in cards], cards


def _identify(client: HttpClient) -> tuple[str, dict[str, Any]]:
    """The kind, and what its identifying answer said (the first probe that matches wins)."""
    stats = client.probe("/v1/demi/stats", timeout=PROBE_TIMEOUT)
    if isinstance(stats, dict) and "model" in stats and "engine_capacity" in stats:
        return "demi", stats
    props = client.probe("/props", timeout=PROBE_TIMEOUT)
    if isinstance(props, dict) and ("default_generation_settings" in props or "total_slots" in props):
        return "llama.cpp", props
    version = client.probe("/api/version", timeout=PROBE_TIMEOUT)
    if isinstance(version, dict) and isinstance(version.get("version"), str):
        return "ollama", version
    info = client.probe("/info", timeout=PROBE_TIMEOUT)
    if isinstance(info, dict) and "model_id" in info and ("max_total_tokens" in info or "max_input_tokens" in info):
        return "tgi", info
    version = client.probe("/version", timeout=PROBE_TIMEOUT)
    if isinstance(version, dict) and isinstance(version.get("version"), str):
        return "vllm", version
    doc = client.probe("/openapi.json", timeout=PROBE_TIMEOUT)
    title = str(((doc or {}).get("info") or {}).get("title") or "") if isinstance(doc, dict) else ""
    if "llama.cpp python" in title.lower():
        return "llama-cpp-python", doc or {}
    return "openai", {}


def detect(client: HttpClient, kind: str | None = None) -> ServerFacts:
    """What serves at `client`'s URL (`kind` names it instead of probing) and which models it has.
    Raises `ServerUnreachableError` when nothing answers."""
    started = time.perf_counter()
    detected = kind is None
    said: dict[str, Any] = {}
    if kind is None:
        kind, said = _identify(client)
    elif kind == "tgi":
        said = client.probe("/info", timeout=PROBE_TIMEOUT) or {}
    facts = ServerFacts(kind, detected=detected)
    if kind == "tgi":
        facts.models = [str(said["model_id"])] if said.get("model_id") else []
        facts.version = said.get("version")
        facts.context = _int(said.get("max_total_tokens"))
        facts.max_stops = _int(said.get("max_stop_sequences"))
    else:
        try:
            facts.models, cards = _model_ids(client)
        except ServerRejected:
            facts.models, cards = [], []
        for card in cards:  # demi serve's card: context and FIM family; vLLM's: max_model_len
            facts.context = facts.context or _int(card.get("context_length")) or _int(card.get("max_model_len"))
            if card.get("fim") and family_name(str(card["fim"])):
                facts.fim_family = family_name(str(card["fim"]))
        if kind == "llama.cpp":
            settings = said.get("default_generation_settings") or {}
            facts.context = _int(settings.get("n_ctx")) if isinstance(settings, dict) else None
            facts.version = said.get("build_info")
            if not facts.models and said.get("model_path"):
                facts.models = [str(said["model_path"])]
        elif kind == "demi":
            facts.context = facts.context or _int(said.get("context"))
        elif kind in ("ollama", "vllm"):
            facts.version = said.get("version")
    facts.seconds = time.perf_counter() - started
    return facts
