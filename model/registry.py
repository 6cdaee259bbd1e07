"""Turn what the user typed after `--model` into a model directory on disk.

Order: an existing local directory; a built-in model shipped with Demi (`demi-tiny`); a
Hugging Face hub id, taken from the local hub cache first and downloaded only when the
user is online and has not asked for offline mode. Presets are shapes without trained
weights, so naming one here is an error that says what presets are for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from demi.model.errors import ModelNotFoundError

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_MODEL = "demi-tiny"
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def builtin_models() -> dict[str, Path]:
    """Built-in models that are present in this install (a directory with a config.json)."""
    if not BUILTIN_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUILTIN_DIR.iterdir()) if (p / "config.json").is_file()}


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("DEMI_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_model_dir(name: str | os.PathLike | None, download: bool = True) -> Path:
    """The local directory holding model `name` (see the module docstring for the order)."""
    name = str(name or os.environ.get("DEMI_MODEL") or DEFAULT_MODEL)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    builtin = builtin_models()
    if name in builtin:
        return builtin[name]
    if name == DEFAULT_MODEL:
        raise ModelNotFoundError(
            f"the built-in model {DEFAULT_MODEL} is not installed here (expected under {BUILTIN_DIR}); pass --model DIR"
        )
    from demi.model.presets import PRESETS

    if name in PRESETS:
        raise ModelNotFoundError(
            f"{name} is a preset (a shape with no trained weights): use "
            f"`demi models info {name}`, or `demi bench --model {name}` for speed"
        )
    if path.exists() or os.sep in name and not _HUB_ID.match(name):
        raise ModelNotFoundError(f"{name}: not a model directory")
    if not _HUB_ID.match(name):
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a directory, a built-in model "
            f"({', '.join(builtin) or 'none installed'}) or a hub id like owner/name"
        )
    return hub_snapshot(name, download=download)


def hub_snapshot(repo_id: str, download: bool = True) -> Path:
    """A hub model from the local cache, or fetched (safetensors and JSON only) when online."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if offline() or not download:
        raise ModelNotFoundError(
            f"{repo_id} is not in the local hub cache and Demi is offline; run `demi pull {repo_id}` while online"
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"cannot fetch {repo_id} from the hub: {first}") from exc


def cached_hub_models() -> list[tuple[str, int]]:
    """(repo id, size on disk) of models in the local hub cache."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache directory yet, or an unreadable one: nothing to list
        return []
    return sorted((r.repo_id, r.size_on_disk) for r in info.repos if r.repo_type == "model")
