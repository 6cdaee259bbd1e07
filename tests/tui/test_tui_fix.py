"""demi-chat's /fix through Pilot: a pasted traceback points at the code, the model's fix is shown as
a diff card (validated like a refactor), Apply writes it and /undo restores it; bad input and a reply
that is no fix are one inline line each, with the file untouched. The engine is test_tui_app's
scripted one (the Engine protocol with a fixed reply)."""

from __future__ import annotations

import pytest
from helpers import CODE
from test_tui_app import SIZE, ScriptedEngine, make_app, notices, send, settle, stored
from test_tui_app import isolated as isolated  # autouse: no user dirs, config or data here either

from demi.tui.widgets import DiffProposal

BROKEN = CODE.replace("return 3.14 * r * r", "return 3.14 * r * radius")
FIXED_AREA = '''def area(r):
    """Area of a circle."""
    if r < 0:
        raise ValueError("negative radius")
    return 3.14 * r * r
'''
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "geometry.py", line 12, in main\n    print(area(2))\n'
    '  File "geometry.py", line 8, in area\n    return 3.14 * r * radius\n'
    "NameError: name 'radius' is not defined"
)


@pytest.fixture()
def broken(tmp_path):
    p = tmp_path / "work" / "geometry.py"
    p.parent.mkdir()
    p.write_text(BROKEN, encoding="utf-8")
    return p


@pytest.mark.asyncio
async def test_fix_a_pasted_traceback_apply_then_undo(tmp_path, broken):
    engine = ScriptedEngine(f"`radius` is undefined; it is `r`:\n\n```python\n{FIXED_AREA}```\n")
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await send(app, pilot, f"/fix geometry.py {TRACEBACK}")
        [card] = app.query(DiffProposal)
        assert "-    return 3.14 * r * radius\n+    return 3.14 * r * r\n" in card.diff and "(area)" in card.title
        assert broken.read_text(encoding="utf-8") == BROKEN  # nothing written before Apply
        asked = engine.prompts[-1].messages[-1]["content"]
        assert "Fix the bug in the function `area`" in asked and "NameError: name 'radius'" in asked
        await pilot.click("#apply")
        await settle(app, pilot)
        assert broken.read_text(encoding="utf-8") == CODE and app.applied == [broken]
        await send(app, pilot, "/undo")
        assert broken.read_text(encoding="utf-8") == BROKEN and "restored" in notices(app)[-1]
    [(session, messages)] = stored(tmp_path)
    assert session.title.startswith("fix geometry.py: NameError")
    assert messages[0].meta["command"] == "fix" and messages[0].meta["target"] == "area"
    assert messages[1].content.startswith("--- a/geometry.py\n+++ b/geometry.py")


@pytest.mark.asyncio
async def test_fix_bad_input_and_a_reply_that_is_no_fix(tmp_path, broken):
    app = make_app(tmp_path, ScriptedEngine("I would rewrite it (but here is no code"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        for text, said in (
            ("/fix", "usage: /fix PATH"),
            ("/fix missing.py boom", "missing.py"),
            ("/fix geometry.py ZeroDivisionError: division by zero", "give PATH:SYMBOL or PATH:A-B"),
            ("/fix geometry.py other.py:3: error: boom", "does not mention"),
        ):
            await send(app, pilot, text)
            assert said in notices(app, "error")[-1], (text, notices(app, "error"))
            assert app.prompt.text == text  # refused: the text stays in the box
            app.prompt.load_text("")
        await send(app, pilot, "/fix geometry.py:area")  # no error text: find the bug in it
        assert "no valid fix found" in notices(app, "error")[-1] and not app.query(DiffProposal)
        assert broken.read_text(encoding="utf-8") == BROKEN
