"""Edits to the user's files: shown as a diff, written only on request, and always undoable.

"Never a surprise write": a refactor produces an `Edit` (old and new text of one file); it
becomes a unified diff and an LSP WorkspaceEdit without touching the disk. `apply_edit` writes
atomically (a temporary file in the same directory, fsync, `os.replace`, the mode kept), keeps a
backup first, and refuses when the file changed since it was read. `undo` puts the last backup
back, and refuses when the file changed since Demi wrote it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demi.model.errors import DemiUserError

from .document import Document


class EditConflictError(DemiUserError):
    """The file changed on disk after Demi read it (or after Demi wrote it, for undo)."""


class NoBackupError(DemiUserError):
    """`demi undo` on a file Demi has not changed."""


@dataclass
class Edit:
    path: Path
    old: str
    new: str
    digest: str  # sha256 of the file's bytes when `old` was read

    @property
    def changed(self) -> bool:
        return self.old != self.new


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unified_diff(edit: Edit, context: int = 3) -> str:
    """`git diff` style: a/ and b/ paths, 3 lines of context, a marker for a missing final newline."""
    name = str(edit.path).replace(os.sep, "/")
    old, new = edit.old.splitlines(keepends=True), edit.new.splitlines(keepends=True)
    out = []
    for line in difflib.unified_diff(old, new, f"a/{name}", f"b/{name}", n=context):
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return "".join(out)


def changed_lines(old: str, new: str) -> tuple[int, int, int, int] | None:
    """(first line, last line) of the changed region in old and in new, 1-based inclusive (a pure
    insertion has last < first); None when equal. Common leading and trailing lines are excluded."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    if a == b:
        return None
    lo = 0
    while lo < len(a) and lo < len(b) and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < len(a) - lo and hi < len(b) - lo and a[-1 - hi] == b[-1 - hi]:
        hi += 1
    return lo + 1, len(a) - hi, lo + 1, len(b) - hi


def workspace_edit(edit: Edit, uri: str | None = None, version: int | None = None) -> dict[str, Any]:
    """An LSP WorkspaceEdit with one TextEdit replacing the changed lines (UTF-16 positions)."""
    uri = uri or edit.path.resolve().as_uri()
    span = changed_lines(edit.old, edit.new)
    edits: list[dict[str, Any]] = []
    if span is not None:
        doc = Document.from_text(edit.old)
        a_first, a_last, b_first, b_last = span
        start = doc.line_start(a_first) if a_first <= doc.line_count else len(edit.old)
        end = doc.line_span(a_first, a_last)[1] if a_last >= a_first else start
        new_lines = edit.new.splitlines(keepends=True)
        text = "".join(new_lines[b_first - 1:b_last])
        edits.append({"range": {"start": doc.lsp_position(start), "end": doc.lsp_position(end)},
                      "newText": text})
    if version is not None:
        return {"documentChanges": [{"textDocument": {"uri": uri, "version": version}, "edits": edits}]}
    return {"changes": {uri: edits}}


# -- backups -----------------------------------------------------------------------------------

def backup_dir(data_dir: Path, path: Path) -> Path:
    """One folder per file (by its absolute path's hash) under the data dir."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:20]
    return data_dir / "backups" / key


def _write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` so a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".demi-tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def apply_edit(edit: Edit, data_dir: Path) -> Path:
    """Write `edit.new` over the file after keeping a backup; returns the backup's path."""
    path = edit.path
    try:
        current = path.read_bytes()
        mode = path.stat().st_mode & 0o7777
    except OSError as exc:
        raise EditConflictError(f"{path}: cannot read it again before writing ({exc.strerror or exc})") from None
    if sha256(current) != edit.digest:
        raise EditConflictError(f"{path} changed since Demi read it; nothing was written (run the command again)")
    new = edit.new.encode("utf-8")
    folder = backup_dir(data_dir, path)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"{time.time_ns()}"
    backup = folder / f"{stamp}.bak"
    _write_atomic(backup, current)
    meta = {"path": str(path.resolve()), "written_sha256": sha256(new), "original_sha256": edit.digest,
            "time": time.time(), "mode": mode}
    _write_atomic(folder / f"{stamp}.json", json.dumps(meta).encode("utf-8"))
    try:
        _write_atomic(path, new, mode)
    except OSError as exc:
        raise EditConflictError(f"{path}: cannot write ({exc.strerror or exc}); the file is unchanged") from None
    return backup


def backups(data_dir: Path, path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(backup file, metadata) for `path`, newest last."""
    folder = backup_dir(data_dir, path)
    out = []
    for meta_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        bak = meta_file.with_suffix(".bak")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if bak.is_file():
            out.append((bak, meta))
    return out


def undo(path: str | Path, data_dir: Path, force: bool = False) -> Path:
    """Restore the newest backup of `path` (atomically); returns the backup used, which is removed."""
    p = Path(path)
    found = backups(data_dir, p)
    if not found:
        raise NoBackupError(f"{p}: no backup to restore (Demi has not changed this file)")
    bak, meta = found[-1]
    if p.exists() and not force:
        if sha256(p.read_bytes()) != meta.get("written_sha256"):
            raise EditConflictError(f"{p} changed since Demi wrote it; `demi undo --force {p}` restores "
                                    "the backup anyway")
    mode = meta.get("mode")
    _write_atomic(p, bak.read_bytes(), int(mode) if isinstance(mode, int) else None)
    bak.unlink()
    bak.with_suffix(".json").unlink(missing_ok=True)
    return bak
