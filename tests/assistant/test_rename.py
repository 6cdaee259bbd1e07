"""Mechanical renames by tree-sitter scope analysis: every binding and use of the name in the
function's scope, nothing else; refusals in one line; instructions recognised robustly."""

from __future__ import annotations

import pytest

from demi.assistant.document import Document
from demi.assistant.instructions import AddDocstring, AddTypeHints, ExtractConstant, Rename, ToComprehension, recognise
from demi.assistant.rename import RenameRefused, rename
from demi.assistant.target import resolve_target

SCOPES = '''out = 5


def f(out, n=out):
    """Use out here."""
    # out is a comment
    s = "out"
    res = [out for out in range(3)]
    g = [x + out for x in out]
    obj.out = out
    call(out=out)

    def inner():
        return out

    def shadow(out):
        return out

    def outer_write():
        nonlocal out
        out = 2

    lam = lambda out: out
    lam2 = lambda: out

    class K:
        out = 1
        y = out

        def m(self):
            return out

    t = f"{out!r}"
    return out


def h():
    return out


f(out=1)
'''

EXPECTED = '''out = 5


def f(result, n=out):
    """Use out here."""
    # out is a comment
    s = "out"
    res = [out for out in range(3)]
    g = [x + result for x in result]
    obj.out = result
    call(out=result)

    def inner():
        return result

    def shadow(out):
        return out

    def outer_write():
        nonlocal result
        result = 2

    lam = lambda out: out
    lam2 = lambda: result

    class K:
        out = 1
        y = out

        def m(self):
            return result

    t = f"{result!r}"
    return result


def h():
    return out


f(out=1)
'''


def target(text: str, symbol: str | None = None, lines: tuple[int, int] | None = None):
    return resolve_target(Document.from_text(text, "m.py"), symbol, lines)


def test_a_parameter_is_renamed_in_its_scope_only():
    done = rename(target(SCOPES, "f"), "out", "result")
    assert done.new_text == EXPECTED
    assert (done.kind, done.count, done.scope) == ("parameter", 12, "f")
    assert any("pass `out=` by keyword" in n and "(line 41)" in n for n in done.notes)
    assert any("docstring still mentions `out`" in n for n in done.notes)


def test_a_local_is_renamed_and_the_rest_of_the_file_is_untouched():
    src = "def fizz(n):\n    out = []\n    for i in range(n):\n        out.append(i)\n    return out\n\n\nout = 1\n"
    done = rename(target(src, "fizz"), "out", "result")
    assert done.kind == "local" and done.count == 3
    assert done.new_text == src.replace("out", "result").replace("result = 1", "out = 1")


@pytest.mark.parametrize(
    "new, message",
    [
        ("class", "is a Python keyword"),
        ("2x", "not a valid Python name"),
        ("res", r"`res` is already used in `f` \(line 8\)"),
        ("range", "`range` is already used in `f`"),
        ("out", "already has that name"),
    ],
)
def test_refusals_are_one_line_and_change_nothing(new, message):
    with pytest.raises(RenameRefused, match=message) as info:
        rename(target(SCOPES, "f"), "out", new)
    assert "\n" not in str(info.value) and "nothing was changed" in str(info.value)


def test_a_name_that_is_not_the_functions_own_is_refused():
    with pytest.raises(RenameRefused, match="`out` is not a parameter, a local or an attribute of `self` in `h`"):
        rename(target(SCOPES, "h"), "out", "x")
    src = "def g():\n    global total\n    total = 1\n"
    with pytest.raises(RenameRefused, match="`total` is declared global in `g`: it is not its own"):
        rename(target(src, "g"), "total", "t")


def test_a_file_or_line_range_target_finds_the_one_function():
    src = "def a(x):\n    y = x\n    return y\n\n\ndef b(x):\n    return x\n"
    assert "def a(x):\n    z = x\n    return z\n" in rename(target(src), "y", "z").new_text
    with pytest.raises(RenameRefused, match=r"local of several functions \(a, b\); pick one with --symbol"):
        rename(target(src), "x", "v")
    with pytest.raises(RenameRefused, match="also used outside lines 2-2"):
        rename(target(src, lines=(2, 2)), "y", "z")
    assert rename(target(src, lines=(2, 3)), "y", "z").count == 2


SHOP = """class Cart:
    limit = 3

    def __init__(self, items):
        self.items = list(items)
        self.total = 0

    def add(self, x):
        self.items.append(x)
        self.total += x
        return self.total

    def same(self, other):
        return self.total == other.total


def use(c):
    return c.items
"""


def test_an_attribute_of_self_is_renamed_in_the_class():
    src = SHOP.replace("c.items", "c")
    done = rename(target(src.replace("self.total == other.total", "True"), "Cart"), "items", "entries")
    assert done.kind == "attribute" and done.count == 2
    assert "self.entries = list(items)" in done.new_text and "self.entries.append(x)" in done.new_text
    assert "def __init__(self, items):" in done.new_text  # the parameter is another name
    assert rename(target(src, "Cart"), "limit", "max_items").new_text.count("max_items = 3") == 1


def test_an_attribute_is_refused_where_uses_may_be_out_of_sight():
    with pytest.raises(RenameRefused, match=r"`\.items` is also used outside `Cart` \(line 18\)"):
        rename(target(SHOP, "Cart"), "items", "entries")
    with pytest.raises(RenameRefused, match=r"`other\.total` \(line 14\) may be the same attribute"):
        rename(target(SHOP, "Cart"), "total", "sum_")
    with pytest.raises(RenameRefused, match=r"`\.items` is also used outside `add`"):
        rename(target(SHOP.replace("c.items", "c"), "Cart.add"), "items", "entries")
    with pytest.raises(RenameRefused, match=r"`self\.total` is already used"):
        rename(target(SHOP, "Cart"), "limit", "total")


@pytest.mark.parametrize(
    "instruction, intent",
    [
        ("rename out to result", Rename("out", "result")),
        ("Rename the local variable `out` to `result`.", Rename("out", "result")),
        ("rename out as result", Rename("out", "result")),
        ("call out result", Rename("out", "result")),
        ("change the name of out to result", Rename("out", "result")),
        ("out -> result", Rename("out", "result")),
        ("rename parameter n to count", Rename("n", "count")),
        ("rename self.x to self.y", Rename("x", "y", attribute=True)),
        ("add a docstring", AddDocstring()),
        ("document this function", AddDocstring()),
        ("add type hints", AddTypeHints()),
        ("annotate the types", AddTypeHints()),
        ("turn the loop into a list comprehension", ToComprehension()),
        ("extract a constant", ExtractConstant()),
        ("extract the constant 0.08 as TAX_RATE", ExtractConstant("0.08", "TAX_RATE")),
        ('extract "utf-8" into a constant named ENCODING', ExtractConstant('"utf-8"', "ENCODING")),
        ("make it faster", None),
        ("add type hints; use math.pi", None),  # two requests: free text for the model
        ("add a docstring and type hints", None),
        ("rename x to y and add a docstring", None),
    ],
)
def test_instructions_are_recognised(instruction, intent):
    assert recognise(instruction) == intent
