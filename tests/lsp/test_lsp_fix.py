""" "Fix with Demi": the quick fix demi-lsp offers on the diagnostics an editor sends, end to end
through a real LSP client (pytest-lsp) and the real server. The model is a scripted
OpenAI-compatible server (tests/helpers.py) that sends back the fix a capable model would, so the
whole path is real: the code action, its resolve, `demi.fix`, the session layer's validation and
`workspace/applyEdit`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_asyncio
from helpers import ScriptedServer
from lsp_support import open_doc, server_env, start_client, stop_client
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

pytestmark = pytest.mark.asyncio(loop_scope="module")

BUGGY = '''import math


def area(r):
    """Area of a circle."""
    return math.pi * r * radius


def main():
    print(area(2))
'''
FIXED = '''def area(r):
    """Area of a circle."""
    return math.pi * r * r
'''
UNDEFINED = t.Diagnostic(
    range=t.Range(t.Position(5, 25), t.Position(5, 31)),
    message="undefined name 'radius'",
    severity=t.DiagnosticSeverity.Error,
    source="pyflakes",
    code="F821",
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-fix")


@pytest.fixture(scope="module")
def model_server():
    srv = ScriptedServer(f"`radius` is not defined; the parameter is `r`:\n\n```python\n{FIXED}```\n")
    yield srv
    srv.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(workdir, model_server):
    command = [sys.executable, "-m", "demi.lsp.server", "--server", model_server.url]
    c = await start_client(command, server_env(workdir), workdir, init_options={"maxTokens": 16})
    yield c
    await stop_client(c)


def actions_params(uri: str, diagnostics: list[t.Diagnostic], only: list[str] | None = None) -> t.CodeActionParams:
    return t.CodeActionParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        range=t.Range(t.Position(5, 26), t.Position(5, 26)),
        context=t.CodeActionContext(diagnostics=diagnostics, only=only),
    )


async def test_fix_with_demi_is_offered_on_diagnostics_and_applies(client, workdir, model_server):
    uri = (workdir / "geometry.py").as_uri()
    open_doc(client, uri, BUGGY, version=3)
    plain = await client.text_document_code_action_async(actions_params(uri, []))
    assert "Fix with Demi" not in [a.title for a in plain]  # no diagnostic, no quick fix
    actions = await client.text_document_code_action_async(actions_params(uri, [UNDEFINED]))
    [fix] = [a for a in actions if a.title == "Fix with Demi"]
    assert fix.kind == t.CodeActionKind.QuickFix and fix.command is None
    assert [d.message for d in fix.diagnostics] == ["undefined name 'radius'"]
    only_fixes = await client.text_document_code_action_async(
        actions_params(uri, [UNDEFINED], only=[t.CodeActionKind.QuickFix])
    )
    assert [a.title for a in only_fixes] == ["Fix with Demi"]
    only_refactors = await client.text_document_code_action_async(
        actions_params(uri, [UNDEFINED], only=[t.CodeActionKind.Refactor])
    )
    assert "Fix with Demi" not in [a.title for a in only_refactors]

    resolved = await client.code_action_resolve_async(fix)
    assert resolved.command.command == "demi.fix" and resolved.command.arguments[0] == uri
    assert resolved.command.arguments[2] == "undefined name 'radius' (pyflakes F821)"
    assert [d.severity for d in resolved.diagnostics] == [t.DiagnosticSeverity.Error]
    n = len(client.applied)
    result = await client.workspace_execute_command_async(
        t.ExecuteCommandParams(command="demi.fix", arguments=resolved.command.arguments)
    )
    assert result["applied"] is True and result["target"] == "area"
    assert "-    return math.pi * r * radius\n+    return math.pi * r * r\n" in result["diff"]
    change = client.applied[n].edit.document_changes[0]
    assert change.text_document.version == 3 and change.text_document.uri == uri
    assert change.edits[0].new_text == "    return math.pi * r * r\n" and change.edits[0].range.start.line == 5
    asked = model_server.requests[-1]["messages"][-1]["content"]
    assert "Fix the bug in the function `area`" in asked and "undefined name 'radius' (pyflakes F821)" in asked


async def test_fix_command_bad_arguments_are_errors(client, workdir):
    uri = (workdir / "geometry.py").as_uri()
    with pytest.raises(JsonRpcException, match="needs the range"):
        await client.workspace_execute_command_async(t.ExecuteCommandParams(command="demi.fix", arguments=[uri]))
    far = {"start": {"line": 99, "character": 0}, "end": {"line": 99, "character": 1}}
    with pytest.raises(JsonRpcException, match="past the end"):
        await client.workspace_execute_command_async(
            t.ExecuteCommandParams(command="demi.fix", arguments=[uri, far, "boom"])
        )
