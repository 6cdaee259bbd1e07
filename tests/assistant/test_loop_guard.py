"""The loop guard on chat answers and explanations: real looping answers of demi-tiny are stopped
and cut after the first copy (what was streamed is exactly what is kept), and normal prose with
repeated words, alike bullets, tables and code passes untouched and nearly unheld."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import looping_checkpoint

from demi.assistant.chat import chat, load_mentions
from demi.assistant.document import Document
from demi.assistant.engines import open_engine
from demi.assistant.explain import explain
from demi.assistant.loop_guard import AnswerLoopGuard, loop_end
from demi.model.cancel import CancelToken

ROOT = Path(__file__).resolve().parents[2]
DATA = json.loads((Path(__file__).with_name("loop_answers.json")).read_text(encoding="utf-8"))
GOLDEN = DATA["cases"]


def stream(text: str, piece: int = 3, guard: AnswerLoopGuard | None = None) -> tuple[AnswerLoopGuard, str, str]:
    """Feed `text` as a model streams it; (guard, what was shown, the kept answer)."""
    shown: list[str] = []
    guard = guard or AnswerLoopGuard(shown.append)
    for i in range(0, len(text), piece):
        guard.push(text[i : i + piece])
        if guard.token.cancelled:
            break
    answer = guard.finish(text)
    return guard, "".join(shown), answer


@pytest.mark.parametrize("case", GOLDEN, ids=[c["prompt"] for c in GOLDEN])
def test_real_demi_tiny_loops_are_stopped_and_cut(case):
    guard, shown, answer = stream(case["raw"])
    assert guard.looped and guard.token.cancelled
    assert len(guard.text) < 0.6 * len(case["raw"])  # decoding stopped well before the token cap
    assert answer == case["answer"] and shown == answer
    assert guard.finish_reason("cancelled") == "loop"
    assert answer.count("```") % 2 == 0  # the code fence the loop left open is closed
    assert loop_end(answer) is None


def test_golden_answers_keep_one_copy_of_the_repeats():
    by_prompt = {c["prompt"]: c["answer"] for c in GOLDEN}
    assert by_prompt["Write a function that sorts a list."].endswith(
        '    if name is None:\n        name = name.split(".")\n```'
    )
    assert by_prompt["Write a function that sorts a list."].count("if name is None") == 1
    reserve = by_prompt["What does @examples/inventory.py:reserve do?"]
    assert reserve.endswith(":param stock: The stock of the stock\n```") and "stock of the stock of" not in reserve
    tree = by_prompt["What is a binary search tree?"]
    assert tree.count("is not shown") == 1 and "if force and force" not in tree  # stopped in the docstring
    assert tree.endswith("is not shown, the user's own machine is shown.\n```")


@pytest.mark.parametrize("case", GOLDEN, ids=[c["prompt"] for c in GOLDEN])
def test_a_whole_looping_text_loses_its_tail(case):
    """Not streamed (a server's whole answer): the looping tail is cut all the same."""
    answer = AnswerLoopGuard().finish(case["raw"])
    assert len(answer) < len(case["raw"]) // 2 and loop_end(answer) is None
    assert case["raw"].startswith(answer.removesuffix("\n```"))


PROSE = {
    "bullets": "`reserve` takes items out of the stock.\n\n"
    "- `stock`: the stock, a dict of name to count\n"
    "- `name`: the item to take\n"
    "- `count`: how many to take\n"
    "- `count`: again, how many to take\n\n"
    "It raises `ValueError` when there are not enough items, and returns what is left.\n",
    "repeated words": "It is very, very, very, very simple: it checks the name, then the count, then the name, "
    "then the count, then the name again. Yes, yes, yes: the stock of the stock of the shop is a dict.",
    "table": "| name | count |\n| --- | --- |\n| apples | 1 |\n| pears | 2 |\n| plums | 3 |\n| figs | 4 |\n\n"
    "That is all.",
    "checklist": "To do:\n\n- [ ] read\n- [ ] test\n- [ ] fix\n- [ ] ship\n- [ ] read\n- [ ] test\n\nDone.",
    "code": "Like this:\n\n```python\nGRID = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\nstock['apples'] = 1\n"
    "stock['pears'] = 2\nstock['plums'] = 3\n# ==================================\n```\n\nEach line sets one count.",
    "rules and emphasis": "**Note:** the count is *not* checked.\n\n---\n\n**Note:** the name is *not* checked.\n\n"
    "---\n\n**Note:** nothing is checked.",
    "short answer": "No, no, no.",
}
# demi-tiny's real answers and explanations that ended on their own (the capture of loop_answers.json)
PROSE.update({f"demi-tiny: {k['prompt']}": k["answer"] for k in DATA["kept"]})


@pytest.mark.parametrize("name", list(PROSE))
def test_normal_prose_is_kept_whole(name):
    text = PROSE[name]
    for piece in (1, 4):
        held = []
        shown: list[str] = []
        guard = AnswerLoopGuard(shown.append)
        for i in range(0, len(text), piece):
            guard.push(text[i : i + piece])
            held.append(len(guard.text) - guard.sent)
        assert not guard.looped and not guard.token.cancelled
        assert guard.finish(text) == text and "".join(shown) == text
        assert guard.finish_reason("stop") == "stop"
        assert max(held) <= 40, (name, max(held))  # streaming is barely delayed


def test_the_callers_cancel_passes_through_and_keeps_its_reason():
    caller = CancelToken()
    guard = AnswerLoopGuard(None, caller)
    guard.push("The answer")
    assert not guard.token.cancelled
    caller.cancel()
    assert guard.token.cancelled
    guard, _, _ = stream(GOLDEN[0]["raw"], guard=AnswerLoopGuard(None, caller))
    assert guard.finish_reason("cancelled") == "cancelled"


# -- through the real engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demi_tiny():
    return open_engine("demi-tiny", quant="none")


def test_demi_tiny_chat_stops_at_its_loop(demi_tiny):
    """The chat that ran to 512 tokens ("the stock of the stock of ...") now stops early."""
    text = "What does @examples/inventory.py:reserve do?"
    shown: list[str] = []
    result = chat(demi_tiny, [], text, load_mentions(text, ROOT), max_tokens=512, on_text=shown.append)
    assert result.finish_reason == "loop" and result.completion_tokens < 256
    assert "".join(shown).strip() == result.text and loop_end(result.text) is None


def test_a_looping_explanation_is_stopped_and_says_so(tmp_path):
    """A model that loops at once on every CPU: explain stops it, and the streamed Markdown is the result's."""
    engine = open_engine(str(looping_checkpoint(tmp_path / "looping")), quant="none")
    shown: list[str] = []
    doc = Document.load(ROOT / "examples" / "inventory.py")
    result = explain(engine, doc, "reserve", max_tokens=300, on_text=shown.append)
    assert result.finish_reason == "loop" and result.completion_tokens < 300
    assert "".join(shown) == result.markdown
    assert "the model started repeating itself; the repeats were cut" in result.notes
    assert loop_end(result.model_text) is None
    assert result.model_text.count("the stock of") == 1  # the first copy is kept, the repeats are cut
