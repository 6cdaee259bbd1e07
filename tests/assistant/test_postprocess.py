"""Completion post-processing on golden strings: each step alone, then the whole pipeline.

Every case is (prefix, raw model output, suffix) -> what the editor should insert.
"""

from __future__ import annotations

import pytest

from demi.assistant.languages import LANGUAGES
from demi.assistant.postprocess import (
    BlockWatcher,
    balance_brackets,
    cut_loop,
    decide_mode,
    drop_repeats,
    open_stack,
    postprocess,
    stop_at_block_end,
    syntax_trim,
    trim_suffix_overlap,
)

PY, JS, GO, C, RS = (LANGUAGES[n] for n in ("python", "javascript", "go", "c", "rust"))


# -- mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, suffix, spec, mode",
    [
        ("def f(x):\n    ", "\n", PY, "multi"),  # empty line in a body
        ("def f(x):", "\n", PY, "multi"),  # after a block opener
        ("function f() {", "\n}", JS, "multi"),
        ("x = compute(", ")\n", PY, "single"),  # only closers after the cursor
        ("x = foo", "(y)\n", PY, "single"),  # text after the cursor
        ("    total = a +", "\n", PY, "single"),  # finishing a statement
        ("", "", None, "multi"),  # empty file
        ("config = {", "\n", PY, "multi"),
    ],
)
def test_decide_mode(prefix, suffix, spec, mode):
    assert decide_mode(prefix, suffix, spec) == mode


# -- block end -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, raw, suffix, spec, want",
    [
        # python: the body of the def, not the next function
        (
            "def f(x):",
            "\n    y = x + 1\n    return y\n\ndef g():\n    pass\n",
            "\n",
            PY,
            "\n    y = x + 1\n    return y\n",
        ),
        # a statement and its block inside a body, then stop at the next statement of the same level
        ("def f(x):\n    ", "if x:\n        return 1\n    return 2\n", "\n", PY, "if x:\n        return 1"),
        # else/elif continue the statement
        (
            "def f(x):\n    ",
            "if x:\n        a = 1\n    else:\n        a = 2\n    return a",
            "\n",
            PY,
            "if x:\n        a = 1\n    else:\n        a = 2",
        ),
        # dedent out of the enclosing body
        ("def f(x):\n    y = 1\n    ", "z = 2\n    w = 3\nclass K:\n    pass", "\n", PY, "z = 2\n    w = 3"),
        # unknown language: the same indentation rule
        ("items:\n  ", "- a\n  - b\nnext: 1", "\n", None, "- a\n  - b"),
        # braces: the file already closes the block, so stop before the model's closer
        ("function f(a) {", "\n  return a + 1;\n}\n\nfunction g() {\n}", "\n}\n", JS, "\n  return a + 1;"),
        # braces: nothing closes it yet, so keep the closer
        ("function f(a) {", "\n  return a + 1;\n}\n\nfunction g() {\n}", "\n", JS, "\n  return a + 1;\n}"),
        # braces: a block the completion opens ends the completion when it closes
        ("int f(int x) {\n  ", "if (x) {\n    x++;\n  }\n  return x;\n}", "\n}\n", C, "if (x) {\n    x++;\n  }"),
        (
            "func main() {\n\t",
            "for i := 0; i < 3; i++ {\n\t\tfmt.Println(i)\n\t}\n\tos.Exit(0)",
            "\n}\n",
            GO,
            "for i := 0; i < 3; i++ {\n\t\tfmt.Println(i)\n\t}",
        ),
        # a closer inside a string is not a closer
        ("fn f() {\n    ", 'println!("}");\n    g();\n}\nfn h() {}', "\n}\n", RS, 'println!("}");\n    g();'),
    ],
)
def test_stop_at_block_end(prefix, raw, suffix, spec, want):
    assert stop_at_block_end(prefix, raw, suffix, spec) == want


def test_block_watcher_stops_early_on_whole_lines():
    w = BlockWatcher("def f(x):", "\n", PY, "multi")
    for piece in ["\n    return", " x\n", "\ndef", " g():\n"]:
        if w.push(piece):
            break
    assert w.done and w.text.endswith("def g():\n")
    single = BlockWatcher("x = ", "\n", PY, "single")
    assert not single.push("1 +")
    assert single.push(" 2\nprint(x)")


# -- repeats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, raw, suffix, want",
    [
        # echo of the line before the cursor
        ("x = 1\n", "x = 1\ny = 2", "\n", "y = 2"),
        ("    x = 1\n    ", "x = 1\n    y = 2", "\n", "y = 2"),
        ("x = 1\n", "x = 1", "\n", ""),
        ("a = 1\nb = 2\n", "a = 1\nb = 2\nc = 3", "\n", "c = 3"),  # the last two lines, in order
        ("a = 1\nb = 2\n", "b = 2\na = 1", "\n", "a = 1"),  # only a true tail is an echo
        # the completion runs into the code after the cursor
        ("def f():\n    ", "a = 1\n    b = 2\n    return a + b\n", "\n    return a + b\n", "a = 1\n    b = 2"),
        (
            "total = 0\n",
            "for x in xs:\n    total += x\nprint(total)",
            "\nprint(total)\n",
            "for x in xs:\n    total += x",
        ),
        # a short line that happens to match is kept when the next ones differ
        ("", "a = 1\nreturn\nb = 2", "\nreturn\nc = 3\n", "a = 1\nreturn\nb = 2"),
        # nothing repeated: unchanged
        ("def f():\n    ", "return 1", "\n\ndef g():\n    pass\n", "return 1"),
    ],
)
def test_drop_repeats(prefix, raw, suffix, want):
    assert drop_repeats(prefix, raw, suffix) == want


