"""Named API keys for `demi serve`: the keys file, and the key ring the server checks requests against.

The keys file is TOML, one table per key, and holds each key's SHA-256, never the key itself:

    [keys.alice]
    sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    role = "user"                      # user (default) | admin | metrics
    created = "2025-05-01T09:30:00Z"   # informational

Names are 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit. `demi serve keys add`
writes the file (atomically, mode 0600) and prints the new key once; a hand-written entry can use
`printf %s "$KEY" | sha256sum`. Roles: `user` may use every route but /metrics and sees its own usage;
`admin` may use every route and sees everyone's usage; `metrics` may only read /metrics and /health
(what a Prometheus scraper needs, and nothing more).

The server's `KeyRing` checks a bearer token by hashing it and comparing the digest with every key's
in constant time (`hmac.compare_digest`, no early exit), and re-reads the file when it changes (its
mtime, size or inode), so `demi serve keys revoke` takes effect on the next request without a restart.
A file that breaks while the server runs leaves the previous keys in force, with a warning in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from demi.assistant.errors import DemiUserError

log = logging.getLogger("demi.serve")

ROLES = ("user", "admin", "metrics")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
SAFE_TEXT = re.compile(r"[0-9A-Za-z:.+ -]{1,64}")  # a `created` time written back as it was
DEFAULT_NAME = "default"  # the one key of `--api-key` / DEMI_API_KEY, with the admin role
KEY_PREFIX = "demi-"
HEADER = (
    "# demi serve API keys: one [keys.NAME] table per key, with the SHA-256 of the key (never the key).\n"
    "# Edit with `demi serve keys add NAME`, `list` and `revoke NAME`; the server reloads this file when it changes.\n"
)


class KeysFileError(DemiUserError):
    """The keys file is missing, unreadable or malformed, or a name is invalid."""


@dataclass(frozen=True)
class ApiKey:
    """One named key as the server knows it: the digest of the key, never the key."""

    name: str
    digest: bytes  # sha256 of the key's UTF-8 bytes
    role: str = "user"
    created: str | None = None

    @property
    def sha256(self) -> str:
        return self.digest.hex()

    def allows(self, path: str) -> bool:
        """Whether this key's role may use `path` (the request's path)."""
        if self.role == "admin":
            return True
        if self.role == "metrics":
            return path in ("/metrics", "/health")
        return path != "/metrics"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> str:
    """A fresh random key: 256 bits, URL-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise KeysFileError(
            f"invalid key name {name!r}: use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


def default_keys_path() -> Path:
    """Where `demi serve keys` keeps the file when neither --keys-file nor DEMI_KEYS_FILE names one."""
    from demi.assistant.config import config_dir

    return config_dir() / "serve-keys.toml"


# -- the file -------------------------------------------------------------------------------------


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    import tomli  # declared for Python 3.10 in pyproject.toml

    return tomli


def parse_keys(text: str, where: str) -> dict[str, ApiKey]:
    """The keys of a keys file's text; any mistake is a one-line KeysFileError naming `where`."""
    toml = _toml()
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise KeysFileError(f"keys file {where}: not valid TOML ({exc})") from None
    extra = sorted(set(data) - {"keys"})
    if extra:
        raise KeysFileError(f"keys file {where}: unknown top-level entry {extra[0]!r} (only [keys.NAME] tables)")
    tables = data.get("keys", {})
    if not isinstance(tables, dict):
        raise KeysFileError(f"keys file {where}: 'keys' must be a table of [keys.NAME] tables")
    keys: dict[str, ApiKey] = {}
    seen: dict[bytes, str] = {}
    for name, entry in tables.items():
        if not NAME.fullmatch(name):
            raise KeysFileError(f"keys file {where}: invalid key name {name!r} (letters, digits, '_', '-')")
        if not isinstance(entry, dict):
            raise KeysFileError(f"keys file {where}: keys.{name} must be a table with a sha256 entry")
        unknown = sorted(set(entry) - {"sha256", "role", "created"})
        if unknown:
            raise KeysFileError(f"keys file {where}: keys.{name} has an unknown entry {unknown[0]!r}")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise KeysFileError(f"keys file {where}: keys.{name}.sha256 must be 64 lowercase hex digits")
        role = entry.get("role", "user")
        if role not in ROLES:
            raise KeysFileError(f"keys file {where}: keys.{name}.role must be one of {', '.join(ROLES)}, got {role!r}")
        created = entry.get("created")
        key = ApiKey(name, bytes.fromhex(digest), role, None if created is None else str(created))
        if key.digest in seen:
            raise KeysFileError(f"keys file {where}: keys.{name} and keys.{seen[key.digest]} are the same key")
        seen[key.digest] = name
        keys[name] = key
    return keys


def read_keys(path: Path) -> dict[str, ApiKey]:
    """The keys in `path`; a missing file, an unreadable one or bad content is a KeysFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysFileError(
            f"keys file {path} does not exist: create it with `demi serve keys add NAME --keys-file {path}`"
        ) from None
    except UnicodeDecodeError:
        raise KeysFileError(f"keys file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise KeysFileError(f"keys file {path}: cannot read it ({exc.strerror or exc})") from None
    return parse_keys(text, str(path))


def render_keys(keys: Iterable[ApiKey]) -> str:
    """The file's text. Names, roles and digests are checked patterns and `created` an ISO time, so every
    value is a plain TOML bare key or basic string."""
    parts = [HEADER]
    for key in sorted(keys, key=lambda k: k.name):
        created = f'created = "{key.created}"\n' if key.created and SAFE_TEXT.fullmatch(key.created) else ""
        parts.append(f'\n[keys.{key.name}]\nsha256 = "{key.sha256}"\nrole = "{key.role}"\n{created}')
    return "".join(parts)


def write_keys(path: Path, keys: Iterable[ApiKey]) -> None:
    """Replace the file atomically (a reader sees the old file or the new one), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_keys(keys))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(path: Path, name: str, role: str = "user") -> str:
    """Add a key named `name` to the file (created if missing) and return the key itself, which is
    stored nowhere: the caller shows it once."""
    check_name(name)
    if role not in ROLES:
        raise KeysFileError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
    keys = read_keys(path) if path.exists() else {}
    if name in keys:
        raise KeysFileError(f"a key named {name!r} already exists in {path}: revoke it first, or choose another name")
    key = new_key()
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    keys[name] = ApiKey(name, hash_key(key), role, created)
    write_keys(path, keys.values())
    return key


