"""Settings with a known origin: TOML file < `DEMI_*` environment < command-line flags.

Every value remembers where it came from so `demi doctor` can say why Demi is using a model
or a server ("env DEMI_SERVER", "config /home/u/.config/demi/config.toml", "flag --model").
The file lives in platformdirs' user config dir (`DEMI_CONFIG` names another file).

    model = "~/models/Qwen2.5-Coder-1.5B"      # top-level keys
    server = "http://gpu-box:8642"
    [complete]                                   # sections: key "complete.max_tokens",
    max_tokens = 48                              # env DEMI_COMPLETE_MAX_TOKENS
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demi.model.errors import DemiUserError

log = logging.getLogger("demi")
# The `cache_reuse` default: the shortest cached run moved rather than recomputed (see model/prefix_cache.py).
DEFAULT_CACHE_REUSE = 16
# The workspace cache model for FIM (assistant/workspace_cache.py): on, as it won on held-out code
# (MODEL_CARD.md, "Workspace cache").
DEFAULT_WORKSPACE_CACHE = True
APP = "demi"


class ConfigFileError(DemiUserError):
    """The config file does not parse or holds a value of the wrong type."""


@dataclass(frozen=True)
class Setting:
    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    @property
    def env(self) -> str:
        return "DEMI_" + self.key.replace(".", "_").upper()


# FIM families a server's model may have (demi.assistant.fim's FAMILIES and their short names).
_FIM_FAMILIES = (
    "qwen",
    "qwen2.5-coder",
    "demi-tiny",
    "starcoder",
    "starcoder2",
    "codellama",
    "deepseek",
    "deepseek-coder",
    "codestral",
)

SETTINGS: tuple[Setting, ...] = (
    Setting("model", str, None, "model name, directory or hub id (None: demi-tiny)"),
    Setting("server", str, None, "URL of an OpenAI-compatible server; unset runs the model in-process"),
    Setting("api_key", str, None, "bearer token sent to --server (never printed)"),
    Setting("device", str, None, "cpu, cuda, cuda:N or auto (None: cpu)"),
    Setting("dtype", str, "auto", "auto, float32, bfloat16, float16"),
    Setting("context", int, None, "context window to allocate in tokens (None: the engine's default)"),
    Setting(
        "quant",
        str,
        "auto",
        "weight quantization: auto (int8 on CPU, half precision on a GPU it fits), none, int8, int4 (CPU), nf4 (CUDA)",
        ("none", "int8", "int4", "nf4", "auto"),
    ),
    Setting("data_dir", str, None, "sessions database and backups (None: the platform's user data dir)"),
    Setting("history", bool, True, "record explain and refactor requests in the session store"),
    Setting("db_timeout", float, 5.0, "seconds to wait for a locked session database"),
    Setting("max_file_mb", float, 2.0, "files larger than this are refused"),
    Setting("server_timeout", float, 120.0, "seconds to wait for a server's next bytes"),
    Setting(
        "server_kind",
        str,
        None,
        "what serves at `server`: demi, llama.cpp, llama-cpp-python, ollama, vllm, tgi or openai "
        "(None or auto: detected once from the routes it answers)",
        ("auto", "demi", "llama.cpp", "llama-server", "llama-cpp-python", "ollama", "vllm", "tgi", "openai"),
    ),
    Setting(
        "server_model_family",
        str,
        None,
        "FIM template family of the server's model: Demi then builds FIM prompts itself and sends them as a "
        "plain prompt (None: the server's native FIM where it has one, else the family its model's name says)",
        _FIM_FAMILIES,
    ),
    Setting("server_fim", str, None, "the old name of server_model_family (still read)", _FIM_FAMILIES),
    Setting(
        "speculate",
        int,
        8,
        "speculative decoding from the prompt (prompt lookup) for explain, refactor and chat with an "
        "in-process model, demi generate and demi serve's chat requests: draft tokens checked per step; "
        "0 = off. Greedy output is unchanged",
    ),
    Setting(
        "cache_reuse",
        int,
        DEFAULT_CACHE_REUSE,
        "prefix-first FIM while typing, in-process: reuse cached runs of at least this many tokens (the "
        "code after the cursor) at their new positions instead of recomputing them, as llama.cpp's "
        "--cache-reuse does; approximate (docs/ARCHITECTURE.md); 0 = exact reuse only",
    ),
    Setting("complete.max_tokens", int, 64, "new tokens for one completion"),
    Setting("complete.context_tokens", int, 1024, "prompt budget for FIM (prefix:suffix about 3:1)"),
    Setting("complete.temperature", float, 0.0, "0 is greedy"),
    Setting(
        "complete.workspace_cache",
        bool,
        DEFAULT_WORKSPACE_CACHE,
        "in-process FIM: mix n-gram statistics of the file, the other open files and the workspace into "
        "the model's next-token choices (the workspace cache model)",
    ),
    Setting("explain.max_tokens", int, 320, "new tokens for an explanation"),
    Setting("explain.context_tokens", int, 2048, "prompt budget for explain"),
    Setting(
        "explain.lead",
        str,
        "auto",
        "which section leads: facts (static analysis), model, or auto "
        "(the model when it is large enough to be trusted)",
        ("auto", "facts", "model"),
    ),
    Setting("refactor.max_tokens", int, 768, "new tokens for a rewrite"),
    Setting("refactor.context_tokens", int, 2048, "prompt budget for refactor"),
    Setting("chat.max_tokens", int, 512, "new tokens for a chat answer (demi-chat)"),
    Setting("chat.temperature", float, 0.0, "sampling temperature for chat answers (demi-chat); 0 is greedy"),
    Setting(
        "chat.context_tokens",
        int,
        3072,
        "prompt budget for a chat turn: the message, its @files and as many earlier turns as fit",
    ),
)
_BY_KEY = {s.key: s for s in SETTINGS}


def config_dir() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP, appauthor=False))


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env["DEMI_CONFIG"]).expanduser() if env.get("DEMI_CONFIG") else config_dir() / "config.toml"


def _coerce(setting: Setting, value: Any, where: str) -> Any:
    """A value of the setting's type, or a one-line error naming where the bad value is."""
    if value is None:
        return None
    t = setting.type
    try:
        if t is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
                out = True
            elif isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
                out = False
            else:
                raise ValueError(value)
        elif t is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError(value)
            out = int(value)
        elif t is float:
            if isinstance(value, bool):
                raise ValueError(value)
            out = float(value)
        else:
            if not isinstance(value, str):
                raise ValueError(value)
            out = value
    except (TypeError, ValueError):
        raise ConfigFileError(f"{where}: {setting.key} must be {t.__name__}, not {value!r}") from None
    if setting.choices and out not in setting.choices:
        raise ConfigFileError(f"{where}: {setting.key} must be one of {', '.join(setting.choices)}, not {out!r}")
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def read_file(path: Path) -> dict[str, Any]:
    """Flattened keys of the TOML file; {} when there is none."""
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigFileError(f"{path}: reading TOML on Python 3.10 needs the tomli package") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8", errors="replace"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return _flatten(data)


