"""Refactor validation, diffs, WorkspaceEdits, atomic apply with backups, and undo.

The model's reply is given as text here (what a model could send back), so every rule is
checked deterministically; the CLI test drives the same code through a subprocess.
"""

from __future__ import annotations

import os
import stat

import pytest

from demi.assistant import edits
from demi.assistant.document import Document
from demi.assistant.edits import (
    TMP_MARK,
    Edit,
    EditConflictError,
    NoBackupError,
    OutsideWorkspaceError,
    apply_edit,
    backup_dir,
    backups,
    changed_lines,
    stale_temps,
    undo,
    unified_diff,
    workspace_edit,
    workspace_root,
)
from demi.assistant.refactor import RefactorRejected, splice, validate
from demi.assistant.target import resolve_target

SRC = """import math


def area(r):
    return 3.14 * r * r


class Shape:
    def scale(self, k):
        self.size = self.size * k
        return self


def main():
    print(area(2))
"""

NEW_AREA = "def area(r: float) -> float:\n    return math.pi * r ** 2\n"


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "shapes.py"
    p.write_text(SRC, encoding="utf-8")
    return p


def target(path, symbol=None, lines=None):
    return resolve_target(Document.load(path), symbol, lines)


def test_splice_replaces_only_the_symbol(src):
    t = target(src, "area")
    new = splice(t, f"Here you go:\n```python\n{NEW_AREA}```\nDone.")
    assert new == SRC.replace("def area(r):\n    return 3.14 * r * r\n", NEW_AREA)
    assert validate(t, new) == []
    assert changed_lines(SRC, new) == (4, 5, 4, 5)


def test_splice_reindents_a_method(src):
    t = target(src, "Shape.scale")
    reply = "```python\ndef scale(self, k):\n    self.size *= k\n    return self\n```"
    new = splice(t, reply)
    assert "    def scale(self, k):\n        self.size *= k\n        return self\n" in new
    assert validate(t, new) == []


def test_splice_strips_echoed_context_lines(src):
    t = target(src, "area")
    reply = f"```python\nimport math\n\n\n{NEW_AREA}\n\nclass Shape:\n```"
    assert splice(t, reply) == SRC.replace("def area(r):\n    return 3.14 * r * r\n", NEW_AREA)


def test_whole_file_reply_is_accepted_when_only_the_target_changed(src):
    t = target(src, "area")
    whole = SRC.replace("    return 3.14 * r * r\n", "    return math.pi * r * r\n")
    assert splice(t, f"```python\n{whole}```") == whole


def test_whole_file_reply_changing_other_code_is_rejected(src):
    t = target(src, "area")
    whole = SRC.replace("    return 3.14 * r * r\n", "    return math.pi * r * r\n")
    whole = whole.replace("print(area(2))", "pass")
    with pytest.raises(RefactorRejected, match="changed lines outside area"):
        splice(t, f"```python\n{whole}```")


@pytest.mark.parametrize(
    "reply, message",
    [
        ("", "returned no code"),
        ("```python\n```", "returned no code"),
        ("```python\ndef area(r:\n    return (\n```", "does not parse"),
        ("```python\nx = 1\n```", "no longer defines area"),
    ],
)
def test_bad_rewrites_are_rejected(src, reply, message):
    t = target(src, "area")
    with pytest.raises(RefactorRejected, match=message):
        validate(t, splice(t, reply))


def test_whole_file_target(src):
    t = target(src)
    assert t.kind == "file" and (t.first, t.last) == (1, 15)
    new_src = SRC.replace("3.14", "math.pi")
    assert splice(t, f"```python\n{new_src}```") == new_src and validate(t, new_src) == []


def test_line_range_and_crlf_files(tmp_path):
    p = tmp_path / "w.py"
    p.write_bytes(b"a = 1\r\nb = 2\r\nc = 3\r\n")
    t = target(p, lines=(2, 2))
    new = splice(t, "```\nb = 20\n```")
    assert new == "a = 1\r\nb = 20\r\nc = 3\r\n"


