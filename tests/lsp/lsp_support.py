"""Shared pieces of the language server tests (tests/lsp/test_lsp_*.py).

Run as a program, this starts `demi-lsp` with a *scripted* engine in place of a model, so the
protocol tests are fast and exact: what the "model" writes, how long each token takes and
whether it saw a cancellation are all known. Everything else (settings, debounce, cache,
cancellation plumbing, post-processing from `demi.assistant.complete`, code actions, progress)
is the real server. The scripted engine reads:

    DEMI_TEST_SCRIPT     JSON file: [{"when": TEXT, "raw": TEXT}, ...]; a FIM request whose prefix
                         ends with `when` (longest first) gets `raw` as the model's output
    DEMI_TEST_DELAY_MS   seconds per token x1000 (default 1)
    DEMI_TEST_LOG        JSON-lines file: one line per run (kind, tokens, reason, cancelled)

The model tests use a real tiny random model instead (`tiny_model_dir`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types as t

HERE = Path(__file__).resolve().parent
DEFAULT_RAW = "value = 42\n"
EXPLANATION = "It adds two numbers and returns the sum. " * 3


class ScriptedEngine:
    """The engine interface of demi.assistant.engines, with scripted output."""

    def __init__(self, settings: Any = None):
        self.name = "scripted"
        self.delay = float(os.environ.get("DEMI_TEST_DELAY_MS", "1")) / 1000
        self.log_path = os.environ.get("DEMI_TEST_LOG")
        script = os.environ.get("DEMI_TEST_SCRIPT")
        rules = json.loads(Path(script).read_text(encoding="utf-8")) if script else []
        self.rules = sorted(rules, key=lambda r: -len(r["when"]))

    # -- the interface ----------------------------------------------------------------------------------

    def info(self) -> Any:
        from demi.assistant.engines import EngineInfo

        return EngineInfo("scripted", "in-process", 4096, 1_000_000_000, "scripted", True, False)

    def count_tokens(self, text: str) -> int:
        return (len(text) + 3) // 4 if text else 0

    def infill(
        self,
        ctx: Any,
        on_text: Callable[[str], None] | None = None,
        max_new_tokens: int = 64,
        stop: list[str] | None = None,
        cancel: Any = None,
        time_budget: float | None = None,
        **_: Any,
    ) -> Any:
        raw, delay = DEFAULT_RAW, self.delay
        for rule in self.rules:
            if ctx.prefix.endswith(rule["when"]):
                raw, delay = rule["raw"], rule.get("delay_ms", delay * 1000) / 1000
                break
        return self._emit("infill", raw, on_text, max_new_tokens, stop, cancel, time_budget, delay)

    def chat(
        self,
        prompt: Any,
        on_text: Callable[[str], None] | None = None,
        max_new_tokens: int = 256,
        cancel: Any = None,
        time_budget: float | None = None,
        stop: list[str] | None = None,
        **_: Any,
    ) -> Any:
        user = prompt.messages[-1]["content"]
        if user.startswith("Rewrite"):
            m = re.search(r"instruction: (.*)", user)
            instruction = m.group(1).strip() if m else ""
            code = re.search(r"The code to rewrite:\n(`{3,})[^\n]*\n(.*?)\n\1", user, re.S)
            body = code.group(2) if code else ""
            # ("write Y for every X": the same rewrite, phrased so the server's static rename does
            # not take it and the model's rewrite path is what the tests drive)
            ren = re.match(r"rename (\w+) to (\w+)", instruction)
            swap = re.match(r"write (\w+) for every (\w+)", instruction)
            if swap:
                body = re.sub(rf"\b{swap.group(2)}\b", swap.group(1), body)
            if ren:
                body = re.sub(rf"\b{ren.group(1)}\b", ren.group(2), body)
            raw = f"```python\n{body}\n```\n"
        else:
            raw = EXPLANATION
        delay = float(os.environ.get("DEMI_TEST_CHAT_DELAY_MS", "1")) / 1000
        if "slowly" in user:  # an instruction or a file that asks for a slow answer
            delay = 0.05
        return self._emit("chat", raw, on_text, max_new_tokens, stop, cancel, time_budget, delay)

    def close(self) -> None:
        pass

    # -- streaming ------------------------------------------------------------------------------------

    def _emit(
        self,
        kind: str,
        raw: str,
        on_text: Callable[[str], None] | None,
        max_new_tokens: int,
        stop: list[str] | None,
        cancel: Any,
        time_budget: float | None,
        delay: float,
    ) -> Any:
        from demi.model.engine import Completion

        started = time.monotonic()
        pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)][:max_new_tokens]
        text, reason, n = "", "length" if len(raw) > 3 * max_new_tokens else "stop", 0
        for piece in pieces:
            if cancel is not None and cancel.cancelled:
                reason = "cancelled"
                break
            if time_budget and time.monotonic() - started > time_budget:
                reason = "time"
                break
            time.sleep(delay)
            n += 1
            cut = min((i for i in ((text + piece).find(s) for s in (stop or []) if s) if i >= 0), default=-1)
            if cut >= 0:
                piece = (text + piece)[len(text) : cut]
                text += piece
                if piece and on_text:
                    on_text(piece)
                reason = "stop"
                break
            text += piece
            if on_text:
                on_text(piece)
        self._log(
            {
                "kind": kind,
                "tokens": n,
                "of": len(pieces),
                "reason": reason,
                "seconds": round(time.monotonic() - started, 4),
            }
        )
        return Completion(text, [0] * n, 100, reason, time.monotonic() - started)

    def _log(self, entry: dict[str, Any]) -> None:
        if self.log_path:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- what a test client says about itself ------------------------------------------------------------


def capabilities(resolve: bool = True, progress: bool = True, show_document: bool = True) -> t.ClientCapabilities:
    """A capable client (VS Code-like): inline completion, resolve, progress, applyEdit, configuration."""
    return t.ClientCapabilities(
        workspace=t.WorkspaceClientCapabilities(
            apply_edit=True,
            configuration=True,
            workspace_edit=t.WorkspaceEditClientCapabilities(document_changes=True),
            did_change_configuration=t.DidChangeConfigurationClientCapabilities(dynamic_registration=False),
            execute_command=t.ExecuteCommandClientCapabilities(),
        ),
        text_document=t.TextDocumentClientCapabilities(
            synchronization=t.TextDocumentSyncClientCapabilities(),
            completion=t.CompletionClientCapabilities(completion_item=t.ClientCompletionItemOptions()),
            inline_completion=t.InlineCompletionClientCapabilities(),
            code_action=t.CodeActionClientCapabilities(
                code_action_literal_support=t.ClientCodeActionLiteralOptions(
                    code_action_kind=t.ClientCodeActionKindOptions(
                        value_set=["", "quickfix", "refactor", "refactor.rewrite", "source"]
                    )
                ),
                data_support=resolve,
                resolve_support=t.ClientCodeActionResolveOptions(properties=["edit", "command"]) if resolve else None,
            ),
        ),
        window=t.WindowClientCapabilities(
            work_done_progress=progress,
            show_message=t.ShowMessageRequestClientCapabilities(),
            show_document=t.ShowDocumentClientCapabilities(support=show_document),
        ),
    )


def server_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The server's environment: nothing from the user's own config, data or a running demi serve."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMI_")}
    env.update(
        {
            "DEMI_CONFIG": str(tmp / "no-config.toml"),
            "DEMI_DATA_DIR": str(tmp / "data"),
            "DEMI_LSP_NO_PROBE": "1",
            "DEMI_THREADS": "2",
        }
    )
    env.update(extra)
    return env


def scripted_command() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve())]


def open_doc(client: Any, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(
        t.DidOpenTextDocumentParams(
            text_document=t.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)
        )
    )


def type_text(client: Any, uri: str, version: int, line: int, character: int, text: str) -> None:
    """An incremental didChange inserting `text` (one line) at line:character."""
    pos = t.Position(line=line, character=character)
    client.text_document_did_change(
        t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[t.TextDocumentContentChangePartial(range=t.Range(pos, pos), text=text)],
        )
    )


def inline_params(uri: str, line: int, character: int, invoked: bool = True) -> t.InlineCompletionParams:
    kind = t.InlineCompletionTriggerKind.Invoked if invoked else t.InlineCompletionTriggerKind.Automatic
    return t.InlineCompletionParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        position=t.Position(line=line, character=character),
        context=t.InlineCompletionContext(trigger_kind=kind),
    )


def tiny_model_dir(out: Path, context: int = 1024) -> Path:
    """A random-weight qwen2 with demi-tiny's byte-level tokenizer and FIM tokens (built once per dir)."""
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    sys.path.insert(0, str(HERE.parent))
    from hf_models import save_family
    from tokenizers_fixture import make_bytelevel_tokenizer

    save_family("qwen2", out, max_position_embeddings=context)
    make_bytelevel_tokenizer(out)
    return out


