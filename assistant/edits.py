"""Edits to the user's files: shown as a diff, written only on request, and always undoable.

"Never a surprise write": a refactor produces an `Edit` (old and new text of one file); it
becomes a unified diff and an LSP WorkspaceEdit without touching the disk. `apply_edit` and
`undo` are the only places Demi writes a user's file (the language server hands its edits to
the editor through `workspace/applyEdit` instead), and both:

- write atomically: a hidden temp file `.NAME.demi-tmp-PID-RANDOM` in the same folder, fsync,
  `os.replace`, fsync of the folder; a process killed at any point leaves the old bytes or the
  new ones, never a mix (tests/assistant/test_edit_faults.py kills writers to check it), and a temp file
  it leaves behind is removed by the next write in that folder;
- keep the file's permission bits, and write through a symlink to the file it points at;
- refuse a file whose real path (symlinks resolved) is outside the workspace root;
- refuse when the file changed since it was read (apply) or since Demi wrote it (undo), checked
  when reading and again just before the rename.

`apply_edit` keeps a backup (and its record) before it writes, so an undo always has the old
bytes; a record whose write never landed (a crash before the rename) is dropped by `undo`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demi.assistant.document import Document
from demi.model.errors import DemiUserError


class EditConflictError(DemiUserError):
    """The file changed on disk after Demi read it (or after Demi wrote it, for undo)."""


class NoBackupError(DemiUserError):
    """`demi undo` on a file Demi has not changed."""


class OutsideWorkspaceError(DemiUserError):
    """The file (after resolving symlinks) lies outside the folder Demi may write in."""


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


def split_lines(text: str) -> list[str]:
    """Lines as `Document` counts them, ends kept: only "\n" ends a line (a lone CR, U+2028 or a
    form feed, which str.splitlines also splits at, stays inside its line)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def changed_lines(old: str, new: str) -> tuple[int, int, int, int] | None:
    """(first line, last line) of the changed region in old and in new, 1-based inclusive (a pure
    insertion has last < first); None when equal. Common leading and trailing lines are excluded.
    Lines are `Document` lines, so the numbers can be compared with a target's."""
    a, b = split_lines(old), split_lines(new)
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
        new_lines = split_lines(edit.new)
        text = "".join(new_lines[b_first - 1 : b_last])
        edits.append({"range": {"start": doc.lsp_position(start), "end": doc.lsp_position(end)}, "newText": text})
    if version is not None:
        return {"documentChanges": [{"textDocument": {"uri": uri, "version": version}, "edits": edits}]}
    return {"changes": {uri: edits}}


# -- backups -----------------------------------------------------------------------------------


