"""The model's explanation held to the facts (invented or missing parameters, an undescribed
return), flagged in the Markdown; the summary style for small models; and prompts that never
overflow a small context, their own text measured instead of estimated."""

from __future__ import annotations

import pytest
from helpers import CODE, ScriptedServer

from demi.assistant.document import Document
from demi.assistant.engines import open_engine
from demi.assistant.explain import explain, facts_sentence
from demi.assistant.explain_check import check, warnings
from demi.assistant.fix import error_at, locate, propose_fix
from demi.assistant.prompts import explain_prompt, refactor_prompt, summary_prompt
from demi.assistant.refactor import RefactorRejected, propose
from demi.assistant.target import prompt_tokens, resolve_target, target_context

RESERVE = """def reserve(stock, name, count=1):
    available = stock.get(name, 0)
    if count > available:
        raise OutOfStock(name)
    stock[name] = available - count
    return stock[name]
"""


def facts():
    return resolve_target(Document.from_text(RESERVE, "shop.py"), "reserve").facts


@pytest.mark.parametrize(
    "text, invented, unknown, missing, return_missing",
    [
        ("Takes `count` items of `name` out of `stock` and returns what is left.", [], [], [], False),
        ("Reserve a stock of a given name.", [], [], ["count"], True),
        ("Takes the `amount` parameter; uses `quota`.", ["amount"], ["quota"], ["stock", "name", "count"], True),
        ("Gets the stock of name after taking count items.", [], [], [], False),  # "gets": a value comes back
        ("The stock argument and the parameter qty, with name, say how many.", ["qty"], [], ["count"], True),
        ("The parameter determines how many of the stock go.", [], [], ["name", "count"], True),
    ],
)
def test_the_prose_is_checked_against_the_parameters_and_the_return(text, invented, unknown, missing, return_missing):
    found = check(text, facts(), RESERVE)
    assert (found.invented, found.unknown, found.missing, found.return_missing) == (
        invented,
        unknown,
        missing,
        return_missing,
    )
    assert found.consistent == (not (invented or unknown or missing or return_missing))


def test_warnings_name_what_is_wrong():
    f = facts()
    lines = warnings(check("Takes the `amount` parameter.", f, RESERVE), f)
    assert lines == [
        "⚠ the model mentions `amount`, which `reserve` does not take",
        "⚠ the model does not mention `stock`, `name`, `count` (`reserve` takes them)",
        "⚠ the model does not say what `reserve` returns (`return stock[name]`)",
    ]
    cls = resolve_target(Document.from_text("class A:\n    pass\n", "a.py"), "A").facts
    assert not check("Takes `nothing`.", cls).checked and warnings(check("x", cls), cls) == []


def test_the_facts_sentence_names_every_parameter_and_the_return():
    assert facts_sentence(facts()) == (
        "It takes `stock`, `name` and `count`, returns `stock[name]` and raises `OutOfStock`."
    )


def test_a_large_models_prose_is_flagged_in_the_markdown(tmp_path):
    srv = ScriptedServer("It takes the `radius` parameter and draws a circle.")
    try:
        p = tmp_path / "geometry.py"
        p.write_text(CODE, encoding="utf-8")
        res = explain(open_engine("scripted", server=srv.url), Document.load(p), symbol="area")
    finally:
        srv.close()
    assert res.style == "prose" and res.lead == "model"
    md = res.markdown
    flags = md.index("- ⚠ the model mentions `radius`, which `area` does not take")
    assert md.index("It takes the `radius` parameter") < flags < md.index("### Static analysis")
    assert "- ⚠ the model does not mention `r` (`area` takes it)" in md
    assert "- ⚠ the model does not say what `area` returns (`return 3.14 * r * r`)" in md
    j = res.as_json()["consistency"]
    assert j["consistent"] is False and j["invented"] == ["radius"] and j["missing"] == ["r"]


CONTEXT = 1024


@pytest.fixture(scope="module")
def small(tiny_checkpoints):
    """A random model with a 1,024-token context and a byte-level vocabulary: the prompt's own text
    (instructions, chat markup, facts) takes several times the tokens a fixed estimate allowed."""
    return open_engine(str(tiny_checkpoints("qwen2", max_position_embeddings=CONTEXT)), context=CONTEXT)


def long_file() -> Document:
    helpers = "".join(f"def helper_{i}(value):\n    return value + {i}\n\n\n" for i in range(12))
    body = "".join(f"    total += helper_{i % 12}(values[{i}]) * weights[{i}]\n" for i in range(60))
    src = "import math\nimport json\n\n\n" + helpers + "def weighted(values, weights):\n    total = 0\n"
    return Document.from_text(src + body + "    return total\n", "weighted.py")


def test_a_small_models_explanation_is_a_summary_over_the_facts(small):
    doc = Document.from_text(CODE, "geometry.py")
    res = explain(small, doc, symbol="area", max_tokens=8)
    assert res.style == "summary" and res.lead == "facts" and res.completion_tokens <= 8
    assert "_From static analysis:_ It takes `r`, returns `3.14 * r * r` and raises `ValueError`." in res.markdown
    assert res.consistency is not None and not res.consistency.missing and not res.consistency.return_missing


@pytest.mark.parametrize("max_tokens", [48, 320])
def test_prompts_fit_a_small_context_at_the_default_budget(small, max_tokens):
    """The bug: with budget 2048 a fixed 160-token allowance for the prompt's text let the prompt
    grow past a 1,024-token context ("the prompt has 1160 tokens but the context window is 1024")."""
    doc = long_file()
    old_target, _, old_ctx, _ = target_context(small, doc, "weighted", None, max_tokens, 2048)
    old = prompt_tokens(small, explain_prompt(doc.name, "python", old_target.facts, old_ctx))
    assert old + max_tokens > CONTEXT  # the fixed estimate undercounts here

    def frames(language="python"):
        yield lambda f, c: explain_prompt(doc.name, language, f, c)
        yield lambda f, c: summary_prompt(doc.name, f.kind, "weighted", c.code, language)
        yield lambda f, c: refactor_prompt(doc.name, language, f, c, "add type hints")

    for frame in frames():
        target, _, ctx, _ = target_context(small, doc, "weighted", None, max_tokens, 2048, frame)
        assert prompt_tokens(small, frame(target.facts, ctx)) + max_tokens <= CONTEXT
    res = explain(small, doc, symbol="weighted", max_tokens=max_tokens, style="prose")
    assert res.prompt_tokens + max_tokens <= CONTEXT and "code was cut" in res.markdown


def test_refactor_and_fix_never_overflow_a_small_context(small):
    doc = long_file()
    with pytest.raises(RefactorRejected) as rejected:  # noise from a random model, never an overflow
        propose(small, doc, "make it shorter", lines=(50, 60), max_tokens=48, candidates=1)
    assert "context window" not in str(rejected.value)
    report = error_at("weighted.py", 55, "NameError: name 'helper_99' is not defined")
    site = locate(report, doc, lines=(50, 60))
    try:
        result = propose_fix(small, doc, report, site, max_tokens=48)
        assert result.prompt_tokens + 48 <= CONTEXT
    except RefactorRejected as exc:
        assert "context window" not in str(exc)
