"""The text right of the cursor, on golden strings: a suggestion that repeats it is dropped, one
that rewrites it replaces it (through a range), anything else is inserted before it.

Every case is (prefix, suggestion, suffix) -> (text, characters replaced after the cursor, action).
"""

from __future__ import annotations

import pytest

from demi.assistant.complete import CompletionResult
from demi.assistant.languages import LANGUAGES
from demi.assistant.overlap import Overlap, covers, repeats, resolve_overlap, right_of_cursor

PY, JS = LANGUAGES["python"], LANGUAGES["javascript"]


@pytest.mark.parametrize(
    "prefix, completion, suffix, spec, want",
    [
        # the two cases: a rewrite of the rest of the line replaces it
        (
            "def f(items):\n    ",
            "for item in items:",
            "for it in items:\n        pass\n",
            PY,
            Overlap("for item in items:", 16, "replace"),
        ),
        ("def f(s):\n    ", "return s", "return \n", PY, Overlap("return s", 7, "replace")),
        # repeats of what is there already are dropped
        ("def f(s):\n    ", "return", "return \n", PY, Overlap("", 0, "drop")),
        ("    ", "for it in items:", "for it in items:\n", PY, Overlap("", 0, "drop")),
        ("    ", "for", "for it in items:\n", PY, Overlap("", 0, "drop")),
        # an insertion in the middle of the existing text, and one at its end
        ("    ", "print(x, y)", "print(x)\n", PY, Overlap("print(x, y)", 8, "replace")),
        ("x = ", "total + count", "count\n", PY, Overlap("total + count", 5, "replace")),
        # unrelated text after the cursor: inserted before it
        ("x = ", "compute(", "y + 1\n", PY, Overlap("compute(", 0, "insert")),
        ("items.", "extend(y)", "append(x)\n", PY, Overlap("extend(y)", 0, "insert")),
        # auto-paired closers: the suggestion's own call keeps the editor's `)`
        ("x = bar(", "foo(x)", ")\n", PY, Overlap("foo(x)", 0, "insert")),
        # ... but a suggestion that closes the existing call replaces it (cursor after it on accept)
        ("x = foo(", "x)", ")\n", PY, Overlap("x)", 1, "replace")),
        ('x = d["', 'key"]', '"]\n', PY, Overlap('key"]', 2, "replace")),
        ("let v = f(", "a, b);", ");\n", JS, Overlap("a, b);", 2, "replace")),
        # a closer that ends a call opened on an earlier line is not taken
        ("foo(\n    a, ", "bar(x)", ")\n", PY, Overlap("bar(x)", 0, "insert")),
        # the existing text closes the call the cursor is in: replacing it would lose that
        ("x = foo(", "bar(x)", "x)\n", PY, Overlap("bar(x)", 0, "insert")),
        # a block's closing brace, from a multi-line suggestion
        ("function f() {", "\n  return 1;\n}", "}\n", JS, Overlap("\n  return 1;\n}", 1, "replace")),
        # blanks only after the cursor: left alone
        ("x = ", "1", "   \n", PY, Overlap("1", 0, "insert")),
        ("x = ", "1", "\t\n", PY, Overlap("1", 0, "insert")),
        # nothing after the cursor, or nothing suggested
        ("x = ", "1", "\nprint(x)\n", PY, Overlap("1", 0, "insert")),
        ("x = ", "", "y\n", PY, Overlap("", 0, "insert")),
        # unicode is counted in characters (the LSP layer converts to its units)
        ("s = '", "héllo wörld 🙂'", "héllo'\n", PY, Overlap("héllo wörld 🙂'", 6, "replace")),
        ("名前 = ", "値 + 1", "値\n", PY, Overlap("値 + 1", 1, "replace")),
        # CRLF: the line ends at the \r
        ("def f(s):\r\n    ", "return s", "return \r\n", PY, Overlap("return s", 7, "replace")),
        ("x = foo(", "x)", ")\r\n", PY, Overlap("x)", 1, "replace")),
        ("def f(s):\r\n    ", "return", "return\r\n", PY, Overlap("", 0, "drop")),
        # inside a comment, brackets are text: a `)` there is kept
        ("# see bar(", "foo(x)", ")\n", PY, Overlap("foo(x)", 0, "insert")),
    ],
)
def test_resolve_overlap(prefix, completion, suffix, spec, want):
    assert resolve_overlap(prefix, completion, suffix, spec) == want


def test_the_result_applied_reads_as_intended():
    prefix, suffix = "def f(items):\n    ", "for it in items:\n        pass\n"
    got = resolve_overlap(prefix, "for item in items:", suffix, PY)
    assert prefix + got.text + suffix[got.replace :] == "def f(items):\n    for item in items:\n        pass\n"
    prefix, suffix = "x = bar(", ")\n"
    got = resolve_overlap(prefix, "foo(x)", suffix, PY)
    assert prefix + got.text + suffix[got.replace :] == "x = bar(foo(x))\n"


@pytest.mark.parametrize(
    "suffix, right",
    [("abc\ndef", "abc"), ("abc\r\ndef", "abc"), ("abc\rdef", "abc"), ("abc", "abc"), ("\n", ""), ("", "")],
)
def test_right_of_cursor(suffix, right):
    assert right_of_cursor(suffix) == right


def test_covers_and_repeats():
    assert covers("for item in items:", "for it in items:")
    assert covers("return s", "return")
    assert not covers("return", "return s")  # shorter than the text
    assert not covers("items.extend(y)", "items.append(x)")
    assert not covers("anything", "")
    assert repeats("ret", "return x")
    assert not repeats("ret\nfoo", "return x")  # more lines: not only a repeat
    assert not repeats("   ", "return x")


def test_completion_result_json_has_the_replaced_range():
    result = CompletionResult("return s", "return s", "single", ["overlap_replace"], "m", 2, 5, replace=7)
    data = result.as_json()
    assert data["replace"] == 7
    assert data["replace_end"] == {"line": 2, "col": 12}
    plain = CompletionResult("x", "x", "single", [], "m", 3, 1).as_json()
    assert plain["replace"] == 0 and plain["replace_end"] == {"line": 3, "col": 1}
