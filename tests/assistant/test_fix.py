"""`demi fix`'s session layer: reading errors, finding the code they point at, the model's fix
checked like a refactor, and the user's test run on a copy of the project.

The error texts are real outputs (CPython 3.11, pytest 8, gcc, rustc, node) with their paths moved
under /proj, plus the documented one-line formats of flake8, ruff and mypy. The model's replies are
given as text through a scripted engine (what a model could send back), so every rule is checked
deterministically; tests/cli/test_cli_fix.py drives the same code with real models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from demi.assistant.document import Document, PositionError
from demi.assistant.engines import EngineInfo
from demi.assistant.fix import (
    FixRejected,
    copy_project,
    error_at,
    locate,
    parse_error,
    propose_fix,
    run_test,
)
from demi.model.engine import Completion
from demi.model.errors import DemiUserError

# -- golden error texts ----------------------------------------------------------------------------------

PY_TRACEBACK = """\
Traceback (most recent call last):
  File "<string>", line 1, in <module>
  File "/proj/geo.py", line 15, in main
    print(area(2))
          ^^^^^^^
  File "/proj/geo.py", line 4, in area
    return 3.14 * r * undefined_name
                      ^^^^^^^^^^^^^^
NameError: name 'undefined_name' is not defined
"""

PY_CHAINED = """\
Traceback (most recent call last):
  File "/proj/geo.py", line 9, in load
    return d["x"] + 1
           ~^^^^^
KeyError: 'x'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "<string>", line 4, in <module>
  File "/proj/geo.py", line 11, in load
    raise RuntimeError("no x") from exc
RuntimeError: no x

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "<string>", line 6, in <module>
  File "/proj/geo.py", line 3, in area
    raise ValueError("negative radius")
ValueError: negative radius
"""

PY_GROUP = """\
  + Exception Group Traceback (most recent call last):
  |   File "<string>", line 1, in <module>
  |   File "/proj/grp.py", line 11, in h
  |     raise ExceptionGroup("wrapped", [e])
  | ExceptionGroup: wrapped (1 sub-exception)
  +-+---------------- 1 ----------------
    | Traceback (most recent call last):
    |   File "/proj/grp.py", line 9, in h
    |     f()
    |   File "/proj/grp.py", line 2, in f
    |     raise ValueError(1)
    | ValueError: 1
    +------------------------------------