def backup_dir(data_dir: Path, path: Path) -> Path:
    """One folder per file (by its absolute path's hash) under the data dir."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:20]
    return data_dir / "backups" / key


# -- workspace boundary --------------------------------------------------------------------------


def workspace_root(path: Path) -> Path:
    """Where the command line may write when no workspace is given: the current directory when
    `path` (as given, symlinks not followed) lies under it, else the file's own folder. The TUI
    and the language server pass their own root instead."""
    given = Path(os.path.abspath(path))
    try:
        cwd = Path(os.path.abspath(os.getcwd()))
    except OSError:  # the current directory was removed
        return given.parent
    return cwd if given.is_relative_to(cwd) else given.parent


def resolve_inside(path: Path, root: Path) -> Path:
    """`path` with every symlink resolved; refuses one whose real location is outside `root`
    (also resolved), so a link in a project cannot make Demi write somewhere else."""
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != real_root and not real.is_relative_to(real_root):
        shown = f" (it resolves to {real})" if real != Path(os.path.abspath(path)) else ""
        raise OutsideWorkspaceError(
            f"{path}{shown} is outside the workspace {real_root}; Demi writes only inside it (nothing was written)"
        )
    return real


# -- atomic writes -------------------------------------------------------------------------------

# Temporary files are hidden and named for the file they replace and the process writing them:
# `.NAME.demi-tmp-PID-RANDOM`. One left by a killed process is removed by the next write in that
# folder (its PID is gone, or it is over an hour old).
TMP_MARK = ".demi-tmp-"
_STALE_SECONDS = 3600.0

# Called with the name of each step of a write ("file:fsync", ...) when set: the fault-injection
# test records the last step reached before it kills the writer. None in normal use.
PHASE_HOOK: Callable[[str], None] | None = None


def _phase(name: str) -> None:
    if PHASE_HOOK is not None:
        PHASE_HOOK(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_temps(folder: Path) -> list[Path]:
    """Demi temp files in `folder` whose writer is gone (killed mid-write) or that are over an hour old."""
    out = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or TMP_MARK not in name:
            continue
        pid_text = name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if age > _STALE_SECONDS or (pid != os.getpid() and not _pid_alive(pid)):
            out.append(Path(entry.path))
    return out


def clean_stale_temps(folder: Path) -> int:
    """Remove what `stale_temps` finds; returns how many were removed."""
    removed = 0
    for p in stale_temps(folder):
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    try:  # make a rename durable (not possible on every platform or file system)
        dfd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _write_atomic(
    path: Path, data: bytes, mode: int | None = None, expect: str | None = None, label: str = "file"
) -> None:
    """Write `data` to `path` so a reader (or a crash) sees the old file or the new one, never
    half of one: a temp file in the same folder, fsync, rename over, fsync of the folder.

    `expect`: the sha256 the file must still have just before the rename (the last moment a
    change by someone else can be noticed); a mismatch leaves the file alone.
    """
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=str(folder))
    try:
        _phase(f"{label}:write")
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            _phase(f"{label}:fsync")
            os.fsync(fh.fileno())
        if expect is not None:
            _phase(f"{label}:recheck")
            try:
                now = sha256(path.read_bytes())
            except OSError as exc:
                raise EditConflictError(
                    f"{path}: cannot read it again before writing ({exc.strerror or exc}); nothing was written"
                ) from None
            if now != expect:
                raise EditConflictError(
                    f"{path} changed since Demi read it; nothing was written (run the command again)"
                )
        _phase(f"{label}:rename")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _phase(f"{label}:dirsync")
    _fsync_dir(folder)


def apply_edit(edit: Edit, data_dir: Path, root: Path | None = None) -> Path:
    """Write `edit.new` over the file after keeping a backup; returns the backup's path.

    `root`: the workspace the file must really lie in (default: `workspace_root(edit.path)`).
    """
    path = resolve_inside(edit.path, root if root is not None else workspace_root(edit.path))
    try:
        _phase("read")
        current = path.read_bytes()
        mode = path.stat().st_mode & 0o7777
    except OSError as exc:
        raise EditConflictError(f"{edit.path}: cannot read it again before writing ({exc.strerror or exc})") from None
    if sha256(current) != edit.digest:
        raise EditConflictError(f"{edit.path} changed since Demi read it; nothing was written (run the command again)")
    new = edit.new.encode("utf-8")
    folder = backup_dir(data_dir, path)
    folder.mkdir(parents=True, exist_ok=True)
    _tidy(folder, path.parent)
    stamp = f"{time.time_ns()}"
    backup = folder / f"{stamp}.bak"
    meta = {
        "path": str(path),
        "written_sha256": sha256(new),
        "original_sha256": edit.digest,
        "time": time.time(),
        "mode": mode,
    }
    # The record first, then the bytes: a record counts only once its .bak exists, so a crash
    # between the two leaves a few bytes of JSON, not a copy of the file.
    _write_atomic(folder / f"{stamp}.json", json.dumps(meta).encode("utf-8"), label="meta")
    _write_atomic(backup, current, label="backup")
    try:
        _write_atomic(path, new, mode, expect=edit.digest)
    except EditConflictError:
        _drop(backup)
        raise
    except OSError as exc:
        _drop(backup)
        raise EditConflictError(f"{edit.path}: cannot write ({exc.strerror or exc}); the file is unchanged") from None
    _phase("done")
    return backup


def _drop(backup: Path) -> None:
    """Remove a backup and its record (an apply that did not happen, or an undo that did)."""
    backup.unlink(missing_ok=True)
    backup.with_suffix(".json").unlink(missing_ok=True)


def _tidy(backup_folder: Path, file_folder: Path) -> None:
    """Remove what killed writers left: their temp files, and records whose backup never got
    written (over an hour old, so a write in progress elsewhere is never touched)."""
    clean_stale_temps(file_folder)
    if not backup_folder.is_dir():
        return
    clean_stale_temps(backup_folder)
    now = time.time()
    for meta_file in backup_folder.glob("*.json"):
        try:
            if not meta_file.with_suffix(".bak").exists() and now - meta_file.stat().st_mtime > _STALE_SECONDS:
                meta_file.unlink()
        except OSError:
            pass


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


def undo(path: str | Path, data_dir: Path, force: bool = False, root: Path | None = None) -> Path:
    """Restore the newest backup of `path` (atomically); returns the backup used, which is removed.

    A newest record whose write never landed (the file still has the bytes it was made from,
    the mark of an apply killed before its rename) is dropped first, so undo never "restores"
    a file to what it already is and then refuses the real undo behind it.
    """
    given = Path(path)
    p = resolve_inside(given, root if root is not None else workspace_root(given))
    _tidy(backup_dir(data_dir, p), p.parent)
    found = backups(data_dir, p)
    try:
        current = sha256(p.read_bytes()) if p.exists() else None
    except OSError as exc:
        raise EditConflictError(f"{given}: cannot read it ({exc.strerror or exc})") from None
    while found and current is not None:
        bak, meta = found[-1]
        if current == meta.get("original_sha256") != meta.get("written_sha256"):
            _drop(bak)
            found.pop()
            continue
        break
    if not found:
        raise NoBackupError(f"{given}: no backup to restore (Demi has not changed this file)")
    bak, meta = found[-1]
    if current is not None and not force and current != meta.get("written_sha256"):
        raise EditConflictError(
            f"{given} changed since Demi wrote it; `demi undo --force {given}` restores the backup anyway"
        )
    mode = meta.get("mode")
    try:
        _write_atomic(
            p,
            bak.read_bytes(),
            int(mode) if isinstance(mode, int) else None,
            expect=None if force or current is None else current,
        )
    except OSError as exc:
        raise EditConflictError(f"{given}: cannot write ({exc.strerror or exc}); the file is unchanged") from None
    _phase("undo:drop")
    _drop(bak)
    _phase("done")
    return bak