def test_unified_diff_and_workspace_edit(src):
    t = target(src, "area")
    new = splice(t, f"```python\n{NEW_AREA}```")
    edit = Edit(src, SRC, new, t.doc.digest)
    diff = unified_diff(edit)
    name = str(src).replace(os.sep, "/")
    assert diff.startswith(f"--- a/{name}\n+++ b/{name}\n@@ -1,8 +1,8 @@\n")
    assert "-def area(r):\n-    return 3.14 * r * r\n+def area(r: float) -> float:\n" in diff
    we = workspace_edit(edit)
    [(uri, [te])] = we["changes"].items()
    assert uri == src.resolve().as_uri()
    assert te == {
        "range": {"start": {"line": 3, "character": 0}, "end": {"line": 5, "character": 0}},
        "newText": NEW_AREA,
    }
    versioned = workspace_edit(edit, version=7)
    assert versioned["documentChanges"][0]["textDocument"] == {"uri": uri, "version": 7}


def test_changed_lines_count_lines_as_documents_do():
    """Only \\n ends a line, as in `Document`: a lone CR, U+2028 or a form feed stays inside one."""
    assert edits.split_lines("a\rb\u2028c\n\x0cd") == ["a\rb\u2028c\n", "\x0cd"]
    assert edits.changed_lines("a = 1\rx = 1\r", "a = 1\ry = 1\r") == (1, 1, 1, 1)
    assert edits.changed_lines("p\nq\u2028r\ns\n", "p\nq\u2028R\ns\n") == (2, 2, 2, 2)


def test_workspace_edit_applies_to_the_old_text():
    """Applying the TextEdit to the old text gives the new text (also with a missing final newline)."""
    for old, new in [
        ("a\nb\nc", "a\nB\nc"),
        ("x\n", "x\ny\n"),
        ("p\nq\n", "q\n"),
        ("😀 a\nb\n", "😀 a\nc\n"),
        ("a\u2028b\nx\x0cy\n", "a\u2028b\nx\x0cz\n"),
    ]:
        [te] = workspace_edit(Edit(__import__("pathlib").Path("f.txt"), old, new, ""))["changes"].popitem()[1]
        doc = Document.from_text(old)
        s = doc.offset_utf16(te["range"]["start"]["line"], te["range"]["start"]["character"])
        e = doc.offset_utf16(te["range"]["end"]["line"], te["range"]["end"]["character"])
        assert old[:s] + te["newText"] + old[e:] == new


def test_apply_is_atomic_keeps_mode_and_backup_then_undo(src, tmp_path):
    data = tmp_path / "data"
    os.chmod(src, 0o640)
    t = target(src, "area")
    new = splice(t, f"```python\n{NEW_AREA}```")
    backup = apply_edit(Edit(src, SRC, new, t.doc.digest), data)
    assert src.read_text(encoding="utf-8") == new
    assert stat.S_IMODE(src.stat().st_mode) == 0o640
    assert backup.read_text(encoding="utf-8") == SRC and len(backups(data, src)) == 1
    assert not [p for p in src.parent.iterdir() if TMP_MARK in p.name]  # no temp file left
    undo(src, data)
    assert src.read_text(encoding="utf-8") == SRC and stat.S_IMODE(src.stat().st_mode) == 0o640
    with pytest.raises(NoBackupError, match="no backup"):
        undo(src, data)


def test_apply_refuses_a_file_changed_since_it_was_read(src, tmp_path):
    t = target(src, "area")
    new = splice(t, f"```python\n{NEW_AREA}```")
    src.write_text(SRC + "# edited meanwhile\n", encoding="utf-8")
    with pytest.raises(EditConflictError, match="changed since Demi read it"):
        apply_edit(Edit(src, SRC, new, t.doc.digest), tmp_path / "data")
    assert src.read_text(encoding="utf-8").endswith("# edited meanwhile\n")
    assert backups(tmp_path / "data", src) == []


def test_undo_refuses_a_file_changed_since_demi_wrote_it(src, tmp_path):
    data = tmp_path / "data"
    t = target(src, "area")
    apply_edit(Edit(src, SRC, splice(t, f"```python\n{NEW_AREA}```"), t.doc.digest), data)
    src.write_text("user's own edit\n", encoding="utf-8")
    with pytest.raises(EditConflictError, match="changed since Demi wrote it"):
        undo(src, data)
    assert src.read_text(encoding="utf-8") == "user's own edit\n"
    undo(src, data, force=True)
    assert src.read_text(encoding="utf-8") == SRC