class Config:
    """Effective settings and their sources; look values up with `cfg["complete.max_tokens"]`."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str], path: Path):
        self._values, self.sources, self.path = values, sources, path

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def describe(self) -> list[dict[str, Any]]:
        """Rows for `demi doctor`: key, effective value (secrets masked), where it came from."""
        rows = []
        for s in SETTINGS:
            value = self._values[s.key]
            if s.key == "api_key" and value:
                value = "***"
            rows.append({"key": s.key, "value": value, "source": self.sources[s.key], "env": s.env})
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "file_exists": self.path.is_file(), "settings": self.describe()}


def load_config(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None, path: Path | None = None
) -> Config:
    """Defaults, then the file, then `DEMI_*` variables, then flags that are not None."""
    env = os.environ if environ is None else environ
    path = path or config_path(env)
    values = {s.key: s.default for s in SETTINGS}
    sources = {s.key: "default" for s in SETTINGS}
    for key, raw in read_file(path).items():
        setting = _BY_KEY.get(key)
        if setting is None:
            log.warning("%s: unknown setting %r ignored (known: %s)", path, key, ", ".join(_BY_KEY))
            continue
        values[key], sources[key] = _coerce(setting, raw, str(path)), f"config {path}"
    for s in SETTINGS:
        if env.get(s.env, "") != "":
            values[s.key], sources[s.key] = _coerce(s, env[s.env], f"environment {s.env}"), f"env {s.env}"
    for key, raw in (flags or {}).items():
        if raw is None or key not in _BY_KEY:
            continue
        flag = "--" + key.split(".")[-1].replace("_", "-")
        values[key], sources[key] = _coerce(_BY_KEY[key], raw, f"flag {flag}"), f"flag {flag}"
    return Config(values, sources, path)


def data_dir(cfg: Config | None = None) -> Path:
    """Where the session database and refactor backups live."""
    chosen = cfg["data_dir"] if cfg is not None else os.environ.get("DEMI_DATA_DIR")
    if chosen:
        return Path(chosen).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP, appauthor=False))
