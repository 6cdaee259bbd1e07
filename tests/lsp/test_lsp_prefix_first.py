"""demi-lsp with a prefix-first (PSM) model: demi-tiny, whose metadata is switched to PSM (it was
trained on both orders). Typing through a suggestion needs no model run, whatever the layout; a
typed character that leaves the suggestion makes a run that moves the suffix's cached rows
(`cacheReuse`, shiftedTokens in demi/stats) instead of recomputing them, unless `cacheReuse` is 0.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from helpers import load_script
from lsp_support import inline_params, open_doc, server_env, start_client, stats, stop_client, type_text
from lsprotocol import types as t

pytestmark = pytest.mark.asyncio(loop_scope="module")
ROOT = Path(__file__).resolve().parents[2]
SOURCE = '''"""Stock levels for a small shop."""

from __future__ import annotations

import json
from pathlib import Path


def load_stock(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {str(name): int(count) for name, count in data.items()}


def save_stock(path: Path, stock: dict[str, int]) -> None:
    text = json.dumps(stock, indent=2, sort_keys=True)
    path.write_text(text + "\\n", encoding="utf-8")


def restock(stock: dict[str, int], name: str, count: int) -> dict[str, int]:
    if count < 0:
        raise ValueError("count must not be negative")
    updated = dict(stock)
    updated[name] = updated.get(name, 0) + count
    return updated


def low_items(stock: dict[str, int], limit: int = 5) -> list[str]:
    return sorted(name for name, count in stock.items() if count < limit)


def total_items(stock: dict[str, int]) -> int:
    return sum(stock.values())


def describe(stock: dict[str, int]) -> str:
    lines = [f"{name}: {count}" for name, count in sorted(stock.items())]
    lines.append(f"total: {total_items(stock)}")
    return "\\n".join(lines)
'''
LINE = 22  # 0-based: `updated = dict(stock)`, with about 150 tokens of code after it


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-psm")


@pytest.fixture(scope="module")
def psm_model(workdir) -> Path:
    """demi-tiny with PSM metadata, made as benchmarks/shifted_reuse.py makes it."""
    return load_script(ROOT / "benchmarks" / "shifted_reuse.py").make_psm(workdir / "demi-tiny-psm")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir, psm_model):
    root = workdir / "project"
    root.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "demi.lsp.server", "--model", str(psm_model)]
    c = await start_client(cmd, server_env(workdir), root, init_options={"maxTokens": 16})
    yield c
    await stop_client(c)


async def _suggest(client, uri: str, line: int, col: int) -> str:
    got = await client.text_document_inline_completion_async(inline_params(uri, line, col))
    return got.items[0].insert_text if got and got.items else ""


async def _ready(client) -> None:
    for _ in range(600):
        if (await stats(client))["status"]["state"] == "ready":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the model did not load")


async def _cut_line(client, workdir: Path, name: str) -> tuple[str, int, int]:
    """A document with line LINE cut after its indentation: (uri, line, column)."""
    lines = SOURCE.split("\n")
    col = len(lines[LINE]) - len(lines[LINE].lstrip())
    lines[LINE] = lines[LINE][:col]
    uri = (workdir / "project" / name).as_uri()
    open_doc(client, uri, "\n".join(lines))
    return uri, LINE, col


async def test_the_server_sees_a_prefix_first_model(client):
    await _ready(client)
    assert (await stats(client))["settings"]["cache_reuse"] == 16


async def test_typing_through_a_suggestion_needs_no_run(client, workdir):
    uri, line, col = await _cut_line(client, workdir, "through.py")
    first = await _suggest(client, uri, line, col)
    assert len(first) >= 2, "demi-tiny suggests something here"
    runs = (await stats(client))["runsStarted"]
    type_text(client, uri, 2, line, col, first[0])
    assert await _suggest(client, uri, line, col + 1) == first[1:]
    assert (await stats(client))["runsStarted"] == runs


@pytest.mark.parametrize("reuse", [16, 0])
async def test_a_character_off_the_suggestion_reuses_the_suffix_shifted_unless_off(client, workdir, reuse):
    client.workspace_did_change_configuration(
        t.DidChangeConfigurationParams(settings={"demi": {"maxTokens": 16, "cacheReuse": reuse}})
    )
    await asyncio.sleep(0.1)
    await _ready(client)  # cacheReuse is an engine setting: the model reloads
    uri, line, col = await _cut_line(client, workdir, f"off{reuse}.py")
    first = await _suggest(client, uri, line, col)
    typed = "Q" if not first.startswith("Q") else "Z"
    type_text(client, uri, 2, line, col, f"{typed}{typed}{typed}")  # a new token ahead of the suffix
    s0 = await stats(client)
    await _suggest(client, uri, line, col + 3)
    s1 = await stats(client)
    assert s1["runsStarted"] == s0["runsStarted"] + 1
    shifted = s1["shiftedTokens"] - s0["shiftedTokens"]
    recomputed = s1["promptTokens"] - s0["promptTokens"] - (s1["cachedTokens"] - s0["cachedTokens"]) - shifted
    if reuse:
        assert shifted > 100 and recomputed < 20, (shifted, recomputed)  # the suffix moved, a few tokens computed
    else:
        assert shifted == 0 and recomputed > 100, (shifted, recomputed)  # the suffix recomputed, exactly