def test_two_applies_undo_in_order(src, tmp_path):
    data = tmp_path / "data"
    t = target(src, "area")
    first = splice(t, f"```python\n{NEW_AREA}```")
    apply_edit(Edit(src, SRC, first, t.doc.digest), data)
    t2 = target(src, "main")
    second = splice(t2, "```python\ndef main():\n    print(area(3))\n```")
    apply_edit(Edit(src, first, second, t2.doc.digest), data)
    undo(src, data)
    assert src.read_text(encoding="utf-8") == first
    undo(src, data)
    assert src.read_text(encoding="utf-8") == SRC


# -- the write's rules: workspace, symlinks, a change at the last moment, leftovers ------------------


def _area_edit(path):
    t = target(path, "area")
    return Edit(path, t.doc.text, splice(t, f"```python\n{NEW_AREA}```"), t.doc.digest)


def test_a_symlink_out_of_the_workspace_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "shapes.py"
    victim.write_text(SRC, encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    link = ws / "shapes.py"
    link.symlink_to(victim)
    with pytest.raises(OutsideWorkspaceError, match=r"resolves to .*outside.*outside the workspace"):
        apply_edit(_area_edit(link), tmp_path / "data", root=ws)
    assert victim.read_text(encoding="utf-8") == SRC and link.is_symlink()
    assert not (tmp_path / "data").exists()  # refused before any backup
    # `..` out of the root is refused the same way
    with pytest.raises(OutsideWorkspaceError):
        apply_edit(_area_edit(ws / ".." / "outside" / "shapes.py"), tmp_path / "data", root=ws)
    with pytest.raises(OutsideWorkspaceError):
        undo(link, tmp_path / "data", root=ws)


def test_a_symlinked_directory_out_of_the_workspace_is_refused(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "shapes.py").write_text(SRC, encoding="utf-8")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "vendor").symlink_to(tmp_path / "lib", target_is_directory=True)
    with pytest.raises(OutsideWorkspaceError):
        apply_edit(_area_edit(ws / "vendor" / "shapes.py"), tmp_path / "data", root=ws)
    assert (tmp_path / "lib" / "shapes.py").read_text(encoding="utf-8") == SRC


def test_a_symlink_inside_the_workspace_writes_its_target_and_stays_a_link(tmp_path):
    ws = tmp_path / "ws"
    (ws / "real").mkdir(parents=True)
    real = ws / "real" / "shapes.py"
    real.write_text(SRC, encoding="utf-8")
    os.chmod(real, 0o755)
    link = ws / "shapes.py"
    link.symlink_to(real)
    edit = _area_edit(link)
    apply_edit(edit, tmp_path / "data", root=ws)
    assert link.is_symlink() and real.read_text(encoding="utf-8") == edit.new
    assert stat.S_IMODE(real.stat().st_mode) == 0o755
    undo(link, tmp_path / "data", root=ws)
    assert link.is_symlink() and real.read_text(encoding="utf-8") == SRC


def test_the_command_lines_workspace_is_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert workspace_root(tmp_path / "pkg" / "a.py") == tmp_path
    assert workspace_root(tmp_path.parent / "elsewhere" / "a.py") == tmp_path.parent / "elsewhere"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "link.py").symlink_to(tmp_path.parent)  # a link out of the cwd
    with pytest.raises(OutsideWorkspaceError):
        edits.resolve_inside(tmp_path / "pkg" / "link.py", workspace_root(tmp_path / "pkg" / "link.py"))


def test_a_change_just_before_the_rename_is_noticed(src, tmp_path):
    """The user saves while Demi is writing its temp file: the rename must not clobber that save."""
    edit = _area_edit(src)

    def users_save(step: str) -> None:
        if step == "file:fsync":
            src.write_text("the user's save\n", encoding="utf-8")

    edits.PHASE_HOOK = users_save
    try:
        with pytest.raises(EditConflictError, match="changed since Demi read it"):
            apply_edit(edit, tmp_path / "data")
    finally:
        edits.PHASE_HOOK = None
    assert src.read_text(encoding="utf-8") == "the user's save\n"
    assert backups(tmp_path / "data", src) == [] and not [p for p in src.parent.iterdir() if TMP_MARK in p.name]


