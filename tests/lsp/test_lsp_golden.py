"""Golden post-processing fixtures through the language server.

Each case in test_lsp_golden.json is a file with a cursor, what a model wrote there (`raw`), and
what the editor must get (`expected`): the suffix overlap trimmed, the block ended, repeats
dropped, brackets closed. The scripted engine replays `raw`, so this checks the whole path
from the LSP request through `demi.assistant.complete` to the item's text and range.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import inline_params, open_doc, scripted_command, server_env, start_client, stop_client
from lsprotocol import types as t

pytestmark = pytest.mark.asyncio(loop_scope="module")
CASES = json.loads((Path(__file__).parent / "test_lsp_golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-golden")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir):
    script = workdir / "script.json"
    script.write_text(json.dumps([{"when": c["before"], "raw": c["raw"]} for c in CASES]), encoding="utf-8")
    c = await start_client(scripted_command(), server_env(workdir, DEMI_TEST_SCRIPT=str(script)), workdir)
    yield c
    await stop_client(c)


def _position(before: str) -> t.Position:
    lines = before.split("\n")
    return t.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
async def test_golden(client, workdir, case):
    uri = (workdir / case["file"]).as_uri()
    language = "javascript" if case["file"].endswith(".js") else "python"
    open_doc(client, uri, case["before"] + case["after"], language=language)
    pos = _position(case["before"])
    result = await client.text_document_inline_completion_async(inline_params(uri, pos.line, pos.character))
    assert [i.insert_text for i in result.items] == [case["expected"]]
    assert result.items[0].range == t.Range(pos, pos)
    fallback = await client.text_document_completion_async(
        t.CompletionParams(text_document=t.TextDocumentIdentifier(uri=uri), position=pos)
    )
    edit = fallback.items[0].text_edit
    word = edit.new_text[: len(edit.new_text) - len(case["expected"])]
    assert edit.new_text == word + case["expected"] and case["before"].endswith(word)
