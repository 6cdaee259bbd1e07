"""`SlashCommands`: what each /command does (the table of names, usage and help is commands.py).

Why a dispatcher by name (`cmd_NAME`): the table and the behaviour stay in step, and an unknown
or misspelt command gets a hint instead of going to the model as a message. Commands that start
an answer or touch files hand over to `CodeTasks`; session commands to `Sessions`.
"""

from __future__ import annotations

from demi.tui import commands as cmds
from demi.tui.labels import one_line
from demi.tui.part import AppPart
from demi.tui.widgets import HelpNotice


class SlashCommands(AppPart):
    """One `cmd_NAME(rest, raw)` per command: `rest` is the text after the name, `raw` the whole line
    (what goes into the box's Up history once the command is accepted)."""

    async def run(self, name: str, rest: str, raw: str) -> None:
        """Run /name; an unknown one is an error line with the commands it may have meant."""
        handler = getattr(self, f"cmd_{name}", None)
        if handler is None or name not in cmds.BY_NAME:
            close = [c.name for c in cmds.COMMANDS if c.name.startswith(name[:2])] if name else []
            hint = f" (did you mean {', '.join('/' + c for c in close)}?)" if close else ""
            await self.app.say(
                f"unknown command /{name}{hint}; /help lists them. Start with // to send a message that begins with /.",
                "error",
            )
            return
        await handler(rest, raw)

    # -- the screen --------------------------------------------------------------------------------

    async def cmd_help(self, rest: str, raw: str) -> None:
        self.app.submitter.accept(raw)
        await self.app.mount_in_log(HelpNotice(cmds.help_markdown()))

    async def cmd_quit(self, rest: str, raw: str) -> None:
        await self.app.action_quit()

    async def cmd_copy(self, rest: str, raw: str) -> None:
        self.app.submitter.accept(raw)
        self.app.action_copy_code()

    # -- sessions ----------------------------------------------------------------------------------

    async def cmd_new(self, rest: str, raw: str) -> None:
        if await self.app.submitter.refuse_busy():
            return
        self.app.submitter.accept(raw)
        await self.app.sessions.new_session()

    async def cmd_sessions(self, rest: str, raw: str) -> None:
        self.app.submitter.accept(raw)
        self.app.action_toggle_sidebar()

    async def cmd_search(self, rest: str, raw: str) -> None:
        self.app.submitter.accept(raw)
        self.app.show_sidebar(True)
        self.app.search_box.value = rest
        self.app.sessions.search(rest)

    async def cmd_rename(self, rest: str, raw: str) -> None:
        app = self.app
        if not rest:
            await app.say("usage: /rename TITLE", "error")
            return
        app.submitter.accept(raw)
        app.history.rename(app.conv, rest)
        await app.say(f"renamed this session to {rest!r}")
        app.sessions.refresh()

    async def cmd_delete(self, rest: str, raw: str) -> None:
        app = self.app
        if await app.submitter.refuse_busy():
            return
        app.submitter.accept(raw)
        if app.conv.session_id is None:
            await app.sessions.new_session()
            return
        app.sessions.ask_delete(app.conv.session_id, app.conv.title)

    # -- the model ---------------------------------------------------------------------------------

    async def cmd_model(self, rest: str, raw: str) -> None:
        """/model: what is loaded (and what else is here); /model NAME [QUANT] or /model QUANT: switch."""
        app = self.app
        loader = app.loader
        words = rest.split()
        if not words:
            app.submitter.accept(raw)
            d = loader.details
            now = (
                (
                    f"using {d.model} ({d.kind}, {d.quant or 'server'}, {d.device or d.url or ''}, context "
                    f"{d.context or 'unknown'})"
                )
                if d
                else "no model loaded"
            )
            await app.say(f"{now}. Switch with /model NAME [none|int8|int4|nf4|auto] or /model QUANT.")
            self.thread_worker("models", self._list_models_in_thread)
            return
        if await app.submitter.refuse_busy():
            return
        if loader.loading:
            await app.say("a model is still loading: switch when it is ready", "warning")
            return
        quant = words[-1].lower() if words[-1].lower() in cmds.QUANTS else None
        name = " ".join(words[:-1] if quant else words) or loader.current_model
        quant = quant or loader.current_quant
        if app.config["server"] and quant not in (None, "none"):
            await app.say("with a server the quantization is the server's choice; switching the model only", "warning")
            quant = None
        app.submitter.accept(raw)
        loader.ready.clear()
        loader.loading = True
        app.status.set(state=f"loading {name or 'the default model'}…")
        await app.say(f"loading {name or 'the default model'}" + (f" ({quant})" if quant else "") + "…")
        loader.load(name, quant)

    def _list_models_in_thread(self) -> None:
        app = self.app
        try:
            from demi.assistant.catalog import list_models

            found = list_models()
        except Exception as exc:  # listing is a convenience
            app.from_thread(app.say, f"cannot list models: {one_line(exc)}", "warning")
            return
        names = [m["name"] for m in found.get("builtin", [])] + [m["name"] for m in found.get("hub_cache", [])]
        text = (
            ("models here: " + ", ".join(names))
            if names
            else "no built-in or cached models found; /model takes a model directory or a hub id too"
        )
        app.from_thread(app.say, text)

    # -- explain, refactor and edits ---------------------------------------------------------------

    async def cmd_explain(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.explain(rest, raw)

    async def cmd_refactor(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.refactor(rest, raw)

    async def cmd_fix(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.fix(rest, raw)

    async def cmd_apply(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.decide_pending(raw, True)

    async def cmd_reject(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.decide_pending(raw, False)

    async def cmd_undo(self, rest: str, raw: str) -> None:
        await self.app.code_tasks.undo(rest, raw)
