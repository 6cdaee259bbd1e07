"""Refactor validation, diffs, WorkspaceEdits, atomic apply with backups, and undo.

The model's reply is given as text here (what a model could send back), so every rule is
checked deterministically; the CLI test drives the same code through a subprocess.
"""

from __future__ import annotations

import os
import stat

import pytest

from demi.assistant.document import Document
from demi.assistant.edits import (Edit, EditConflictError, NoBackupError, apply_edit, backups, changed_lines,
                                  undo, unified_diff, workspace_edit)
from demi.assistant.refactor import RefactorRejected, splice, validate
from demi.assistant.target import resolve_target

SRC = '''import math


def area(r):
    return 3.14 * r * r


class Shape:
    def scale(self, k):
        self.size = self.size * k
        return self


def main():
    print(area(2))
'''

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


@pytest.mark.parametrize("reply, message", [
    ("", "returned no code"),
    ("```python\n```", "returned no code"),
    ("```python\ndef area(r:\n    return (\n```", "does not parse"),
    ("```python\nx = 1\n```", "no longer defines area"),
])
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
    assert te == {"range": {"start": {"line": 3, "character": 0}, "end": {"line": 5, "character": 0}},
                  "newText": NEW_AREA}
    versioned = workspace_edit(edit, version=7)
    assert versioned["documentChanges"][0]["textDocument"] == {"uri": uri, "version": 7}


def test_workspace_edit_applies_to_the_old_text():
    """Applying the TextEdit to the old text gives the new text (also with a missing final newline)."""
    for old, new in [("a\nb\nc", "a\nB\nc"), ("x\n", "x\ny\n"), ("p\nq\n", "q\n"), ("😀 a\nb\n", "😀 a\nc\n")]:
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
    assert not [p for p in src.parent.iterdir() if p.name.endswith(".demi-tmp")]  # no temp file left
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
