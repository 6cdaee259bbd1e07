"""Training corpora: sources of files, read with clear errors, deduplicated, split and recorded.

A `Source` is a set of files under one license: a directory the user names, CPython's
standard library, one installed distribution in a site-packages directory (its files from the
dist-info RECORD, its license from METADATA), or one package fetched from a registry
(`registry.py`). `build_corpus` reads every file, drops what is not usable text (unreadable or
binary files are an error unless `on_bad="skip"`; files too large or that look generated are
always skipped, and recorded), removes exact and near duplicates, splits off held-out files by a
hash of their path (or whole packages: `heldout_by="package"`), and returns the documents (or
hands each to a sink as it is kept: the corpus streams, never in memory whole) and a manifest:
package, version, license, files and (once tokenized) tokens per source, the license check in
numbers, plus what was left out and why.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Protocol

from demi.model.filecheck import TooLarge, read_checked
from demi.train.dedup import BATCH, Deduplicator
from demi.train.errors import CorpusError
from demi.train.licenses import License, from_license_file, from_metadata, named

DEFAULT_EXTENSIONS = (".py",)
SKIP_DIRS = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        ".venv",
        "venv",
        ".tox",
        ".mypy_cache",
        ".pytest_cache",
        "site-packages",
        "dist-packages",
        ".eggs",
        "build",
    }
)
MAX_FILE_BYTES = 512 * 1024  # larger source files are almost always generated tables
MAX_LINE_CHARS = 1000  # a longer line means minified or generated code


@dataclass
class Source:
    """Files under one license. `files` are absolute paths below `root`."""

    name: str
    version: str
    license: License
    root: Path
    files: list[Path]
    kind: str = "directory"  # directory | stdlib | distribution | pypi | npm (registry.py)


@dataclass
class Document:
    source: str  # Source.name
    path: str  # relative to the source's root, with "/" separators (what a <|file_sep|> header shows)
    text: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.path}"


@dataclass
class Corpus:
    train: list[Document]
    heldout: list[Document]
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def shippable(self) -> bool:
        return bool(self.manifest.get("shippable"))


# -- sources ----------------------------------------------------------------------------------------


def source_files(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Files with those extensions below `root`, sorted, outside caches, VCS and build folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(tuple(extensions)):
                out.append(Path(dirpath) / f)
    return out


def directory_source(
    root: str | Path,
    name: str | None = None,
    license: str | None = None,
    version: str = "",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> Source:
    """A directory of source files. Its license is `license` (an SPDX id) or read from a
    LICENSE/COPYING file at its top; unknown counts as not permissive."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CorpusError(f"{root}: no such corpus directory")
    if root.is_file():
        files = [root.resolve()]
        root = root.parent
    else:
        files = [p.resolve() for p in source_files(root, extensions)]
    lic = named(license) if license else from_license_file(root)
    return Source(name or root.resolve().name, version, lic, root.resolve(), files)