# -- a test client ------------------------------------------------------------------------------------


async def start_client(
    cmd: list[str],
    env: dict[str, str],
    root: Path,
    init_options: Any = None,
    caps: t.ClientCapabilities | None = None,
    refactor_choice: str | None = "Add a docstring",
    configuration: dict[str, Any] | None = None,
    apply_edit: Callable[[t.ApplyWorkspaceEditParams], t.ApplyWorkspaceEditResult] | None = None,
    ask_delay_s: float = 0.0,
) -> Any:
    """A pytest-lsp client attached to a fresh server, initialized; it records demi/status,
    workspace/applyEdit and window/showMessageRequest. `apply_edit` answers applyEdit (default:
    applied, without touching any text); `ask_delay_s` is how long a showMessageRequest waits for its answer."""
    from pytest_lsp.client import make_test_lsp_client

    client = make_test_lsp_client()
    client.statuses = []
    client.applied = []
    client.asked = []
    if configuration is not None:
        client.set_configuration(configuration, section="demi")

    @client.feature("demi/status")
    def _status(ls: Any, params: Any) -> None:
        client.statuses.append(params)

    @client.feature(t.WORKSPACE_APPLY_EDIT)
    def _apply(ls: Any, params: t.ApplyWorkspaceEditParams) -> t.ApplyWorkspaceEditResult:
        client.applied.append(params)
        return apply_edit(params) if apply_edit is not None else t.ApplyWorkspaceEditResult(applied=True)

    @client.feature(t.WINDOW_SHOW_MESSAGE_REQUEST)
    async def _ask(ls: Any, params: t.ShowMessageRequestParams) -> t.MessageActionItem | None:
        client.asked.append(params)
        if ask_delay_s:
            await asyncio.sleep(ask_delay_s)
        return t.MessageActionItem(title=refactor_choice) if refactor_choice else None

    await client.start_io(*cmd, env=env)
    await client.initialize_session(
        t.InitializeParams(
            capabilities=caps or capabilities(),
            root_uri=root.as_uri(),
            initialization_options=init_options,
            workspace_folders=[t.WorkspaceFolder(uri=root.as_uri(), name=root.name)],
        )
    )
    return client


async def stop_client(client: Any) -> int | None:
    try:
        await client.shutdown_session()
    finally:
        await client.stop()
    return client._server.returncode if client._server is not None else None


async def stats(client: Any) -> dict[str, Any]:
    """demi/stats as plain JSON (pygls hands back attribute objects for custom requests)."""
    result = await client.protocol.send_request_async("demi/stats", {})
    return to_plain(result)


def to_plain(value: Any) -> Any:
    if hasattr(value, "_asdict"):
        return {k: to_plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


if __name__ == "__main__":
    from demi.lsp.server import main

    raise SystemExit(main(sys.argv[1:], engine_factory=ScriptedEngine))
