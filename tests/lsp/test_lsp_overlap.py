"""demi-lsp in the middle of a line, end to end (pytest-lsp, scripted engine): a suggestion that
rewrites the text right of the cursor comes with a range through that text; one that only
repeats it is not offered; typing into a replacing suggestion keeps its range from the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import (
    inline_params,
    open_doc,
    scripted_command,
    server_env,
    start_client,
    stats,
    stop_client,
    type_text,
)
from lsprotocol import types as t

from demi.lsp.cache import CompletionCache

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOOP = "def each(items):\n    "
RETURN = "def back(s):\n    "
SAME = "def same(s):\n    "
WIDE = "def wide(s):\n    x = "
CRLF = "def crlf(s):\r\n    "
PAIR = "def pair(v):\n    bar("
RULES = [
    {"when": LOOP, "raw": "for item in items:\n"},
    {"when": RETURN, "raw": "return s\n"},
    {"when": SAME, "raw": "return s\n"},
    {"when": WIDE, "raw": "a🙂b + 1\n"},
    {"when": CRLF, "raw": "return s\n"},
    {"when": PAIR, "raw": "foo(v)\n"},
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-overlap")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir):
    script = workdir / "script.json"
    script.write_text(json.dumps(RULES), encoding="utf-8")
    c = await start_client(scripted_command(), server_env(workdir, DEMI_TEST_SCRIPT=str(script)), workdir)
    yield c
    await stop_client(c)


def _range(line: int, start: int, end: int) -> t.Range:
    return t.Range(t.Position(line, start), t.Position(line, end))


async def _inline(client, workdir: Path, name: str, text: str, line: int, col: int) -> t.InlineCompletionList:
    uri = (workdir / name).as_uri()
    open_doc(client, uri, text)
    return await client.text_document_inline_completion_async(inline_params(uri, line, col))


async def test_a_rewrite_of_the_line_replaces_it(client, workdir):
    result = await _inline(client, workdir, "loop.py", LOOP + "for it in items:\n        pass\n", 1, 4)
    assert [i.insert_text for i in result.items] == ["for item in items:"]
    assert result.items[0].range == _range(1, 4, 20)  # through "for it in items:"


async def test_an_extension_replaces_what_it_extends(client, workdir):
    result = await _inline(client, workdir, "back.py", RETURN + "return \n", 1, 4)
    assert [i.insert_text for i in result.items] == ["return s"]
    assert result.items[0].range == _range(1, 4, 11)  # no "return sreturn "


async def test_the_completion_fallback_gets_the_same_range(client, workdir):
    uri = (workdir / "loop2.py").as_uri()
    open_doc(client, uri, LOOP + "for it in items:\n        pass\n")
    result = await client.text_document_completion_async(
        t.CompletionParams(text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(1, 4))
    )
    edit = result.items[0].text_edit
    assert edit.new_text == "for item in items:" and edit.range == _range(1, 4, 20)


async def test_a_repeat_is_not_offered(client, workdir):
    result = await _inline(client, workdir, "same.py", SAME + "return s\n", 1, 4)
    assert list(result.items) == []


async def test_the_range_is_in_utf16_units(client, workdir):
    result = await _inline(client, workdir, "wide.py", WIDE + "a🙂b\n", 1, 8)
    assert [i.insert_text for i in result.items] == ["a🙂b + 1"]
    assert result.items[0].range == _range(1, 8, 12)  # "a🙂b" is 4 UTF-16 units


async def test_crlf_lines_end_before_the_carriage_return(client, workdir):
    result = await _inline(client, workdir, "crlf.py", CRLF + "return \r\nx = 1\r\n", 1, 4)
    assert [i.insert_text for i in result.items] == ["return s"]
    assert result.items[0].range == _range(1, 4, 11)


async def test_an_auto_paired_closer_stays_after_a_call_the_suggestion_closes(client, workdir):
    result = await _inline(client, workdir, "pair.py", PAIR + ")\n", 1, 8)
    assert [i.insert_text for i in result.items] == ["foo(v)"]
    assert result.items[0].range == _range(1, 8, 8)  # bar(foo(v)) once accepted


async def test_typing_into_a_replacing_suggestion_keeps_its_range(client, workdir):
    uri = (workdir / "typed.py").as_uri()
    open_doc(client, uri, RETURN + "return \n")
    first = await client.text_document_inline_completion_async(inline_params(uri, 1, 4))
    assert first.items[0].range == _range(1, 4, 11)
    before = await stats(client)
    type_text(client, uri, 2, 1, 4, "r")  # the line is now "    rreturn "
    res = await client.text_document_inline_completion_async(inline_params(uri, 1, 5, invoked=False))
    assert [i.insert_text for i in res.items] == ["eturn s"]
    assert res.items[0].range == _range(1, 5, 12)
    after = await stats(client)
    assert after["runsStarted"] == before["runsStarted"] and after["cacheHits"] == before["cacheHits"] + 1


async def test_cache_entries_remember_the_replacement():
    cache = CompletionCache()
    cache.put("u", "    ", "return \n", "return s", 7)
    hit = cache.get("u", "    ret", "return \n")
    assert hit is not None and (hit.text, hit.replace, hit.typed) == ("urn s", 7, 3)
    # something the editor inserted after the cursor meanwhile: not the text the entry replaces
    assert cache.get("u", "    ret", ")return \n") is None
    # an insertion-only entry still replaces brackets the editor auto-closed
    cache.put("u", "x = ", ")\n", "foo(y)")
    hit = cache.get("u", "x = foo(", "))\n")
    assert hit is not None and (hit.text, hit.replace) == ("y)", 1)