def stdlib_source() -> Source:
    """This interpreter's standard library (PSF-2.0), without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    return Source(
        "cpython-stdlib",
        platform.python_version(),
        License("PSF-2.0", "PSF-2.0", True),
        root,
        [p.resolve() for p in source_files(root, (".py",))],
        kind="stdlib",
    )


def site_packages_sources(site_dir: str | Path | None = None, exclude: Iterable[str] = ("demi",)) -> list[Source]:
    """One source per installed distribution with Python files: name, version and license from
    its dist-info METADATA, files from its RECORD (only those inside `site_dir`)."""
    site = Path(site_dir or sysconfig.get_paths()["purelib"]).resolve()
    skip = {e.lower() for e in exclude}
    out = []
    for info in sorted(site.glob("*.dist-info")):
        try:
            meta_text = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
            record = (info / "RECORD").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        meta = HeaderParser().parsestr(meta_text)
        name = meta.get("Name") or info.name.split("-")[0]
        if name.lower() in skip:
            continue
        files = []
        for line in record.splitlines():
            rel = line.split(",", 1)[0]
            if not rel.endswith(".py") or rel.startswith("..") or "__pycache__" in rel:
                continue
            path = (site / rel).resolve()
            if path.is_file() and site in path.parents:
                files.append(path)
        if files:
            out.append(
                Source(
                    name, meta.get("Version") or "", from_metadata(meta_text), site, sorted(files), kind="distribution"
                )
            )
    return out


# -- reading ---------------------------------------------------------------------------------------


class _Skip(Exception):
    """A file that is left out without being an error (too big, generated)."""


def read_source_file(path: Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text. Unreadable, binary or non-UTF-8 files raise CorpusError; files over
    `max_bytes` or with lines over MAX_LINE_CHARS raise _Skip."""
    try:
        data = read_checked(path, max_bytes, CorpusError, "binary file (it has NUL bytes)")
    except TooLarge as exc:
        raise _Skip(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    if any(len(line) > MAX_LINE_CHARS for line in text.split("\n")):
        raise _Skip(f"a line over {MAX_LINE_CHARS} characters (generated or minified)")
    return text


HELDOUT_UNITS = ("file", "package")


def split_unit(doc: Document, kind: str, heldout_by: str = "file") -> str:
    """What the held-out split draws for a document: the file itself, or (`heldout_by="package"`)
    its package, so held-out code is code no training file shares a package with: a distribution
    or registry package whole, and for the standard library or a directory its top-level module
    or folder."""
    if heldout_by == "file":
        return doc.key
    if kind in ("stdlib", "directory"):
        top = doc.path.split("/", 1)[0]
        return f"{doc.source}/{top.removesuffix('.py')}/"
    return f"{doc.source}/"


def _hash_share(name: str) -> float:
    """A number in [0, 1) fixed by `name`: draws by a hash stay stable when other files come and go."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) / float(1 << 48)


def is_heldout(key: str, fraction: float, seed: int = 0) -> bool:
    """A file's split, from a hash of its name: stable when other files come and go."""
    if fraction <= 0:
        return False
    return _hash_share(f"{seed}:{key}") < fraction


# -- the corpus ------------------------------------------------------------------------------------


class CorpusSink(Protocol):
    """Where `build_corpus` puts each document it keeps, as it keeps it."""

    def add(self, doc: Document, heldout: bool) -> None: ...


class ManifestOnly:
    """A sink that lets the documents go: for a report of what a corpus would hold."""

    def add(self, doc: Document, heldout: bool) -> None:
        pass


@dataclass
class _Collected:
    train: list[Document] = field(default_factory=list)
    heldout: list[Document] = field(default_factory=list)

    def add(self, doc: Document, heldout: bool) -> None:
        (self.heldout if heldout else self.train).append(doc)


@dataclass
class _File:
    path: Path
    rel: str
    key: str
    size: int = 0  # on disk; only read for a capped source


def build_corpus(
    sources: Sequence[Source],
    *,
    permissive_only: bool = False,
    on_bad: str = "error",
    near_threshold: float | None = 0.85,
    heldout_fraction: float = 0.02,
    seed: int = 0,
    max_bytes: int = MAX_FILE_BYTES,
    max_source_bytes: dict[str, int] | int | None = None,
    max_total_bytes: int | None = None,
    max_skipped_listed: int = 200,
    heldout_by: str = "file",
    sink: CorpusSink | None = None,
    progress: Callable[[str], None] | None = None,
) -> Corpus:
    """Read, filter, deduplicate and split; see the module docstring. Raises CorpusError when
    nothing usable is left, with the reason.

    The corpus streams: each file is read, judged against the files kept before it, and handed
    on, so memory holds the deduplication's fingerprints (about 1 KB a file), not the text. With
    `sink` the kept documents go there as they come and the returned Corpus holds none (a
    registry's 2 GB of code is written, not held); without it they are collected.

    `max_source_bytes` caps what one source contributes (an int for every source, or a dict by
    source name with "*" for the rest), so one huge package cannot dominate the mixture. A
    source larger on disk than its cap is read in an order fixed by a hash of each file's name,
    taking the files that still fit until the budget is used; a file found to be a duplicate
    gives its share back. Files past the budget are never read.

    `max_total_bytes` sizes the whole corpus (to the compute that will train on it): every source
    keeps the same share of its files, drawn by a hash of each file's name, the share fitted so
    that the sources' code on disk comes to about that many bytes (each source's own cap applied
    after the draw). Every package keeps its place in the mixture, as a uniform sample of the
    files would; sizes on disk count duplicates and skipped files, so the corpus comes out
    somewhat smaller.

    `heldout_by` "package" holds out whole packages (`split_unit`) instead of single files: a
    held-out file then has no sibling in training, as code the model meets later has none.

    `progress` gets a line about every 15 seconds (sources done, files and bytes kept)."""
    if on_bad not in ("error", "skip"):
        raise ValueError("on_bad must be 'error' or 'skip'")
    if heldout_by not in HELDOUT_UNITS:
        raise CorpusError(f"the held-out split is by {' or '.join(HELDOUT_UNITS)}, not {heldout_by!r}")
    if not 0 <= heldout_fraction < 1:
        raise CorpusError("the held-out fraction must be in [0, 1)")
    collected = _Collected() if sink is None else None
    out: CorpusSink = sink if sink is not None else collected  # type: ignore[assignment]
    dedup = Deduplicator(near_threshold, seed=seed)
    judged: list[str] = []  # every judged file's key, by its number in the deduplicator
    near: list[tuple[int, int, float]] = []
    exact_removed = 0
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    seen_keys: set[str] = set()
    kinds: dict[str, str] = {}
    capped: dict[str, int] = {}
    heldout_keys: list[str] = []
    heldout_units: set[str] = set()
    split_of: dict[str, bool] = {}
    share: float | None = None
    if max_total_bytes is not None:
        usable = [s for s in sources if not (permissive_only and not s.license.permissive)]
        share = fit_sample_fraction(usable, max_source_bytes, max_total_bytes, max_bytes)
    counts = {"read": 0, "kept": 0, "train": 0, "bytes": 0}
    started = last_report = time.monotonic()
    for done, src in enumerate(sources):
        if progress is not None and time.monotonic() - last_report > 15:
            last_report = time.monotonic()
            progress(
                f"corpus: {done:,} of {len(sources):,} sources, {counts['kept']:,} files kept "
                f"({counts['bytes'] / 1e6:,.1f} MB) of {counts['read']:,} read, {last_report - started:.0f} s"
            )
        entry = _entry(src)
        entries.append(entry)
        if src.name in kinds:
            entry["excluded"] = "an earlier source has the same name"
            continue
        kinds[src.name] = src.kind
        if permissive_only and not src.license.permissive:
            entry["excluded"] = f"license {src.license.spdx!r} is not permissive"
            continue
        files = []
        for path in src.files:
            try:
                rel = path.relative_to(src.root).as_posix()
            except ValueError:
                rel = path.name
            doc_key = f"{src.name}/{rel}"
            if share is not None and not in_sample(doc_key, share, seed):
                continue
            if doc_key not in seen_keys:
                seen_keys.add(doc_key)
                files.append(_File(path, rel, doc_key))
        plan = _ReadingPlan(files, _budget(max_source_bytes, src.name), seed)
        used = 0
        while todo := plan.next_wave(used):
            for lo in range(0, len(todo), BATCH):
                batch: list[tuple[_File, str]] = []
                for f in todo[lo : lo + BATCH]:
                    text = _read_or_skip(f, max_bytes, on_bad, skipped)
                    if text is not None:
                        batch.append((f, text))
                counts["read"] += len(batch)
                for (f, text), fp in zip(batch, dedup.fingerprints([t for _, t in batch])):
                    number = len(judged)
                    judged.append(f.key)
                    verdict = dedup.judge(number, fp)
                    if not verdict.kept:
                        if verdict.exact:
                            exact_removed += 1
                        else:
                            near.append((number, verdict.duplicate_of, verdict.similarity))
                        continue
                    doc = Document(src.name, f.rel, text)
                    size = len(text.encode("utf-8", "surrogatepass"))
                    used += size
                    entry["files"] += 1
                    entry["bytes"] += size
                    unit = split_unit(doc, src.kind, heldout_by)
                    if unit not in split_of:
                        split_of[unit] = is_heldout(unit, heldout_fraction, seed)
                    held = split_of[unit]
                    if held:
                        heldout_keys.append(doc.key)
                        heldout_units.add(unit)
                    counts["kept"] += 1
                    counts["bytes"] += size
                    counts["train"] += not held
                    out.add(doc, held)
        if plan.left_out:
            capped[src.name] = plan.left_out
    if not counts["read"]:
        what = ", ".join(str(s.root) for s in sources) or "no sources given"
        reason = (
            "no source files with the wanted extensions"
            if not skipped
            else f"all {len(skipped)} files were left out (e.g. {skipped[0]['file']}: {skipped[0]['reason']})"
        )
        if permissive_only and all(e["excluded"] for e in entries) and entries:
            reason = "no source has a permissive license (use --license SPDX to state one)"
        raise CorpusError(f"empty corpus ({what}): {reason}")
    if not counts["train"]:
        raise CorpusError("every file landed in the held-out split; use a smaller held-out fraction")
    used_entries = [e for e in entries if e["files"]]
    manifest = {
        "format": "demi-corpus-manifest/1",
        "sources": entries,
        "files": counts["kept"],
        "train_files": counts["train"],
        "heldout_files": len(heldout_keys),
        "heldout_fraction": heldout_fraction,
        "heldout": sorted(heldout_keys),
        "heldout_by": heldout_by,
        "heldout_units": sorted(heldout_units) if heldout_by == "package" else [],
        "bytes": sum(e["bytes"] for e in entries),
        "dedup": {
            "exact_removed": exact_removed,
            "near_removed": len(near),
            "near_threshold": near_threshold,
            "near_examples": [[judged[a], judged[b], round(s, 3)] for a, b, s in near[:20]],
        },
        "capped": capped,
        "max_total_bytes": max_total_bytes,
        "sample_fraction": share,
        "skipped": skipped[:max_skipped_listed],
        "skipped_count": len(skipped),
        "permissive_only": permissive_only,
        "licenses": license_counts(entries),
        "shippable": all(e["license"]["permissive"] for e in used_entries),
        "seed": seed,
    }
    if collected is None:
        return Corpus([], [], manifest)
    return Corpus(collected.train, collected.heldout, manifest)


def _entry(src: Source) -> dict[str, Any]:
    """The manifest's record of one source, filled in as its files are kept."""
    return {
        "name": src.name,
        "version": src.version,
        "kind": src.kind,
        "root": str(src.root),
        "license": {"declared": src.license.expression, "spdx": src.license.spdx, "permissive": src.license.permissive},
        "files_found": len(src.files),
        "files": 0,
        "bytes": 0,
        "tokens": None,
        "excluded": None,
    }


def fit_sample_fraction(
    sources: Sequence[Source], limit: dict[str, int] | int | None, total: int, max_bytes: int = MAX_FILE_BYTES
) -> float | None:
    """The share of files to keep (each by a hash of its name) so that the sources' code on disk,
    each source's own cap in `limit` applied after the draw, comes to about `total`; None when
    it is within `total` as it is."""
    if total <= 0:
        raise CorpusError("the corpus size budget must be more than 0 bytes")
    sizes = []
    for src in sources:
        size = sum(n for n in map(_size_on_disk, src.files) if n <= max_bytes)
        sizes.append((size, _budget(limit, src.name)))

    def expected(share: float) -> float:
        return sum(share * n if own is None else min(share * n, own) for n, own in sizes)

    if expected(1.0) <= total:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) <= total else (lo, mid)
    return lo