def test_a_write_cut_off_before_the_rename_leaves_the_file_and_undo_consistent(src, tmp_path):
    """A crash between the backup and the rename (an exception stands in for the kill here;
    test_edit_faults.py uses SIGKILL): the file is unchanged, and undo says so instead of
    refusing because the file "changed since Demi wrote it"."""
    data = tmp_path / "data"
    first = _area_edit(src)
    apply_edit(first, data)

    class Crash(BaseException):
        pass

    def crash(step: str) -> None:
        if step == "file:rename":
            raise Crash

    t2 = target(src, "main")
    second = Edit(src, first.new, splice(t2, "```python\ndef main():\n    print(area(3))\n```"), t2.doc.digest)
    edits.PHASE_HOOK = crash
    try:
        with pytest.raises(Crash):
            apply_edit(second, data)
    finally:
        edits.PHASE_HOOK = None
    assert src.read_text(encoding="utf-8") == first.new and len(backups(data, src)) == 2
    undo(src, data)  # drops the record that never landed, then undoes the first apply
    assert src.read_text(encoding="utf-8") == SRC and backups(data, src) == []


def test_temp_files_of_a_dead_writer_are_removed_and_live_ones_kept(src, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = src.parent / f".{src.name}{TMP_MARK}{dead_pid}-abc123"
    stale.write_text("half a file")
    live = src.parent / f".{src.name}{TMP_MARK}{os.getppid()}-def456"  # pytest's parent: alive
    live.write_text("a write in progress elsewhere")
    old = src.parent / f".{src.name}{TMP_MARK}{os.getppid()}-old999"
    old.write_text("abandoned long ago")
    os.utime(old, (1, 1))
    assert sorted(p.name for p in stale_temps(src.parent)) == sorted([stale.name, old.name])
    apply_edit(_area_edit(src), tmp_path / "data")
    assert not stale.exists() and not old.exists() and live.exists()
    folder = backup_dir(tmp_path / "data", src)
    (folder / f".x.bak{TMP_MARK}{dead_pid}-zzz").write_text("half a backup")
    undo(src, tmp_path / "data")
    assert not [p for p in folder.iterdir() if TMP_MARK in p.name]
    assert src.read_text(encoding="utf-8") == SRC


def test_an_unwritable_folder_is_a_clear_error_and_changes_nothing(src, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    edit = _area_edit(src)
    os.chmod(src.parent, 0o555)
    try:
        with pytest.raises(EditConflictError, match="cannot write .*the file is unchanged"):
            apply_edit(edit, tmp_path.parent / (tmp_path.name + "-data"))
    finally:
        os.chmod(src.parent, 0o755)
    assert src.read_text(encoding="utf-8") == SRC
    assert backups(tmp_path.parent / (tmp_path.name + "-data"), src) == []


def test_cli_refuses_to_apply_through_a_link_out_of_the_project(tmp_path):
    """`demi refactor --apply` and `demi undo` run from a project whose file is a symlink to a file
    elsewhere: exit 2, one line, the target untouched."""
    from helpers import CODE, REWRITE, ScriptedServer, clean_env, demi

    outside = tmp_path / "elsewhere" / "geometry.py"
    outside.parent.mkdir()
    outside.write_text(CODE, encoding="utf-8")
    project = tmp_path / "project"
    project.mkdir()
    (project / "geometry.py").symlink_to(outside)
    env = clean_env(tmp_path / "home")
    srv = ScriptedServer(f"```python\n{REWRITE}```\n")
    try:
        proc = demi(
            env,
            "refactor",
            "geometry.py",
            "--symbol",
            "area",
            "-i",
            "add type hints",
            "--server",
            srv.url,
            "--apply",
            cwd=project,
        )
    finally:
        srv.close()
    assert proc.returncode == 2 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "outside the workspace" in proc.stderr and str(outside) in proc.stderr
    assert outside.read_text(encoding="utf-8") == CODE
    undo_proc = demi(env, "undo", "geometry.py", cwd=project)
    assert undo_proc.returncode == 2 and "outside the workspace" in undo_proc.stderr
    assert undo_proc.stderr.count("\n") == 1