# -- suffix overlap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, raw, suffix, want",
    [
        ("foo(", "a, b)", ")\n", "a, b"),  # the call is already closed
        ("print(foo(", "x)", ")\n", "x)"),  # the completion closes foo(, the suffix print(
        ("x = [1, ", "2, 3]", "]\n", "2, 3"),
        ('name = "', 'bob"', '"\n', "bob"),
        ("if x", " > 0:", ":\n    pass\n", " > 0"),
        ("int x = ", "5;", ";\n", "5"),
        ("f(a", ", c, b)", ", b)\n", ", c"),
        ("x = ", "1", "\n", "1"),  # nothing after the cursor
        ("d = {", "'k': 1}", "}\n", "'k': 1"),
    ],
)
def test_trim_suffix_overlap(prefix, raw, suffix, want):
    assert trim_suffix_overlap(prefix, raw, suffix, PY) == want


# -- brackets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, raw, mode, spec, want",
    [
        ("x = ", "foo(a, [1, 2", "single", PY, "foo(a, [1, 2])"),
        ("x = ", "foo(a)", "single", PY, "foo(a)"),
        ("print(", "x)", "single", PY, "x)"),  # closing the prefix's bracket is fine
        ("s = ", "'(' + f(x", "single", PY, "'(' + f(x)"),  # a bracket in a string is text
        ("s = '", "(", "single", PY, "("),  # the cursor is inside a string
        ("function f() {\n  ", "if (x) {\n    y();", "multi", JS, "if (x) {\n    y();\n  }"),
    ],
)
def test_balance_brackets(prefix, raw, mode, spec, want):
    assert balance_brackets(prefix, raw, spec, mode) == want


def test_open_stack_ignores_strings_and_comments():
    assert open_stack("f(a, '(', [1  # ( comment\n") == ["(", "["]
    assert open_stack('g("a\\")")') == []


# -- tree-sitter ---------------------------------------------------------------------------------


def test_syntax_trim_drops_a_broken_last_line():
    prefix = "def f(x):\n"
    raw = "    y = x * 2\n    return y\n    ) junk ((("
    assert syntax_trim(prefix, raw, "\n", PY) == "    y = x * 2\n    return y"


def test_syntax_trim_keeps_good_code_and_plain_text():
    raw = "    y = x * 2\n    return y"
    assert syntax_trim("def f(x):\n", raw, "\n", PY) == raw
    assert syntax_trim("notes\n", "a ) (\nb", "", None) == "a ) (\nb"


# -- the whole pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix, raw, suffix, spec, want, mode",
    [
        # single line mid-statement: first line only, suffix overlap trimmed
        ("result = compute(", "a, b)\nprint(result)", ")\n", PY, "a, b", "single"),
        # FIM in a body: block end and the repeat of the next line
        (
            "def area(r):\n    ",
            "pi = 3.14159\n    return pi * r * r\n\ndef other():\n",
            "\n    return pi * r * r\n",
            PY,
            "pi = 3.14159",
            "multi",
        ),
        # JS function body, file closes it
        ("function add(a, b) {", "\n  return a + b;\n}\n", "\n}\n", JS, "\n  return a + b;", "multi"),
        # an unclosed call at max tokens gets its closer
        ("value = ", "int(text.strip(", "\n", PY, "int(text.strip())", "single"),
        # trailing whitespace at the end of the line goes
        ("def f():\n    ", "return 1\n    ", "\n", PY, "return 1", "multi"),
    ],
)
def test_postprocess_pipeline(prefix, raw, suffix, spec, want, mode):
    out = postprocess(prefix, raw, suffix, spec)
    assert out.mode == mode
    assert out.text == want, out.steps


@pytest.mark.parametrize(
    "raw, want",
    [
        ("return iter(iter(iter(iter(iter(iter(iter(iter(", "return"),
        ('"qrstr", "qrstr", "qrstr", "qrstr", "qrstr", "qr', ""),
        ("self.loop.run(self.loop.run(self.loop.run(self.loop.run(self.loop", ""),
        ("x = [0, 0, 0, 0]", "x = [0, 0, 0, 0]"),  # ends in something else
        ("# " + "=" * 70, "# " + "=" * 70),  # no letter or digit
        ("mask = 0xffffffffffffffff", "mask = 0xffffffffffffffff"),  # one character repeated
        ("pairs = [1, 2, 1, 2, 1, 2]", "pairs = [1, 2, 1, 2, 1, 2]"),
        ("ab, ab, ab", "ab, ab, ab"),  # three copies are not a loop
    ],
)
def test_cut_loop(raw, want):
    assert cut_loop(raw) == want


def test_block_watcher_stops_a_loop_before_the_token_cap():
    w = BlockWatcher("x = ", "", LANGUAGES["python"], "single")
    pieces = ["f(", "g(", "f(", "g("] + ["f(", "g("] * 20
    stopped = next(i for i, p in enumerate(pieces) if w.push(p))
    assert stopped < 16  # six copies of "f(g(" and it stops, not at the cap
    digits = BlockWatcher("x = ", "", LANGUAGES["python"], "single")
    assert not any(digits.push(p) for p in ["0x", "ff", "ff", "ff", "ff", "ff", "ff", "ff", "ff"])
