"""demi-lsp as Helix 25.07 sees it: a client with Helix's capabilities (no window/showDocument,
no window/showMessageRequest; code actions resolved, commands' answers and errors dropped).

Helix cannot be installed from a package registry here, so this drives the real server (scripted
engine, tests/lsp/lsp_support.py) with the initialize capabilities Helix 25.07.1 sends
(helix-lsp/src/client.rs, `Client::initialize`), and does what Helix does with code actions:
resolve the chosen one, then run its command and ignore the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_asyncio
from lsp_support import open_doc, scripted_command, server_env, start_client, stop_client, type_text
from lsprotocol import types as t
from pygls.exceptions import JsonRpcException

from demi.lsp.actions import SUGGESTED_INSTRUCTIONS

pytestmark = pytest.mark.asyncio(loop_scope="module")

CODE = """import os


def add(a, b):
    return a + b


class Box:
    def grow(self, by):
        return by
"""


def helix_capabilities() -> t.ClientCapabilities:
    """What Helix 25.07.1 says about itself in `initialize` (the parts Demi reads)."""
    return t.ClientCapabilities(
        workspace=t.WorkspaceClientCapabilities(
            configuration=True,
            did_change_configuration=t.DidChangeConfigurationClientCapabilities(dynamic_registration=False),
            workspace_folders=True,
            apply_edit=True,
            execute_command=t.ExecuteCommandClientCapabilities(dynamic_registration=False),
            workspace_edit=t.WorkspaceEditClientCapabilities(
                document_changes=True,
                resource_operations=[
                    t.ResourceOperationKind.Create,
                    t.ResourceOperationKind.Rename,
                    t.ResourceOperationKind.Delete,
                ],
                failure_handling=t.FailureHandlingKind.Abort,
                normalizes_line_endings=False,
            ),
        ),
        text_document=t.TextDocumentClientCapabilities(
            completion=t.CompletionClientCapabilities(
                completion_item=t.ClientCompletionItemOptions(
                    snippet_support=True,
                    insert_replace_support=True,
                    deprecated_support=True,
                    resolve_support=t.ClientCompletionItemResolveOptions(
                        properties=["documentation", "detail", "additionalTextEdits"]
                    ),
                    tag_support=t.CompletionItemTagOptions(value_set=[t.CompletionItemTag.Deprecated]),
                ),
                completion_item_kind=t.ClientCompletionItemOptionsKind(),
            ),
            hover=t.HoverClientCapabilities(content_format=[t.MarkupKind.Markdown]),
            code_action=t.CodeActionClientCapabilities(
                code_action_literal_support=t.ClientCodeActionLiteralOptions(
                    code_action_kind=t.ClientCodeActionKindOptions(
                        value_set=[
                            "",
                            "quickfix",
                            "refactor",
                            "refactor.extract",
                            "refactor.inline",
                            "refactor.rewrite",
                            "source",
                            "source.organizeImports",
                        ]
                    )
                ),
                is_preferred_support=True,
                disabled_support=True,
                data_support=True,
                resolve_support=t.ClientCodeActionResolveOptions(properties=["edit", "command"]),
            ),
            publish_diagnostics=t.PublishDiagnosticsClientCapabilities(version_support=True),
        ),
        window=t.WindowClientCapabilities(work_done_progress=True),  # no showMessage, no showDocument
        general=t.GeneralClientCapabilities(
            position_encodings=[t.PositionEncodingKind.Utf8, t.PositionEncodingKind.Utf32, t.PositionEncodingKind.Utf16]
        ),
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp-helix")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def helix(workdir):
    script = workdir / "script.json"
    script.write_text(json.dumps([]), encoding="utf-8")
    env = server_env(workdir, DEMI_TEST_SCRIPT=str(script))
    c = await start_client(scripted_command(), env, workdir, init_options={"maxTokens": 48}, caps=helix_capabilities())
    yield c
    await stop_client(c)


def at(line: int, character: int) -> dict:
    return {"start": {"line": line, "character": character}, "end": {"line": line, "character": character}}


async def code_actions(client, uri: str, line: int, character: int) -> list[t.CodeAction]:
    pos = t.Position(line, character)
    return await client.text_document_code_action_async(
        t.CodeActionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            range=t.Range(pos, pos),
            context=t.CodeActionContext(diagnostics=[]),
        )
    )


async def run_like_helix(client, action: t.CodeAction) -> None:
    """Resolve, then run the command; Helix logs an error and drops an answer."""
    resolved = await client.code_action_resolve_async(action)
    assert resolved.edit is None and resolved.command is not None
    try:
        await client.workspace_execute_command_async(
            t.ExecuteCommandParams(command=resolved.command.command, arguments=resolved.command.arguments)
        )
    except JsonRpcException:
        pass


async def hover(client, uri: str, line: int, character: int) -> t.Hover | None:
    return await client.text_document_hover_async(
        t.HoverParams(text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line, character))
    )


async def test_refactor_is_one_code_action_per_instruction(helix, workdir):
    uri = (workdir / "actions.py").as_uri()
    open_doc(helix, uri, CODE)
    actions = await code_actions(helix, uri, 4, 4)
    titles = [a.title for a in actions]
    assert titles == ["Demi: Explain"] + [f"Demi: {i}" for i in SUGGESTED_INSTRUCTIONS]
    assert all(a.command is None and a.edit is None for a in actions)  # resolved when chosen
    resolved = await helix.code_action_resolve_async(actions[2])
    assert resolved.title == "Demi: Add a docstring (`add`)"
    assert resolved.command.command == "demi.refactor" and resolved.command.arguments[2] == "Add a docstring"
    assert resolved.kind == t.CodeActionKind.RefactorRewrite


async def test_a_chosen_instruction_applies_through_workspace_apply_edit(helix, workdir):
    uri = (workdir / "apply.py").as_uri()
    open_doc(helix, uri, CODE, version=3)
    n = len(helix.applied)
    action = (await code_actions(helix, uri, 4, 4))[1]
    # the scripted model renames when told to; Helix would send the action's own instruction
    action.data["instruction"] = "rename a to first"
    await run_like_helix(helix, action)
    change = helix.applied[n].edit.document_changes[0]
    assert change.text_document.uri == uri and change.text_document.version == 3
    assert "def add(first, b):" in change.edits[0].new_text and "return first + b" in change.edits[0].new_text


async def test_an_instruction_that_changes_nothing_says_so(helix, workdir):
    uri = (workdir / "same.py").as_uri()
    open_doc(helix, uri, CODE)
    n, m = len(helix.applied), len(helix.messages)
    action = next(a for a in await code_actions(helix, uri, 4, 4) if a.title == "Demi: Add type hints")
    await run_like_helix(helix, action)  # the scripted model gives the code back unchanged
    assert len(helix.applied) == n
    said = [x for x in helix.messages[m:] if x.type == t.MessageType.Warning]
    assert said and said[-1].message.startswith("Demi: nothing applied") and "unchanged" in said[-1].message


async def test_refactor_without_instruction_fails_where_helix_shows_it(helix, workdir):
    uri = (workdir / "noask.py").as_uri()
    open_doc(helix, uri, CODE)
    m = len(helix.messages)
    with pytest.raises(JsonRpcException, match="cannot ask for one"):
        await helix.workspace_execute_command_async(
            t.ExecuteCommandParams(command="demi.refactor", arguments=[uri, at(4, 4)])
        )
    errors = [x for x in helix.messages[m:] if x.type == t.MessageType.Error]
    assert errors and "cannot ask for one" in errors[-1].message


async def test_explanation_is_shown_on_hover(helix, workdir):
    uri = (workdir / "explain.py").as_uri()
    open_doc(helix, uri, CODE, version=1)
    assert await hover(helix, uri, 4, 8) is None  # nothing explained yet: no answer, no model run
    m = len(helix.messages)
    action = (await code_actions(helix, uri, 4, 8))[0]
    resolved = await helix.code_action_resolve_async(action)
    assert resolved.title == "Demi: Explain `add`"
    markdown = await helix.workspace_execute_command_async(
        t.ExecuteCommandParams(command=resolved.command.command, arguments=resolved.command.arguments)
    )
    assert not helix.shown_documents  # never sent to a client that did not offer it
    told = helix.messages[m:]
    assert told and "hover" in told[-1].message and "`add`" in told[-1].message
    saved = Path(told[-1].message.rsplit("also in ", 1)[1])
    assert saved.read_text(encoding="utf-8") == markdown

    shown = await hover(helix, uri, 4, 8)
    assert shown is not None and shown.contents.kind == t.MarkupKind.Markdown and shown.contents.value == markdown
    assert await hover(helix, uri, 8, 8) is None  # Box.grow was not explained
    # two lines typed above `add`: the explanation follows the symbol
    type_text(helix, uri, 2, 1, 0, "X = 1\nY = 2\n")
    moved = await hover(helix, uri, 6, 8)
    assert moved is not None and moved.contents.value == markdown
    assert await hover(helix, uri, 4, 0) is None