def in_sample(key: str, share: float, seed: int = 0) -> bool:
    """Whether a file is in a `share` sample of the corpus, by a hash of its name (stable)."""
    return _hash_share(f"{seed}:sample:{key}") < share


def _size_on_disk(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reading it says why


def _budget(limit: dict[str, int] | int | None, name: str) -> int | None:
    if limit is None or isinstance(limit, int):
        return limit or None
    return limit.get(name, limit.get("*"))


class _ReadingPlan:
    """The waves in which one source's files are read, under its cap.

    Uncapped (or no larger than the cap on disk): one wave, every file in path order. Capped: in
    the order of a hash of each file's name, a wave takes the files that fit the room left (by
    size on disk, which the text never exceeds), as if all of them were kept; the next wave,
    with the room that duplicates and skipped files gave back, takes what fits of the rest, until
    nothing does. What is never read is `left_out` (bytes on disk)."""

    def __init__(self, files: list[_File], cap: int | None, seed: int):
        if cap is not None:
            for f in files:
                f.size = _size_on_disk(f.path)
            if sum(f.size for f in files) <= cap:
                cap = None
        self.cap = cap
        self.pending = files if cap is None else sorted(files, key=lambda f: _hash_share(f"{seed}:cap:{f.key}"))

    def next_wave(self, used: int) -> list[_File]:
        """The next files to read, `used` bytes of the cap being taken by the files kept so far."""
        if self.cap is None:
            take, self.pending = self.pending, []
            return take
        room = self.cap - used
        take, rest = [], []
        for f in self.pending:
            if f.size <= room:
                take.append(f)
                room -= f.size
            else:
                rest.append(f)
        self.pending = rest
        return take

    @property
    def left_out(self) -> int:
        return sum(f.size for f in self.pending)


def _read_or_skip(f: _File, max_bytes: int, on_bad: str, skipped: list[dict[str, str]]) -> str | None:
    """The file's text, or None with the reason recorded (a bad file raises unless `on_bad` is "skip")."""
    try:
        text = read_source_file(f.path, max_bytes)
    except _Skip as why:
        skipped.append({"file": f.key, "reason": str(why)})
        return None
    except CorpusError as exc:
        if on_bad == "error":
            raise CorpusError(f"{exc} (pass --skip-bad-files to leave such files out)") from None
        skipped.append({"file": f.key, "reason": str(exc).split(": ", 1)[-1]})
        return None
    if not text.strip():
        skipped.append({"file": f.key, "reason": "empty"})
        return None
    return text


def license_counts(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The license check in numbers: sources used and excluded, and files per license."""
    used = [e for e in entries if e["files"]]
    refused: dict[str, int] = {}
    for e in entries:
        if not e["license"]["permissive"] and not e["files"]:
            refused[e["license"]["spdx"]] = refused.get(e["license"]["spdx"], 0) + 1
    files: dict[str, int] = {}
    for e in used:
        files[e["license"]["spdx"]] = files.get(e["license"]["spdx"], 0) + e["files"]
    return {
        "sources_used": len(used),
        "sources_excluded": sum(1 for e in entries if e["excluded"]),
        "excluded_by_license": dict(sorted(refused.items(), key=lambda kv: (-kv[1], kv[0]))),
        "files_by_license": dict(sorted(files.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def record_tokens(corpus: Corpus, count_tokens) -> None:
    """Fill in each source's token count (plain text, no FIM) with `count_tokens(list[str]) -> list[int]`."""
    totals: dict[str, int] = {}
    docs = corpus.train + corpus.heldout
    for d, n in zip(docs, count_tokens([d.text for d in docs])):
        totals[d.source] = totals.get(d.source, 0) + n
    set_token_counts(corpus.manifest, totals)


def set_token_counts(manifest: dict[str, Any], totals: dict[str, int]) -> None:
    """Each used source's tokens (from `totals`, by source name) and the corpus' in the manifest."""
    for entry in manifest["sources"]:
        if entry["files"]:
            entry["tokens"] = totals.get(entry["name"], 0)
    manifest["tokens"] = sum(totals.values())


def write_manifest(corpus: Corpus, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(corpus.manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def source_summary(corpus: Corpus) -> list[dict[str, Any]]:
    """One row per source for printing: name, version, license, files, bytes, tokens, excluded."""
    return [
        {
            k: (e["license"]["spdx"] if k == "license" else e[k])
            for k in ("name", "version", "license", "files", "bytes", "tokens", "excluded")
        }
        for e in corpus.manifest["sources"]
    ]


def as_dicts(docs: Sequence[Document]) -> list[dict[str, str]]:
    return [asdict(d) for d in docs]
