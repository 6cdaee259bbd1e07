"""Training sources from the package registries: Python packages and npm packages, fetched with
the registries' own clients, license-checked per package, unpacked into a local store.

    demi train fetch --dest ~/.cache/demi/registry              # every package of both lists
    demi train fetch --dest DIR --registry npm --max-seconds 900 # what 15 minutes fetch, resumable

Python: `pip download --no-deps --only-binary :all: --platform any --implementation py --abi none
NAME`, the package's pure-Python wheel. A wheel holds the package's own source files as they are
installed, and fetching it runs none of the package's code (pip prepares an sdist's metadata by
running its build backend: arbitrary code from every package, and build dependencies installed
for each), so the corpus takes wheels; an sdist's extra files are mostly tests and packaging. A
package with compiled wheels only (torch, numpy) is refused by pip at once, before any download:
its source is mostly not Python, and its wheels weigh hundreds of megabytes. License: the wheel's
METADATA (SPDX `License-Expression`, `License`, trove classifiers), else the license file it
carries.

npm (JavaScript, TypeScript, HTML, CSS): `npm pack NAME --ignore-scripts`, the tarball exactly as
published. License: package.json's `license` (an SPDX expression; the old `licenses` list is a
choice, read as OR), else the LICENSE file at its top. Published bundles are left out where the
package ships its sources too (a `src/` beside `dist/`), and so are minified files and maps.

A package whose license is not permissive (`licenses.py`) is recorded with its license and no
files: nothing of it is unpacked. The store is `DEST/index.jsonl` (one line per package fetched
or failed, appended as each finishes, so an interrupted fetch resumes where it stopped) and
`DEST/pypi/NAME-VERSION/`, `DEST/npm/NAME-VERSION/` with the code files and the license
evidence. `registry_sources(DEST)` turns it into corpus sources, one per package (`kind` pypi or
npm), which `build_corpus(heldout_by="package")` holds out whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

from demi.train.corpus import MAX_FILE_BYTES, Source, source_files
from demi.train.errors import CorpusError
from demi.train.licenses import License, from_license_text, from_metadata, from_package_json

REGISTRIES = ("pypi", "npm")
PYTHON_EXTENSIONS = (".py",)
WEB_EXTENSIONS = (".js", ".mjs", ".cjs", ".jsx", ".ts", ".mts", ".cts", ".tsx", ".html", ".htm", ".css")
EXTENSIONS = {"pypi": PYTHON_EXTENSIONS, "npm": WEB_EXTENSIONS}
LICENSE_NAMES = re.compile(r"^(licen[cs]e|copying|notice)([.-].*)?$", re.I)
# Build output a package publishes beside its sources: left out when a src/ folder is there.
BUNDLE_DIRS = frozenset({"dist", "build", "bundles", "umd", "esm", "cjs", "es", "min"})
GENERATED = re.compile(r"\.(min|bundle|umd|prod|production)\.(js|mjs|cjs|css)$|\.map$", re.I)
MAX_ARCHIVE_BYTES = 200 * 1024 * 1024  # an unpacked package larger than this is data, not code
PURE_PYTHON = ("--only-binary", ":all:", "--platform", "any", "--implementation", "py", "--abi", "none")
NO_PURE_WHEEL = "no pure-Python wheel"
LISTS_DIR = Path(__file__).resolve().parent / "data"


def package_list(registry: str) -> Path:
    """The shipped list of packages to fetch from `registry` (most downloaded first)."""
    return LISTS_DIR / f"registry-{registry}.txt"


def read_list(path: str | Path) -> list[str]:
    """Package specs, one a line (a name, NAME==VERSION for pip, NAME@VERSION for npm); `#` comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read the package list ({exc.strerror or exc})") from None
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]


