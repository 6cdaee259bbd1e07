"""Refactors by static analysis (comprehensions, constants, type hints, docstring skeletons), the
model only where the facts stop (a scripted server writes the docstring's summary), and the
refactor's candidates: the first valid reply kept, each checked against the instruction."""

from __future__ import annotations

import pytest
from helpers import ScriptedServer

from demi.assistant.annotate import add_docstring, add_type_hints, clean_summary, clean_type
from demi.assistant.document import Document
from demi.assistant.engines import EngineInfo, open_engine
from demi.assistant.instructions import AddDocstring, AddTypeHints, Rename, ToComprehension
from demi.assistant.mechanical import done
from demi.assistant.refactor import RefactorRejected, needs_model, propose
from demi.assistant.rename import RenameRefused
from demi.assistant.static_rewrites import NotApplicable, extract_constant, loops_to_comprehensions
from demi.assistant.target import resolve_target
from demi.model.engine import Completion

LOOPS = """import json


def fizzbuzz(n):
    out = []
    for i in range(1, n + 1):
        if i % 15 == 0:
            out.append("FizzBuzz")
        elif i % 3 == 0:
            out.append("Fizz")
        else:
            out.append(str(i))
    return out


def shapes(xs, limit=10):
    result: list[int] = []
    for x in xs:
        if x > 3:
            if x < limit:
                result.append(x * x)
    d = {}
    for k, v in xs.items():
        d[k] = v
    s = set()
    for a in xs:
        for b in a:
            s.add(b)
    return result, d, s


def keeps_x(xs):
    out = []
    for x in xs:
        out.append(x)
    return out, x


def reads_acc(xs):
    out = []
    for x in xs:
        out.append(len(out) + x)
    return out


def has_else(xs):
    out = []
    for x in xs:
        out.append(x)
    else:
        pass
    return out


def price(total):
    if total > 100:
        return total * 0.92
    return total * 0.92 + 4.99
"""


def target(symbol=None, text=LOOPS, lines=None):
    return resolve_target(Document.from_text(text, "shop.py"), symbol, lines)


def body(text: str, name: str) -> str:
    start = text.index(f"def {name}(")
    return text[start:].split("\n\n\n")[0]


def test_loops_that_only_fill_a_collection_become_comprehensions():
    fizz = loops_to_comprehensions(target("fizzbuzz")).new_text
    assert body(fizz, "fizzbuzz") == (
        "def fizzbuzz(n):\n"
        "    out = [\n"
        '        ("FizzBuzz" if i % 15 == 0 else "Fizz" if i % 3 == 0 else str(i))\n'
        "        for i in range(1, n + 1)\n"
        "    ]\n"
        "    return out"
    )
    made = loops_to_comprehensions(target("shapes"))
    assert body(made.new_text, "shapes") == (
        "def shapes(xs, limit=10):\n"
        "    result: list[int] = [x * x for x in xs if x > 3 if x < limit]\n"
        "    d = {k: v for k, v in xs.items()}\n"
        "    s = {b for a in xs for b in a}\n"
        "    return result, d, s"
    )
    assert made.notes == ["rewrote 3 loops as comprehensions by static analysis"]
    assert done(ToComprehension(), target("shapes"), made.new_text) is None


@pytest.mark.parametrize(
    "name, why",
    [
        ("keeps_x", r"`x` is used after the loop \(line 36\)"),
        ("reads_acc", "the loop reads `out` while it fills it"),
        ("has_else", "no loop in has_else that only fills"),
        ("price", "no loop in price"),
    ],
)
def test_a_loop_whose_meaning_would_change_is_left_alone(name, why):
    with pytest.raises(NotApplicable, match=why):
        loops_to_comprehensions(target(name))