def revoke_key(path: Path, name: str) -> None:
    keys = read_keys(path)
    if name not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise KeysFileError(f"no key named {name!r} in {path} (keys: {known})")
    del keys[name]
    write_keys(path, keys.values())


# -- the server's view ----------------------------------------------------------------------------


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


class KeyRing:
    """The keys a server accepts: `--api-key`'s single key (named "default", role admin) and/or a keys
    file, re-read whenever it changes. Construction reads the file, so a bad one fails at start."""

    def __init__(self, api_key: str | None = None, keys_file: str | os.PathLike[str] | None = None):
        self.path = Path(keys_file).expanduser() if keys_file else None
        self._static: dict[str, ApiKey] = {}
        if api_key:
            self._static[DEFAULT_NAME] = ApiKey(DEFAULT_NAME, hash_key(api_key), "admin")
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = dict(self._static)
        self._seen: tuple[int, int, int, int] | None = None
        self.reloads = 0  # successful reads of the file after the first
        self.reload_errors = 0
        if self.path is not None:
            self._seen = _signature(self.path)
            self._keys = self._merge(read_keys(self.path))
            if not self._keys:
                log.warning("keys file %s has no keys: every request will be refused (401)", self.path)

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (a keys file with no keys in it still refuses everyone)."""
        return bool(self._static) or self.path is not None

    def _merge(self, from_file: Mapping[str, ApiKey]) -> dict[str, ApiKey]:
        if DEFAULT_NAME in self._static and DEFAULT_NAME in from_file:
            raise KeysFileError(
                f"keys file {self.path}: the name {DEFAULT_NAME!r} is taken by --api-key / DEMI_API_KEY; rename the key"
            )
        static = {k.digest for k in self._static.values()}
        clash = next((k.name for k in from_file.values() if k.digest in static), None)
        if clash is not None:
            raise KeysFileError(f"keys file {self.path}: keys.{clash} is the same key as --api-key / DEMI_API_KEY")
        return {**self._static, **from_file}

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look (one stat per call)."""
        if self.path is None:
            return
        sig = _signature(self.path)
        if sig == self._seen:
            return
        with self._lock:
            if sig == self._seen:
                return
            self._seen = sig
            try:
                keys = self._merge(read_keys(self.path))
            except KeysFileError as exc:
                self.reload_errors += 1
                log.warning("%s; keeping the %d keys loaded before", exc, len(self._keys))
                return
            self._keys = keys
            self.reloads += 1
            log.info("keys file %s reloaded: %d keys", self.path, len(keys))

    def match(self, token: str) -> ApiKey | None:
        """The key whose digest equals the token's, compared with every key in constant time."""
        self.refresh()
        digest = hash_key(token)
        found = None
        for key in self._keys.values():  # no early exit: the time does not depend on which key matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def keys(self) -> list[ApiKey]:
        self.refresh()
        return sorted(self._keys.values(), key=lambda k: k.name)