@dataclass
class Fetched:
    """One line of DEST/index.jsonl: a package fetched (or not, and why)."""

    registry: str
    spec: str
    name: str = ""
    version: str = ""
    dir: str = ""  # relative to DEST; empty when nothing was unpacked
    license: dict[str, Any] = field(default_factory=dict)  # declared, spdx, permissive
    files: int = 0
    bytes: int = 0
    archive_bytes: int = 0
    skipped: int = 0  # files left out of the unpacked tree (bundles, minified, too large)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_license(self) -> License:
        lic = self.license or {}
        return License(lic.get("declared", ""), lic.get("spdx", "unknown"), bool(lic.get("permissive")))


def _lic(license: License) -> dict[str, Any]:
    return {"declared": license.expression, "spdx": license.spdx, "permissive": license.permissive}


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name.replace("@", "").replace("/", "__"))


def _member_path(name: str) -> PurePosixPath | None:
    """An archive member's relative path, or None when it would leave the folder it unpacks into."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or any(p in ("..", "") for p in path.parts) or not path.parts:
        return None
    return path


class Fetcher:
    """Fetches packages into `dest` with pip and npm. `pip_args` and `npm_args` go to every call
    (an index or a local folder of wheels, an npm cache for offline use)."""

    def __init__(
        self,
        dest: str | Path,
        pip_args: Sequence[str] = (),
        npm_args: Sequence[str] = (),
        timeout: float = 180.0,
        python: str = sys.executable,
    ):
        self.dest = Path(dest).expanduser()
        self.pip_args, self.npm_args = list(pip_args), list(npm_args)
        self.timeout, self.python = timeout, python
        self._lock = threading.Lock()

    # -- the index ------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.dest / "index.jsonl"

    def record(self, item: Fetched) -> None:
        """Append one line to the index; after a line torn by a kill mid-write, on a line of its own
        (appended to the torn one it would be lost with it)."""
        with self._lock:
            self.dest.mkdir(parents=True, exist_ok=True)
            with open(self.index_path, "a+b") as f:
                torn = False
                if f.tell() > 0:
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
                f.write((("\n" if torn else "") + json.dumps(asdict(item)) + "\n").encode("utf-8"))

    # -- one package ----------------------------------------------------------------------------

    def fetch(self, registry: str, spec: str) -> Fetched:
        """Fetch, check and unpack one package; errors are recorded in the result, not raised."""
        if registry not in REGISTRIES:
            raise CorpusError(f"unknown registry {registry!r} (one of {', '.join(REGISTRIES)})")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix="fetch-", dir=self._tmp_root()))
        try:
            item = self._fetch_pypi(spec, tmp) if registry == "pypi" else self._fetch_npm(spec, tmp)
        except _FetchError as exc:
            item = Fetched(registry, spec, error=str(exc))
        except (OSError, zipfile.BadZipFile, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
            item = Fetched(registry, spec, error=f"unreadable package ({type(exc).__name__}: {exc})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        item.seconds = round(time.monotonic() - started, 2)
        return item

    def _tmp_root(self) -> Path:
        root = self.dest / ".tmp"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _run(self, cmd: list[str]) -> str:
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL, env=_client_env()
            )
        except FileNotFoundError:
            raise _FetchError(f"{cmd[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise _FetchError(f"no answer in {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()] or lines
            raise _FetchError((errors[-1] if errors else f"exit status {proc.returncode}")[:300])
        return proc.stdout

    def _fetch_pypi(self, spec: str, tmp: Path) -> Fetched:
        try:
            self._run(
                [self.python, "-m", "pip", "download", "--no-deps", *PURE_PYTHON, "--quiet"]
                + ["--disable-pip-version-check", "--dest", str(tmp), *self.pip_args, spec]
            )
        except _FetchError as exc:
            if "ResolutionImpossible" in str(exc) or "No matching distribution" in str(exc):
                raise _FetchError(f"{NO_PURE_WHEEL} (compiled wheels only, or no such package)") from None
            raise
        wheels = sorted(tmp.glob("*.whl"))
        if not wheels:
            raise _FetchError("pip downloaded no wheel")
        wheel = wheels[0]
        with zipfile.ZipFile(wheel) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            meta_info = next((i for i in infos if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename)), None)
            if meta_info is None:
                raise _FetchError(f"{wheel.name} has no METADATA")
            meta_text = zf.read(meta_info).decode("utf-8", "replace")
            meta = HeaderParser().parsestr(meta_text)
            name, version = meta.get("Name") or spec, meta.get("Version") or ""
            license = from_metadata(meta_text)
            evidence = [i for i in infos if _is_license_file(i.filename) and ".dist-info/" in i.filename]
            if license.spdx == "unknown" and not license.expression:  # nothing declared: the file decides
                for info in evidence:
                    text = zf.read(info).decode("utf-8", "replace")
                    license = from_license_text(PurePosixPath(info.filename).name, text)
                    if license.permissive:
                        break
            item = Fetched("pypi", spec, name, version, license=_lic(license), archive_bytes=wheel.stat().st_size)
            if not license.permissive:
                return item
            out = self._unpack_dir("pypi", name, version)
            members = [(i, _member_path(i.filename), i.file_size) for i in infos]
            keep = [meta_info, *evidence]
            code = [(i, p) for i, p, size in members if p is not None and _wanted(p, PYTHON_EXTENSIONS, size)]
            item.skipped = sum(1 for i, p, size in members if p is not None and p.suffix == ".py") - len(code)
            self._check_size(sum(i.file_size for i, _ in code))
            for info, path in [*((i, _member_path(i.filename)) for i in keep), *code]:
                if path is not None:
                    _write(out / path, zf.read(info))
        return self._finish(item, out, PYTHON_EXTENSIONS)

    def _fetch_npm(self, spec: str, tmp: Path) -> Fetched:
        raw = self._run(
            ["npm", "pack", spec, "--json", "--ignore-scripts", "--pack-destination", str(tmp)]
            + ["--no-audit", "--no-fund", "--loglevel=error", *self.npm_args]
        )
        try:
            packed = json.loads(raw[raw.index("[") :])[0]
        except (ValueError, IndexError, KeyError) as exc:
            raise _FetchError(f"npm pack gave no JSON report ({exc})") from None
        tarball = tmp / packed["filename"].replace("/", "-").lstrip("@")
        if not tarball.is_file():
            found = sorted(tmp.glob("*.tgz"))
            if not found:
                raise _FetchError("npm pack wrote no tarball")
            tarball = found[0]
        with tarfile.open(tarball, "r:gz") as tf:
            files = [m for m in tf.getmembers() if m.isfile()]  # links, devices, folders: never unpacked
            by_path = {p.relative_to(p.parts[0]): m for m in files if (p := _member_path(m.name)) and len(p.parts) > 1}
            pkg_member = by_path.get(PurePosixPath("package.json"))
            if pkg_member is None:
                raise _FetchError("the tarball has no package.json")
            manifest = json.loads(_read_member(tf, pkg_member).decode("utf-8", "replace"))
            if not isinstance(manifest, dict):
                raise _FetchError("package.json is not an object")
            name = str(manifest.get("name") or packed.get("name") or spec)
            version = str(manifest.get("version") or packed.get("version") or "")
            license = from_package_json(manifest)
            evidence = [p for p in by_path if len(p.parts) == 1 and _is_license_file(p.name)]
            if license is None:
                license = License("", "unknown", False)
                for p in evidence:
                    license = from_license_text(p.name, _read_member(tf, by_path[p]).decode("utf-8", "replace"))
                    if license.permissive:
                        break
            item = Fetched("npm", spec, name, version, license=_lic(license), archive_bytes=tarball.stat().st_size)
            if not license.permissive:
                return item
            has_src = any(p.parts[0] == "src" and p.suffix in WEB_EXTENSIONS for p in by_path if len(p.parts) > 1)
            code, skipped = [], 0
            for p, m in by_path.items():
                if p.suffix.lower() not in WEB_EXTENSIONS and not GENERATED.search(p.name):
                    continue
                bundled = has_src and p.parts[0] in BUNDLE_DIRS
                if bundled or "node_modules" in p.parts or not _wanted(p, WEB_EXTENSIONS, m.size):
                    skipped += 1
                else:
                    code.append(p)
            item.skipped = skipped
            self._check_size(sum(by_path[p].size for p in code))
            out = self._unpack_dir("npm", name, version)
            for p in [PurePosixPath("package.json"), *evidence, *code]:
                _write(out / p, _read_member(tf, by_path[p]))
        return self._finish(item, out, WEB_EXTENSIONS)

    def _unpack_dir(self, registry: str, name: str, version: str) -> Path:
        out = self.dest / registry / f"{_safe_name(name)}-{_safe_name(version)}"
        shutil.rmtree(out, ignore_errors=True)  # a half-written folder from an interrupted fetch
        return out

    def _check_size(self, total: int) -> None:
        if total > MAX_ARCHIVE_BYTES:
            raise _FetchError(f"{total / 1e6:.0f} MB of code files: data, not a code package")

    def _finish(self, item: Fetched, out: Path, extensions: tuple[str, ...]) -> Fetched:
        files = source_files(out, extensions) if out.is_dir() else []
        item.dir = out.relative_to(self.dest).as_posix() if out.is_dir() else ""
        item.files = len(files)
        item.bytes = sum(f.stat().st_size for f in files)
        return item

    # -- many packages --------------------------------------------------------------------------

    def fetch_many(
        self,
        todo: Iterable[tuple[str, str]],
        jobs: int = 4,
        max_seconds: float | None = None,
        max_bytes: int | None = None,
        on_done: Callable[[Fetched, int, int], None] | None = None,
        retry_failed: bool = False,
        retry_refused: bool = False,
    ) -> dict[str, Any]:
        """Fetch (registry, spec) pairs `jobs` at a time, skipping those the index already has
        (failed ones too unless `retry_failed`; those whose license was refused unless
        `retry_refused`, for when the license rules have changed), until all are done, `max_seconds`
        have passed or `max_bytes` of code are in the store. Each result is appended to the index as
        it comes; the latest line of a package is the one that counts."""
        done = {(f.registry, f.spec): f for f in load_index(self.dest)}

        def again(f: Fetched) -> bool:
            return (retry_failed and not f.ok) or (retry_refused and f.ok and not f.license.get("permissive"))

        pending = [(r, s) for r, s in dict.fromkeys(todo) if (r, s) not in done or again(done[(r, s)])]
        stored = sum(f.bytes for f in _latest(done.values()))
        started = time.monotonic()
        results: list[Fetched] = []
        stop_reason = "done"
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            running: set[Future] = set()
            queue = iter(pending)
            while True:
                out_of_time = max_seconds is not None and time.monotonic() - started >= max_seconds
                full = max_bytes is not None and stored >= max_bytes
                while not (out_of_time or full) and len(running) < max(1, jobs):
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    running.add(pool.submit(self.fetch, *nxt))
                if not running:
                    stop_reason = "time" if out_of_time else "bytes" if full else "done"
                    break
                finished, running = wait(running, timeout=5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item = fut.result()
                    self.record(item)
                    results.append(item)
                    stored += item.bytes
                    if on_done is not None:
                        on_done(item, len(results), len(pending))
        return {
            "dest": str(self.dest),
            "attempted": len(results),
            "pending": len(pending) - len(results),
            "stopped": stop_reason,
            "seconds": round(time.monotonic() - started, 1),
            **summarize(load_index(self.dest)),
        }


class _FetchError(Exception):
    """A package that could not be fetched (recorded, not fatal)."""


def _client_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PIP_NO_INPUT", "1")
    env["npm_config_update_notifier"] = "false"
    return env


def _is_license_file(path: str) -> bool:
    return bool(LICENSE_NAMES.match(PurePosixPath(path).name))


def _wanted(path: PurePosixPath, extensions: tuple[str, ...], size: int) -> bool:
    return (
        path.suffix.lower() in extensions
        and not GENERATED.search(path.name)
        and "__pycache__" not in path.parts
        and 0 < size <= MAX_FILE_BYTES
    )


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    if f is None:
        raise ValueError(f"{member.name}: not a regular file")
    return f.read()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# -- the store ------------------------------------------------------------------------------------


def load_index(dest: str | Path) -> list[Fetched]:
    """Every record of DEST/index.jsonl in order (a torn last line, from a kill, is ignored)."""
    path = Path(dest).expanduser() / "index.jsonl"
    if not path.is_file():
        return []
    out = []
    names = set(Fetched.__dataclass_fields__)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict) and raw.get("registry") in REGISTRIES:
            out.append(Fetched(**{k: v for k, v in raw.items() if k in names}))
    return out


def _latest(items: Iterable[Fetched]) -> list[Fetched]:
    """The last successful record per (registry, package name), in first-seen order."""
    by_name: dict[tuple[str, str], Fetched] = {}
    for f in items:
        if f.ok:
            by_name[(f.registry, f.name.lower())] = f
    return list(by_name.values())


def summarize(items: Sequence[Fetched]) -> dict[str, Any]:
    """Counts for a report: packages kept, excluded by license (by SPDX id), failed; files, bytes."""
    latest = _latest(items)
    failed = {(f.registry, f.spec) for f in items if not f.ok} - {(f.registry, f.spec) for f in items if f.ok}
    no_wheel = {f.spec: (f.error or "").startswith(NO_PURE_WHEEL) for f in items if not f.ok}
    out: dict[str, Any] = {}
    for reg in REGISTRIES:
        mine = [f for f in latest if f.registry == reg]
        kept = [f for f in mine if f.license.get("permissive")]
        excluded: dict[str, int] = {}
        for f in mine:
            if not f.license.get("permissive"):
                key = f.license.get("spdx") or "unknown"
                excluded[key] = excluded.get(key, 0) + 1
        out[reg] = {
            "packages": len(kept),
            "excluded_by_license": sum(excluded.values()),
            "excluded_licenses": dict(sorted(excluded.items(), key=lambda kv: -kv[1])[:15]),
            "failed": sum(1 for r, s in failed if r == reg and not no_wheel.get(s)),
            "no_pure_wheel": sum(1 for r, s in failed if r == reg and no_wheel.get(s)),
            "files": sum(f.files for f in kept),
            "bytes": sum(f.bytes for f in kept),
            "archive_bytes": sum(f.archive_bytes for f in mine),
        }
    return out


def registry_sources(dest: str | Path, registries: Sequence[str] = REGISTRIES) -> list[Source]:
    """One corpus source per package in the store (its latest version), excluded ones included
    (with no files) so the manifest lists them. npm names that a Python package already has get
    an `npm:` prefix, so every source name is unique."""
    dest = Path(dest).expanduser()
    items = load_index(dest)
    if not items:
        raise CorpusError(f"{dest}: no fetched packages (run `demi train fetch --dest {dest}` first)")
    out: list[Source] = []
    taken: set[str] = set()
    for f in sorted(_latest(items), key=lambda f: (REGISTRIES.index(f.registry), f.name.lower())):
        if f.registry not in registries:
            continue
        root = dest / f.dir if f.dir else dest / f.registry
        files = [p.resolve() for p in source_files(root, EXTENSIONS[f.registry])] if f.dir and root.is_dir() else []
        name = f.name if f.name.lower() not in taken else f"{f.registry}:{f.name}"
        taken.add(name.lower())
        out.append(Source(name, f.version, f.as_license(), root.resolve(), files, kind=f.registry))
    return out


def todo_from_lists(
    registries: Sequence[str], lists: dict[str, Path] | None = None, limit: int | None = None
) -> list[tuple[str, str]]:
    """(registry, spec) pairs from each registry's list (its first `limit`), interleaved so a
    bounded fetch gets both."""
    per = [[(r, s) for s in read_list((lists or {}).get(r) or package_list(r))[:limit]] for r in registries]
    out: list[tuple[str, str]] = []
    for i in range(max((len(p) for p in per), default=0)):
        out += [p[i] for p in per if i < len(p)]
    return out
