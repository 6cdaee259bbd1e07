"""The language server's settings: Demi's config file and `DEMI_*` variables, then the editor's.

The base is the effective `demi` config (`config.toml` < `DEMI_*` < nothing: the server has no
flags of its own beyond `demi-lsp --model/--server`). On top of it come `initializationOptions`
and every `workspace/didChangeConfiguration`. Editors spell keys differently, so a key matches
case-insensitively with `_`, `-` and `.` ignored (`maxTokens`, `max_tokens` and the config
file's `complete.max_tokens` are one setting), and a `{"demi": {...}}` wrapper is unwrapped.
A value of the wrong type is reported and ignored; the rest of the update still applies.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from demi.assistant.config import DEFAULT_CACHE_REUSE, DEFAULT_WORKSPACE_CACHE

# Languages that are prose, not code: off unless the user turns them on (Copilot does the same).
DEFAULT_ENABLE = {"*": True, "plaintext": False, "markdown": False, "scminput": False}

# What makes the engine itself change (a reload); everything else applies to the next request.
ENGINE_KEYS = (
    "model",
    "server",
    "detect_server",
    "api_key",
    "server_fim",
    "quant",
    "device",
    "dtype",
    "context",
    "threads",
    "speculate",
    "cache_reuse",
)


@dataclass
class LspSettings:
    model: str | None = None  # a name, a directory or a hub id (None: config, then demi-tiny)
    server: str | None = None  # an OpenAI-compatible server instead of the in-process engine
    detect_server: bool | str = True  # use a `demi serve` already running on 127.0.0.1:8642 (or this URL)
    api_key: str | None = None
    server_fim: str | None = None  # the old name of server_model_family (still read)
    server_kind: str | None = None  # demi | llama.cpp | llama-cpp-python | ollama | vllm | tgi | openai (None: detect)
    server_model_family: str | None = None  # the server's model's FIM family: Demi builds FIM prompts itself
    quant: str | None = None
    device: str | None = None
    dtype: str | None = None
    context: int | None = None
    threads: int | None = None  # torch threads for the in-process model (None: DEMI_THREADS, physical cores)
    speculate: int = 8  # speculative decoding's draft tokens per step for explain and refactor (0: off)
    cache_reuse: int = DEFAULT_CACHE_REUSE  # prefix-first FIM: shortest cached run reused shifted (0: exact)
    # mix n-gram statistics of the open files and the workspace into the model's choices (in-process)
    workspace_cache: bool = DEFAULT_WORKSPACE_CACHE
    max_tokens: int = 64  # new tokens for one completion
    context_tokens: int = 1024  # prompt budget for FIM (at most: see target_latency_ms)
    # a completion's prompt shrinks (never below 512 tokens) to be expected within this many ms on this
    # machine, from the model's speed measured after it loads (lsp/prompt_budget.py); 0: contextTokens
    target_latency_ms: float = 100.0
    temperature: float = 0.0
    debounce_ms: float | None = None  # a fixed delay for automatic triggers; None adapts
    debounce_min_ms: float = 15.0
    debounce_max_ms: float = 300.0
    latency_budget_ms: float | None = None  # stop decoding an automatic completion after this long
    enable: dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_ENABLE))
    explain_max_tokens: int = 320
    explain_context_tokens: int = 2048
    explain_lead: str = "auto"
    refactor_max_tokens: int = 768
    refactor_context_tokens: int = 2048
    history: bool = True  # record explain and refactor in the session store
    status_notifications: bool = True  # send demi/status
    data_dir: str | None = None

    def engine_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in ENGINE_KEYS)

    def enabled_for(self, language_id: str | None) -> bool:
        lang = (language_id or "").lower()
        if lang in self.enable:
            return bool(self.enable[lang])
        return bool(self.enable.get("*", True))

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out.get("api_key"):
            out["api_key"] = "***"
        return out


def _norm(key: str) -> str:
    return re.sub(r"[_\-.]", "", key).lower()


_FIELDS = {f.name: f for f in dataclasses.fields(LspSettings)}
_ALIASES: dict[str, str] = {_norm(name): name for name in _FIELDS}
_ALIASES.update(
    {
        _norm(k): v
        for k, v in {
            # the config file's dotted keys
            "complete.max_tokens": "max_tokens",
            "complete.context_tokens": "context_tokens",
            "complete.temperature": "temperature",
            "complete.workspace_cache": "workspace_cache",
            "explain.max_tokens": "explain_max_tokens",
            "explain.context_tokens": "explain_context_tokens",
            "explain.lead": "explain_lead",
            "refactor.max_tokens": "refactor_max_tokens",
            "refactor.context_tokens": "refactor_context_tokens",
            # names editors' users are likely to write
            "serverUrl": "server",
            "url": "server",
            "detectDemiServe": "detect_server",
            "serverFim": "server_fim",
            "serverKind": "server_kind",
            "serverModelFamily": "server_model_family",
            "quantization": "quant",
            "debounce": "debounce_ms",
            "enabled": "enable",
            "languages": "enable",
            "maxLatencyMs": "latency_budget_ms",
            "timeBudgetMs": "latency_budget_ms",
        }.items()
    }
)
_OPTIONAL = {
    "model",
    "server",
    "api_key",
    "server_fim",
    "server_kind",
    "server_model_family",
    "quant",
    "device",
    "dtype",
    "context",
    "threads",
    "debounce_ms",
    "latency_budget_ms",
    "data_dir",
}
_ZERO_OFF = {"speculate", "cache_reuse"}  # whole-number settings where 0 turns the feature off
_CHOICES = {"quant": ("none", "int8", "int4", "nf4", "auto"), "explain_lead": ("auto", "facts", "model")}


def from_config(cfg: Any) -> LspSettings:
    """The base settings from an effective `demi.assistant.config.Config`."""
    return LspSettings(
        model=cfg["model"],
        server=cfg["server"],
        api_key=cfg["api_key"],
        server_fim=cfg["server_fim"],
        server_kind=cfg["server_kind"],
        server_model_family=cfg["server_model_family"],
        quant=cfg["quant"],
        device=cfg["device"],
        dtype=cfg["dtype"],
        context=cfg["context"],
        speculate=cfg["speculate"],
        cache_reuse=cfg["cache_reuse"],
        max_tokens=cfg["complete.max_tokens"],
        context_tokens=cfg["complete.context_tokens"],
        temperature=cfg["complete.temperature"],
        workspace_cache=cfg["complete.workspace_cache"],
        explain_max_tokens=cfg["explain.max_tokens"],
        explain_context_tokens=cfg["explain.context_tokens"],
        explain_lead=cfg["explain.lead"],
        refactor_max_tokens=cfg["refactor.max_tokens"],
        refactor_context_tokens=cfg["refactor.context_tokens"],
        history=cfg["history"],
        data_dir=cfg["data_dir"],
    )


def _coerce(name: str, value: Any) -> Any:
    """`value` as the type of setting `name`; ValueError with a readable reason otherwise."""
    if value is None or (
        isinstance(value, str)
        and value.strip().lower() in ("", "null", "none")
        and name in _OPTIONAL
        and name != "quant"
    ):
        if name in _OPTIONAL:
            return None
        raise ValueError("may not be empty")
    if name == "enable":
        if isinstance(value, bool):
            return {"*": value}
        if isinstance(value, list):  # a list of languages to enable; the rest off
            return {"*": False, **{str(v).lower(): True for v in value}}
        if isinstance(value, Mapping):
            out = dict(DEFAULT_ENABLE)
            for k, v in value.items():
                if not isinstance(v, bool):
                    raise ValueError(f"enable.{k} must be true or false")
                out[str(k).lower()] = v
            return out
        raise ValueError("must be true/false, a list of language ids, or {languageId: bool}")
    kind = _FIELDS[name].type
    if name == "detect_server" and isinstance(value, str) and "://" in value:
        return value
    if "bool" in kind:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "on", "off"):
            return value.lower() in ("true", "1", "on")
        raise ValueError("must be true or false")
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a whole number")
        try:
            number = int(float(value))
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < (0 if name in _ZERO_OFF else 1):
            raise ValueError("must be at least 0 (0: off)" if name in _ZERO_OFF else "must be at least 1")
        return number
    if kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("must be a number")
        try:
            real = float(value)
        except ValueError:
            raise ValueError("must be a number") from None
        if real < 0:
            raise ValueError("must not be negative")
        return real
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ValueError(f"must be one of {', '.join(_CHOICES[name])}")
    return value


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and _ALIASES.get(_norm(full)) != "enable":
            out.update(_flatten(value, full))
        else:
            out[full] = value
    return out


def merge(base: LspSettings, update: Any) -> tuple[LspSettings, list[str]]:
    """`base` with the keys of `update` (an editor's JSON object) applied; also the problems found."""
    if not isinstance(update, Mapping):
        return base, [] if update is None else [f"settings must be a JSON object, not {type(update).__name__}"]
    if isinstance(update.get("demi"), Mapping):
        update = update["demi"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in _flatten(update).items():
        name = _ALIASES.get(_norm(key))
        if name is None and "." in key:  # {"complete": {"maxTokens": 8}} or {"debounce": {"minMs": 5}}
            head, _, tail = key.rpartition(".")
            name = _ALIASES.get(_norm(head.split(".")[-1] + tail)) or _ALIASES.get(_norm(tail))
        if name is None:
            problems.append(f"unknown setting {key!r} ignored")
            continue
        try:
            values[name] = _coerce(name, value)
        except (TypeError, ValueError) as exc:
            problems.append(f"setting {key!r}: {exc} (got {value!r}); kept {getattr(base, name)!r}")
    return dataclasses.replace(base, **values), problems