def test_a_constant_is_extracted_to_module_level_after_the_imports():
    made = extract_constant(target("price"))
    assert made.new_text.startswith("import json\n\nPRICE_FACTOR = 0.92\n\n\ndef fizzbuzz(n):")
    assert "        return total * PRICE_FACTOR\n    return total * PRICE_FACTOR + 4.99" in made.new_text
    assert "0.92 (2 occurrences)" in made.notes[0] and "derived from where the value is used" in made.notes[1]
    named = extract_constant(target("price"), "4.99", "SHIPPING").new_text
    assert "SHIPPING = 4.99\n" in named and "return total * 0.92 + SHIPPING" in named
    assert "DEFAULT_LIMIT = 10" in extract_constant(target("shapes")).new_text  # a parameter's default
    with pytest.raises(NotApplicable, match="3.5 does not appear"):
        extract_constant(target("price"), "3.5")
    with pytest.raises(RenameRefused, match="`json` is already used"):
        extract_constant(target("price"), None, "json")
    no_imports = "def area(r):\n    return 3.14159 * r * r\n"
    assert extract_constant(target("area", no_imports)).new_text == (
        "AREA_FACTOR = 3.14159\n\n\ndef area(r):\n    return AREA_FACTOR * r * r\n"
    )


HINTS = """from pathlib import Path


def scale(values, factor=2, name=None, *rest):
    if name.startswith("x"):
        return None
    return [v * factor for v in values]


def fizz(n):
    out = []
    for i in range(1, n + 1):
        out.append(str(i))
    return out


def area(r):
    if r < 0:
        raise ValueError("negative radius")
    return 3.14 * r * r


def describe(p: Path, verbose):
    print(p)
"""


def test_type_hints_come_from_defaults_uses_and_returns():
    fizz = add_type_hints(None, target("fizz", HINTS))
    assert "def fizz(n: int) -> list[str]:" in fizz.new_text and fizz.model_parts == []
    assert "`n: int` (used in `range(1, n + 1)`)" in fizz.notes[0]
    assert "def area(r: float) -> float:" in add_type_hints(None, target("area", HINTS)).new_text
    scaled = add_type_hints(None, target("scale", HINTS))
    assert "def scale(values, factor: int = 2, name: str | None = None, *rest) -> list | None:" in scaled.new_text
    assert "no hint for `values`" in scaled.notes[-1]  # no model here, and nothing in the code tells
    described = add_type_hints(None, target("describe", HINTS)).new_text
    assert "def describe(p: Path, verbose) -> None:" in described
    assert done(AddTypeHints(), target("fizz", HINTS), fizz.new_text) is None


def test_a_models_type_is_kept_only_when_the_file_can_name_it():
    allowed = {"int", "str", "list", "dict", "None", "Path"}
    assert clean_type(" dict[str, int]) -> None:", allowed) == "dict[str, int]"
    assert clean_type("Path | None = None", allowed) == "Path | None"
    assert clean_type("n) -> str:", allowed) is None  # not a type
    assert clean_type("Any) -> str:", allowed) is None  # not imported in this file
    assert clean_type("values: list", allowed, "values") is None


SUMMARY = "Take `count` items of `name` out of the stock."


@pytest.fixture(scope="module")
def summary_server():
    srv = ScriptedServer(SUMMARY)
    yield srv
    srv.close()


def test_a_docstring_is_the_models_summary_over_the_facts(summary_server):
    src = """class OutOfStock(Exception):
    pass


def reserve(stock: dict[str, int], name: str, count: int = 1) -> int:
    available = stock.get(name, 0)
    if count > available:
        raise OutOfStock(name)
    stock[name] = available - count
    return stock[name]
"""
    engine = open_engine("scripted", server=summary_server.url)
    made = add_docstring(engine, target("reserve", src))
    assert body(made.new_text, "reserve").split("    available")[0] == (
        "def reserve(stock: dict[str, int], name: str, count: int = 1) -> int:\n"
        f'    """{SUMMARY}\n'
        "\n"
        "    Args:\n"
        "        stock (dict[str, int]):\n"
        "        name (str):\n"
        "        count (int): Defaults to `1`.\n"
        "\n"
        "    Returns:\n"
        "        int: `stock[name]`.\n"
        "\n"
        "    Raises:\n"
        "        OutOfStock: If `count > available`.\n"
        '    """\n'
    )
    assert made.model_parts == [SUMMARY] and "written by the model `scripted`" in made.notes[0]
    asked = summary_server.requests[-1]["messages"][-1]["content"]
    assert asked.startswith("What does the function `reserve` do? Answer in one sentence.")
    assert done(AddDocstring(), target("reserve", src), made.new_text) is None
    with pytest.raises(NotApplicable, match="already has a docstring"):
        add_docstring(engine, target("reserve", made.new_text))