"""

PY_SYNTAX = """\
  File "/proj/bad.py", line 1
    def f(:
          ^
SyntaxError: invalid syntax
"""

PYTEST_LONG = """\
FF                                                                       [100%]
=================================== FAILURES ===================================
__________________________________ test_area ___________________________________

    def test_area():
>       assert geo.area(1) == 3.14
               ^^^^^^^^^^^

test_geo.py:3:\x20
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _\x20

r = 1

    def area(r):
        if r < 0:
            raise ValueError("negative radius")
>       return 3.14 * r * undefined_name
                          ^^^^^^^^^^^^^^
E       NameError: name 'undefined_name' is not defined

geo.py:4: NameError
___________________________________ test_neg ___________________________________

    def test_neg():
>       assert geo.load({"x": "a"}) == 2
               ^^^^^^^^^^^^^^^^^^^^

test_geo.py:5:\x20
_ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _\x20

d = {'x': 'a'}

    def load(d):
        try:
>           return d["x"] + 1
                   ^^^^^^^^^^
E           TypeError: can only concatenate str (not "int") to str

geo.py:9: TypeError
=========================== short test summary info ============================
FAILED test_geo.py::test_area - NameError: name 'undefined_name' is not defined
FAILED test_geo.py::test_neg - TypeError: can only concatenate str (not "int"...
2 failed in 0.05s
"""

PYTEST_SHORT = """\
=================================== FAILURES ===================================
__________________________________ test_area ___________________________________
test_geo.py:3: in test_area
    assert geo.area(1) == 3.14
           ^^^^^^^^^^^
geo.py:4: in area
    return 3.14 * r * undefined_name
                      ^^^^^^^^^^^^^^
E   NameError: name 'undefined_name' is not defined
=========================== short test summary info ============================
FAILED test_geo.py::test_area - NameError: name 'undefined_name' is not defined
"""

PYTEST_LINE = """\
=================================== FAILURES ===================================
/proj/geo.py:4: NameError: name 'undefined_name' is not defined
/proj/geo.py:9: TypeError: can only concatenate str (not "int") to str
"""

PYTEST_COLLECT = """\
_________________________ ERROR collecting test_imp.py _________________________
/usr/lib/python3.11/importlib/__init__.py:126: in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
<frozen importlib._bootstrap>:1204: in _gcd_import
    ???
test_imp.py:1: in <module>
    import bad
E     File "/proj/bad.py", line 1
E       def f(:
E             ^
E   SyntaxError: invalid syntax
=========================== short test summary info ============================
ERROR test_imp.py
"""

GCC = """\
m.c: In function 'main':
m.c:3:20: error: 'x' undeclared (first use in this function)
    3 |     printf("%d\\n", x);
      |                    ^
m.c:3:20: note: each undeclared identifier is reported only once for each function it appears in
"""

RUSTC = """\
error[E0425]: cannot find value `x` in this scope
 --> m.rs:3:20
  |
3 |     println!("{}", x);
  |                    ^
"""

NODE = """\
/proj/geo.js:2
  return r.foo.bar;
               ^

TypeError: Cannot read properties of undefined (reading 'bar')
    at area (/proj/geo.js:2:16)
    at main (/proj/geo.js:5:15)
    at Object.<anonymous> (/proj/geo.js:7:1)
    at Module._compile (node:internal/modules/cjs/loader:1521:14)
"""


def places(text: str) -> list[tuple[str, int, int | None, str | None]]:
    return [(f.path, f.line, f.column, f.function) for f in parse_error(text).frames]


def test_python_traceback_innermost_frame_first():
    r = parse_error(PY_TRACEBACK)
    assert places(PY_TRACEBACK) == [
        ("/proj/geo.py", 4, None, "area"),
        ("/proj/geo.py", 15, None, "main"),
        ("<string>", 1, None, "<module>"),
    ]
    assert r.summary == "NameError: name 'undefined_name' is not defined"
    assert all(f.message == r.summary for f in r.frames)


def test_chained_exceptions_surfaced_one_first_causes_after():
    r = parse_error(PY_CHAINED)
    assert [(p, line) for p, line, _, _ in places(PY_CHAINED) if p != "<string>"] == [
        ("/proj/geo.py", 3),  # the exception that surfaced
        ("/proj/geo.py", 11),  # the one it happened while handling
        ("/proj/geo.py", 9),  # that one's cause
    ]
    assert r.summary == "ValueError: negative radius"
    assert [f.message for f in r.frames if f.line == 9] == ["KeyError: 'x'"]
    assert r.frames[0].span == (0, len(PY_CHAINED.splitlines()) - 1)  # the whole chain is one error


def test_exception_group_and_a_bare_syntax_error():
    assert [(p, line, fn) for p, line, _, fn in places(PY_GROUP) if p != "<string>"] == [
        ("/proj/grp.py", 11, "h"),
        ("/proj/grp.py", 2, "f"),
        ("/proj/grp.py", 9, "h"),
    ]
    assert [f.message for f in parse_error(PY_GROUP).frames if f.line == 2] == ["ValueError: 1"]
    r = parse_error(PY_SYNTAX)
    assert places(PY_SYNTAX) == [("/proj/bad.py", 1, None, None)] and r.summary == "SyntaxError: invalid syntax"


@pytest.mark.parametrize("text", [PYTEST_LONG, PYTEST_SHORT])
def test_pytest_tracebacks(text):
    r = parse_error(text)
    first = r.frames[0]
    assert (first.path, first.line) == ("geo.py", 4)
    assert first.message == r.summary == "NameError: name 'undefined_name' is not defined"
    assert ("test_geo.py", 3) == (r.frames[1].path, r.frames[1].line)
    if text is PYTEST_SHORT:
        assert [f.function for f in r.frames] == ["area", "test_area"]
    else:  # the second failure comes after the first, with its own message
        assert [(f.path, f.line, f.message[:9]) for f in r.frames[2:]] == [
            ("geo.py", 9, "TypeError"),
            ("test_geo.py", 5, "TypeError"),
        ]


def test_pytest_line_report_and_a_collection_error():
    r = parse_error(PYTEST_LINE)
    assert [(f.line, f.message.split(":")[0]) for f in r.frames] == [(4, "NameError"), (9, "TypeError")]
    c = parse_error(PYTEST_COLLECT)
    assert (c.frames[0].path, c.frames[0].line) == ("/proj/bad.py", 1)
    assert c.summary == "SyntaxError: invalid syntax"
    assert "<frozen importlib._bootstrap>" not in [f.path for f in c.frames]  # not a file


@pytest.mark.parametrize(
    "line, where, message",
    [
        ("./geo.py:4:23: F821 undefined name 'undefined_name'", ("./geo.py", 4, 23), "F821 undefined name"),
        ("geo.py:4:23: F821 Undefined name `undefined_name`", ("geo.py", 4, 23), "F821 Undefined name"),
        ('geo.py:4: error: Name "undefined_name" is not defined  [name-defined]', ("geo.py", 4, None), "error: Name"),
        ("src/app/geo.py:12:5: error: Incompatible return value", ("src/app/geo.py", 12, 5), "error: Incompatible"),
        ("geo.py:4:23: E0602: Undefined variable 'undefined_name' (undefined-variable)", ("geo.py", 4, 23), "E0602"),
        ("./main.go:12:5: undefined: x", ("./main.go", 12, 5), "undefined: x"),
        ("src/a.ts(12,5): error TS2304: Cannot find name 'x'.", ("src/a.ts", 12, 5), "error TS2304"),
    ],
)
def test_one_line_diagnostics(line, where, message):
    r = parse_error(line)
    [f] = r.frames
    assert (f.path, f.line, f.column) == where and f.message.startswith(message) and r.summary == f.message


def test_mypy_notes_are_skipped_and_lists_keep_their_order():
    text = (
        'geo.py:4: error: Name "x" is not defined  [name-defined]\n'
        "geo.py:4: note: Did you mean 'y'?\n"
        'geo.py:9: error: Unsupported operand types for + ("str" and "int")  [operator]\n'
        "Found 2 errors in 1 file (checked 1 source file)\n"
    )
    assert [f.line for f in parse_error(text).frames] == [4, 9]


def test_compilers_and_javascript_stacks():
    g = parse_error(GCC)
    assert places(GCC) == [("m.c", 3, 20, None)] and g.summary.startswith("error: 'x' undeclared")
    r = parse_error(RUSTC)
    assert places(RUSTC) == [("m.rs", 3, 20, None)] and r.summary == "error[E0425]: cannot find value `x` in this scope"
    n = parse_error(NODE)
    assert places(NODE)[:3] == [
        ("/proj/geo.js", 2, 16, "area"),
        ("/proj/geo.js", 5, 15, "main"),
        ("/proj/geo.js", 7, 1, "Object.<anonymous>"),
    ]
    assert n.summary == "TypeError: Cannot read properties of undefined (reading 'bar')"


@pytest.mark.parametrize(
    "text, summary",
    [
        ("ZeroDivisionError: division by zero", "ZeroDivisionError: division by zero"),
        ("it crashes\nsomewhere deep\nKeyError: 'name'\nexit status 1", "KeyError: 'name'"),
        ("12:30:45 started; see log.txt", "12:30:45 started; see log.txt"),
        ("", ""),
    ],
)
def test_text_without_places(text, summary):
    r = parse_error(text)
    assert r.frames == [] and r.summary == summary


def test_excerpt_keeps_the_chosen_error_and_cuts_long_text():
    long = "\n\n" + PYTEST_LONG + "\n".join(f"filler line {i}" for i in range(400))  # leading blank lines too
    r = parse_error(long)
    second = r.frames[2]
    part = r.excerpt(second, limit=2000)
    assert "TypeError" in part and "NameError" not in part  # only the failure the frame belongs to
    whole = r.excerpt(None, limit=300)
    assert len(whole) <= 300 and "[... cut ...]" in whole and whole.endswith("filler line 399")


# -- locate --------------------------------------------------------------------------------------------------

GEO = '''import math

RATE=float("2,5")


def area(r):
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return 3.14 * r * undefined_name


class Shape:
    sides = 0

    def scale(self, k):
        return self.size * k


def main():
    print(area(2))
'''


@pytest.fixture
def geo(tmp_path) -> Document:
    p = tmp_path / "geo.py"
    p.write_text(GEO, encoding="utf-8")
    return Document.load(p)


def tb(path: Path | str, *frames: tuple[int, str]) -> str:
    body = "".join(f'  File "{path}", line {n}, in {fn}\n    code\n' for n, fn in frames)
    return f"Traceback (most recent call last):\n{body}NameError: boom\n"


def test_locate_takes_the_function_around_the_innermost_frame_in_the_file(geo, tmp_path):
    text = (
        "Traceback (most recent call last):\n"
        f'  File "{geo.path}", line 21, in main\n    print(area(2))\n'
        f'  File "{geo.path}", line 10, in area\n    return 3.14 * r * undefined_name\n'
        '  File "/usr/lib/python3.11/numbers.py", line 3, in helper\n    x\n'
        "NameError: name 'undefined_name' is not defined\n"
    )
    site = locate(parse_error(text), geo)
    assert (site.symbol, site.lines, site.frame.line) == ("area", None, 10)
    assert site.summary == "NameError: name 'undefined_name' is not defined"
    method = locate(parse_error(tb(geo.path, (17, "scale"))), geo)
    assert method.symbol == "Shape.scale"
    attribute = locate(parse_error(tb(geo.path, (14, "Shape"))), geo)
    assert attribute.symbol == "Shape"  # no function around it: the class
    module = locate(parse_error(tb(geo.path, (3, "<module>"))), geo)
    assert (module.symbol, module.lines) == (None, (3, 3))  # a module-level statement


def test_locate_matches_relative_and_moved_paths(geo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locate(parse_error("geo.py:10:23: F821 undefined name 'undefined_name'"), geo).symbol == "area"
    moved = tb(f"/tmp/demi-fix-abc/{tmp_path.name}/geo.py", (21, "main"))
    assert locate(parse_error(moved), geo).symbol == "main"  # the same name: the best match there is
    exact_and_other = tb("/other/geo.py", (17, "scale")) + tb(geo.path, (21, "main"))
    assert locate(parse_error(exact_and_other), geo).symbol == "main"  # the file itself beats a namesake


def test_locate_with_a_chosen_target(geo):
    report = parse_error(tb(geo.path, (21, "main"), (10, "area")))
    site = locate(report, geo, symbol="main")
    assert (site.symbol, site.frame.line) == ("main", 21)  # the frame inside the target
    ranged = locate(parse_error("ZeroDivisionError: division by zero"), geo, lines=(6, 10))
    assert (ranged.lines, ranged.frame, ranged.summary) == ((6, 10), None, "ZeroDivisionError: division by zero")
    elsewhere = locate(parse_error(tb("/proj/other.py", (3, "f"))), geo, symbol="area")
    assert elsewhere.frame is None and elsewhere.symbol == "area"


@pytest.mark.parametrize(
    "text, message",
    [
        (tb("/proj/other.py", (3, "f"), (9, "g")), "does not mention"),
        ("ZeroDivisionError: division by zero", "names no line of"),
        ("geo.py:99: error: boom", "names line 99"),
    ],
)
def test_locate_user_errors(geo, tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DemiUserError, match=message):
        locate(parse_error(text), geo)
    if message == "names line 99":
        with pytest.raises(PositionError):
            locate(parse_error(text), geo)


def test_error_at_places_an_editor_diagnostic(geo):
    report = error_at(geo.path, 10, "undefined name 'undefined_name'  (pyflakes)")
    site = locate(report, geo)
    assert site.symbol == "area" and site.summary == "undefined name 'undefined_name' (pyflakes)"


# -- propose_fix ------------------------------------------------------------------------------------------------

FIXED_AREA = '''def area(r):
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return math.pi * r * r
'''


class Replies:
    """The engine interface with scripted replies, one per call, and the prompts it was given."""

    def __init__(self, *replies: str):
        self.replies, self.prompts, self.samplings = list(replies), [], []

    def info(self) -> EngineInfo:
        return EngineInfo("scripted", "in-process", 4096, 1_000_000)

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4 if text else 0

    def chat(self, prompt, on_text=None, sampling=None, **_):
        self.prompts.append(prompt)
        self.samplings.append(sampling)
        text = self.replies.pop(0)
        return Completion(text, [0] * 5, 100, "stop", 0.1)


def area_site(geo):
    text = tb(geo.path, (21, "main"), (10, "area"))
    return parse_error(text), locate(parse_error(text), geo)


def test_a_valid_fix_is_a_diff_of_the_function_only(geo):
    report, site = area_site(geo)
    engine = Replies(f"The name is not defined; use math.pi:\n\n```python\n{FIXED_AREA}```\n")
    result = propose_fix(engine, geo, report, site)
    assert result.target == "area" and result.lines == (6, 10) and result.tries == 1
    assert "-    return 3.14 * r * undefined_name\n+    return math.pi * r * r\n" in result.diff
    assert result.edit.new == GEO.replace("3.14 * r * undefined_name", "math.pi * r * r")
    assert geo.path.read_text(encoding="utf-8") == GEO  # nothing written
    user = engine.prompts[0].messages[-1]["content"]
    assert user.startswith("Fix the bug in the function `area`") and "NameError: boom" in user
    assert "line 10 of the file: `return 3.14 * r * undefined_name`" in user
    assert "def area(r):" in engine.prompts[0].plain and "it fails with: NameError: boom" in engine.prompts[0].plain
    j = result.as_json()
    assert j["error"] == "NameError: boom" and j["frame"]["line"] == 10 and j["test"] is None


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("I am not sure what to do.", "does not parse"),
        ("```python\nx = 1\n```", "no longer defines area"),
        ("```python\n```", "returned no code"),
        (f"```python\n{GEO}```".replace("print(area(2))", "pass"), "changed lines outside area"),
        (f"```python\n{GEO[GEO.index('def area') : GEO.index('class Shape')].rstrip()}\n```", "unchanged"),
    ],
)
def test_invalid_fixes_are_rejected_with_the_reason(geo, reply, reason):
    report, site = area_site(geo)
    with pytest.raises(FixRejected, match=rf"no valid fix found \(1 try\): .*{reason}") as err:
        propose_fix(Replies(reply), geo, report, site)
    assert "geo.py is unchanged" in str(err.value) and "\n" not in str(err.value)


def test_more_candidates_until_one_is_valid(geo):
    report, site = area_site(geo)
    engine = Replies("no code here (", f"```python\n{FIXED_AREA}```")
    result = propose_fix(engine, geo, report, site, candidates=3)
    assert result.tries == 2 and len(engine.prompts) == 2
    assert engine.samplings[0] is None and engine.samplings[1].temperature >= 0.8  # the others are sampled
    with pytest.raises(FixRejected, match=r"\(2 tries\)"):
        propose_fix(Replies("(", "("), geo, report, site, candidates=2)


def test_a_check_picks_the_reply_that_passes(geo):
    report, site = area_site(geo)
    wrong = FIXED_AREA.replace("math.pi * r * r", "0")
    checked: list[str] = []

    def check(new_text):
        from demi.assistant.fix import CommandRun

        checked.append(new_text)
        ok = "math.pi * r * r" in new_text
        return CommandRun("pytest", ok, 0 if ok else 1, 0.01, "" if ok else "1 failed")

    result = propose_fix(
        Replies(f"```python\n{wrong}```", f"```python\n{FIXED_AREA}```"), geo, report, site, candidates=2, check=check
    )
    assert result.test.passed and result.tries == 2 and len(checked) == 2
    only_wrong = propose_fix(Replies(f"```python\n{wrong}```"), geo, report, site, check=check)
    assert only_wrong.test.passed is False and only_wrong.edit.changed  # shown, marked as failing


# -- run_test --------------------------------------------------------------------------------------------------


def make_project(root: Path) -> Path:
    """A project whose check fails inside `pkg/calc.py`; its test is a plain script (starts in
    milliseconds; pytest's own reports are parsed above, and run for real in the CLI test)."""
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (root / "pkg" / "calc.py").write_text("def half(n):\n    return n / two\n", encoding="utf-8")
    (root / "check.py").write_text("from pkg.calc import half\n\nassert half(8) == 4\n", encoding="utf-8")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    (root / ".venv").mkdir()
    (root / ".venv" / "marker").write_text("linked, not copied", encoding="utf-8")
    return root / "pkg" / "calc.py"


CHECK = f"{sys.executable} check.py"


def test_run_test_on_a_copy_before_and_with_a_fix(tmp_path):
    project = tmp_path / "proj"
    calc = make_project(project)
    elsewhere = run_test(CHECK, project, cwd=project / "pkg", timeout=60)
    assert elsewhere.exit_code == 2 and "check.py" in elsewhere.output  # run from pkg/ in the copy: no check.py
    before = run_test(CHECK, project, cwd=project, timeout=60)
    assert not before.passed and before.exit_code == 1 and not before.timed_out
    assert f'File "{project}/pkg/calc.py", line 2, in half' in before.output  # the copy's paths read as the project's
    assert "demi-fix-" not in before.output
    site = locate(parse_error(before.output), Document.load(calc))
    assert (site.symbol, site.frame.line, site.summary) == ("half", 2, "NameError: name 'two' is not defined")
    fixed = run_test(CHECK, project, cwd=project, timeout=60, changes={calc: "def half(n):\n    return n // 2\n"})
    assert fixed.passed and fixed.exit_code == 0, fixed.output
    assert calc.read_text(encoding="utf-8") == "def half(n):\n    return n / two\n"  # the user's file untouched
    assert not (project / "pkg" / "__pycache__").exists()


def test_copy_project_skips_caches_and_links_big_folders(tmp_path):
    project = tmp_path / "proj"
    make_project(project)
    dest = tmp_path / "copy"
    dest.mkdir()
    copy_project(project, dest)
    assert (dest / "pkg" / "calc.py").read_text(encoding="utf-8").startswith("def half")
    assert not (dest / "__pycache__").exists()
    assert (dest / ".venv").is_symlink() and (dest / ".venv" / "marker").is_file()


def test_run_test_timeout_and_bad_commands(tmp_path):
    project = tmp_path / "proj"
    make_project(project)
    slow = run_test(f'{sys.executable} -c "import time; time.sleep(30)"', project, cwd=project, timeout=0.5)
    assert slow.timed_out and not slow.passed and slow.exit_code is None and slow.seconds < 10
    with pytest.raises(DemiUserError, match="cannot run 'no-such-program-xyz'"):
        run_test("no-such-program-xyz --flag", project, cwd=project)
    with pytest.raises(DemiUserError, match="cannot read the command"):
        run_test('pytest "unclosed', project)
    with pytest.raises(DemiUserError, match="outside the project folder"):
        run_test(CHECK, project, cwd=project, changes={tmp_path / "elsewhere.py": "x = 1\n"})
    with pytest.raises(DemiUserError, match="outside the project folder"):  # never written through a link
        run_test(CHECK, project, cwd=project, changes={project / ".venv" / "marker": "changed"})
    assert (project / ".venv" / "marker").read_text(encoding="utf-8") == "linked, not copied"
