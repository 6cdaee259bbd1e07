"""The workspace cache model through demi-lsp (pytest-lsp, a tiny random-weight model).

A random model never writes a project's own names; the cache, fed by the open documents and the
workspace's files, makes it copy a name the project repeats, and only while `workspaceCache` is on.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import inline_params, open_doc, server_env, start_client, stats, stop_client, tiny_model_dir
from lsprotocol import types as t

pytestmark = pytest.mark.asyncio(loop_scope="module")
CONTEXT = 1024
HELPERS = "".join(
    f"def report_{i}(items):\n    total = frobnicate_widget_total(items, {i})\n    return total\n\n\n" for i in range(4)
)
MAIN = "import helpers\n\n\ndef summary(items):\n    total = "
STORE = "".join(
    f"def limit_{i}(config):\n    limit = zorblax_default_limit(config)\n    return limit\n\n" for i in range(3)
)
LOADER = "def load(config):\n    limit = "


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-workspace-cache")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir):
    model = tiny_model_dir(workdir / "tiny", CONTEXT)
    root = workdir / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "store.py").write_text(STORE, encoding="utf-8")  # on disk only, never opened
    cmd = [sys.executable, "-m", "demi.lsp.server", "--model", str(model), "--context", str(CONTEXT)]
    options = {"maxTokens": 40, "contextTokens": 384, "workspaceCache": False}
    c = await start_client(cmd, server_env(workdir), root, init_options=options)
    yield c
    await stop_client(c)


def configure(client, **settings) -> None:
    client.workspace_did_change_configuration(t.DidChangeConfigurationParams(settings={"demi": settings}))


async def suggestion(client, uri: str, text: str, version: int) -> str:
    """The invoked suggestion at the end of `text`, sent as the document's new version."""
    client.text_document_did_change(
        t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[t.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )
    line = text.count("\n")
    got = await client.text_document_inline_completion_async(inline_params(uri, line, len(text.split("\n")[-1])))
    return got.items[0].insert_text if got.items else ""


async def warmed(client, uri: str, text: str, version: int, **least: int) -> None:
    """Ask once (the cache is fed in the background meanwhile), then wait until it holds `least`."""
    await suggestion(client, uri, text, version)
    for _ in range(200):
        held = (await stats(client))["completions"]["workspace_cache"]
        if all(held.get(key, 0) >= n for key, n in least.items()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the workspace cache never held {least}: {held}")


async def test_an_open_files_name_is_completed_only_with_the_cache(client, workdir):
    root = workdir / "project"
    helpers, main = (root / "helpers.py").as_uri(), (root / "main.py").as_uri()
    open_doc(client, helpers, HELPERS)
    open_doc(client, main, MAIN)
    off = await suggestion(client, main, MAIN, 2)
    assert "frobnicate" not in off
    s = await stats(client)
    assert s["completions"]["workspace_cache"] == {} and s["settings"]["workspace_cache"] is False
    configure(client, workspaceCache=True)
    await asyncio.sleep(0.1)
    await warmed(client, main, "# v3\n" + MAIN, 3, sources=2)  # the first request feeds it in the background
    on = await suggestion(client, main, "# v4\n" + MAIN, 4)  # another state: not the type-through cache's answer
    assert on.startswith("frobnicate_widget_total(items, "), on
    s = await stats(client)
    held = s["completions"]["workspace_cache"]
    assert held["sources"] >= 2 and held["tokens"] > 0 and s["completions"]["last_cache_mixed"] > 5
    configure(client, workspaceCache=False)
    await asyncio.sleep(0.1)
    again = await suggestion(client, main, "# v5\n" + MAIN, 5)
    assert "frobnicate" not in again


async def test_workspace_files_on_disk_are_read_in(client, workdir):
    configure(client, workspaceCache=True)
    await asyncio.sleep(0.1)
    uri = (workdir / "project" / "pkg" / "loader.py").as_uri()
    open_doc(client, uri, LOADER)
    await warmed(client, uri, LOADER, 2, workspaceFiles=1)  # the first request starts reading the workspace
    got = await suggestion(client, uri, "# v3\n" + LOADER, 3)
    assert got.startswith("zorblax_default_limit(config)"), got
    configure(client, workspaceCache=False)
    await asyncio.sleep(0.1)