def test_a_summary_must_be_a_sentence_about_the_code():
    facts = target("fizz", HINTS).facts
    assert clean_summary("fizz.", facts, "") is None  # too short to say anything
    assert clean_summary("Returns the strings of `count` numbers.", facts, "def fizz(n):") is None  # `count`: invented
    assert clean_summary("- build the list of numbers as strings", facts, "") == "Build the list of numbers as strings."


class Replies:
    """The engine interface answering `chat` with the next scripted reply (the model's part of a refactor)."""

    def __init__(self, *replies: str, parameters: int = 1_000_000):
        self.replies, self.parameters, self.asked = list(replies), parameters, 0

    def info(self) -> EngineInfo:
        return EngineInfo("replies", "in-process", 4096, self.parameters)

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4 if text else 0

    def chat(self, prompt, on_text=None, sampling=None, **_):
        reply = self.replies[min(self.asked, len(self.replies) - 1)]
        self.asked += 1
        assert (sampling is None) == (self.asked == 1)  # greedy first, then sampled
        return Completion(reply, [1, 2, 3], 10, "stop", 0.01, 0.0)


def test_candidates_keep_the_first_reply_that_parses_and_does_what_was_asked():
    src = "def add(a, b):\n    return a + b\n"
    doc = Document.from_text(src, "m.py")
    engine = Replies(
        "```python\ndef add(a, b:\n```",  # does not parse
        "```python\ndef add(a, b):\n    return b + a\n```",  # parses, but adds no hint
        "```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```",
        parameters=10**9,  # a large model: hints are its to write
    )
    result = propose(engine, doc, "add type hints", "add", candidates=3)
    assert result.tries == 3 and result.method == "the model" and engine.asked == 3
    assert "+def add(a: int, b: int) -> int:" in result.diff
    with pytest.raises(RefactorRejected, match=r"no valid rewrite from the model \(1 try\): .*does not parse"):
        propose(Replies("```python\ndef add(a, b:\n```"), doc, "make it shorter", "add", candidates=1)


def test_a_small_models_rename_and_rewrites_need_no_model():
    doc = Document.from_text(LOOPS, "shop.py")
    assert not needs_model(doc, "rename out to result", "fizzbuzz")
    assert not needs_model(doc, "use a list comprehension", "fizzbuzz")
    assert not needs_model(doc, "rename out to class", "fizzbuzz")  # refused: no model either
    assert needs_model(doc, "use a list comprehension", "price")  # no such loop: the model's turn
    assert needs_model(doc, "add a docstring", "fizzbuzz")
    result = propose(None, doc, "rename out to result", "fizzbuzz")
    assert result.method == "static analysis" and result.model == "static analysis (no model)" and result.tries == 0
    assert done(Rename("out", "result"), target("fizzbuzz"), result.edit.new) is None
    with pytest.raises(RenameRefused, match="is a Python keyword"):
        propose(None, doc, "rename out to class", "fizzbuzz")
    with pytest.raises(Exception, match="needs a model"):
        propose(None, doc, "use a list comprehension", "price")


def test_the_command_line_renames_without_loading_a_model(tmp_path):
    """`demi refactor -i "rename out to result"` with demi-tiny failed ("the rewrite does not parse");
    now no model is loaded at all (a model path that does not exist is never opened)."""
    from helpers import clean_env, demi

    p = tmp_path / "fizz.py"
    p.write_text(LOOPS, encoding="utf-8")
    env = clean_env(tmp_path / "home")
    proc = demi(
        env, "refactor", p, "-s", "fizzbuzz", "-i", "rename out to result", "--model", tmp_path / "none", "--apply"
    )
    assert proc.returncode == 0, proc.stderr
    assert "renamed 5 occurrences of `out` in `fizzbuzz` by static analysis" in proc.stderr
    assert body(p.read_text(encoding="utf-8"), "fizzbuzz").count("result") == 5 and "out" not in body(
        p.read_text(encoding="utf-8"), "fizzbuzz"
    )
    refused = demi(env, "refactor", p, "-s", "fizzbuzz", "-i", "rename result to str", "--model", tmp_path / "none")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "`str` is already used in `fizzbuzz`" in refused.stderr
