"""`CodeTasks`: /explain, /refactor, /fix and what follows a rewrite: apply, reject, /undo.

Why they sit together: they act on the user's files. A file or symbol is resolved before the
model is asked (`load_target`), a rewrite is only ever a proposal on screen (`DiffProposal`), and
nothing is written without an explicit apply, which keeps a backup that /undo restores.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from demi.assistant.chat import TargetSpec, Turn, attachment_context, load_attachment, parse_target, session_title
from demi.assistant.errors import DemiUserError
from demi.tui import commands as cmds
from demi.tui.jobs import Job
from demi.tui.labels import fmt_speed, one_line
from demi.tui.part import AppPart
from demi.tui.widgets import DiffProposal, UserMessage

if TYPE_CHECKING:
    from demi.tui.app import DemiChat


def load_target(spec_text: str, root: Path, max_bytes: int) -> tuple[TargetSpec, Any, Any]:
    """(spec, document, target) for PATH[:SYMBOL|:A-B]; user errors raise, worded for the screen."""
    from demi.assistant.document import Document
    from demi.assistant.target import resolve_target

    spec = parse_target(spec_text, root)
    path = Path(spec.path).expanduser()
    path = path if path.is_absolute() else root / path
    try:
        doc = Document.load(path, max_bytes=max_bytes)
        target = resolve_target(doc, spec.symbol, spec.lines)
    except DemiUserError as exc:
        message = str(exc)
        if message.startswith(f"{path}: "):
            message = message[len(f"{path}: ") :]
        raise DemiUserError(f"{spec.label}: {message}") from None
    return spec, doc, target


class CodeTasks(AppPart):
    """Explain and refactor answers (thread workers, group "engine"); apply and undo (group "edits")."""

    def __init__(self, app: DemiChat) -> None:
        super().__init__(app)
        self.proposal: DiffProposal | None = None  # the refactor that /apply and /reject decide
        self.applied: list[Path] = []  # files changed in this run, newest last (what /undo restores)

    def shown_path(self, path: Path | str) -> str:
        """A path as the user would type it: relative to the working folder when inside it."""
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.app.root.resolve()))
        except ValueError:
            return str(p)

    async def _failed(self, job: Job, error: str) -> None:
        await self.app.say(error, "error")
        await self.app.answers.end(job, "failed" + (" (what arrived is kept)" if job.text.strip() else ""), ok=False)

    # -- /explain ----------------------------------------------------------------------------------

    async def explain(self, rest: str, raw: str) -> None:
        """/explain PATH[:SYMBOL|:A-B]: a streamed explanation, saved with the file's text as context."""
        app = self.app
        if not rest:
            await app.say("usage: " + cmds.BY_NAME["explain"].usage, "error")
            return
        if await app.submitter.refuse_busy():
            return
        try:
            spec, doc, _ = load_target(rest, app.root, app.max_bytes)
        except DemiUserError as exc:
            await app.say(one_line(exc), "error")
            return
        doc.path = Path(spec.path)  # shown as typed (explain never writes, so the full path is not needed)
        app.submitter.accept(raw)
        if not app.conv.session_id and not app.conv.title:
            app.conv.title = session_title(f"explain {spec.label}")
        job = await app.answers.start("explain", UserMessage(f"/explain {spec.label}"), app.loader.who("explain"), None)
        self.thread_worker("engine", self._explain_in_thread, job, spec, doc)

    def _engine_for(self, job: Job) -> Any:
        """The engine once it has loaded (in a worker thread), or None with the job marked failed."""
        app = self.app
        engine = app.loader.wait_for_engine(job)
        if engine is None:
            app.from_thread(self._failed, job, app.loader.engine_error or "stopped before the model was ready")
        return engine

    def _explain_in_thread(self, job: Job, spec: TargetSpec, doc: Any) -> None:
        from demi.assistant.explain import explain

        app = self.app
        save = app.answers.save
        engine = self._engine_for(job)
        if engine is None:
            return
        cfg = app.config
        try:
            result = explain(
                engine,
                doc,
                spec.symbol,
                spec.lines,
                max_tokens=int(cfg["explain.max_tokens"]),
                budget=int(cfg["explain.context_tokens"]),
                lead=cfg["explain.lead"],
                on_text=job.push,
                cancel=job.cancel,
            )
        except Exception as exc:  # shown inline; what arrived stays
            app.from_thread(self._failed, job, one_line(exc))
            return
        meta = {"command": "explain", "path": spec.path, "symbol": result.symbol, "lines": list(result.lines)}
        try:
            att = load_attachment(spec, app.root, app.max_bytes)
            context = attachment_context([att], engine.count_tokens, int(cfg["chat.context_tokens"]) // 3)
        except DemiUserError:
            context = ""
        save(job.conv, "user", f"/explain {spec.label}", meta=dict(meta, context=context))
        save(
            job.conv,
            "assistant",
            result.markdown,
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            seconds=round(result.seconds, 4),
            meta=dict(meta, finish_reason=result.finish_reason),
        )
        turn = Turn(
            "user", f"Explain `{spec.path}`" + (f" › `{result.symbol}`" if result.symbol else "") + ".", context
        )
        app.from_thread(self._explained, job, turn, result)

    async def _explained(self, job: Job, turn: Turn, result: Any) -> None:
        app = self.app
        if job.conv is app.conv:
            app.turns += [turn, Turn("assistant", result.markdown)]
        tps = result.completion_tokens / result.seconds if result.seconds > 0 and result.completion_tokens else None
        stopped = "stopped · " if result.finish_reason == "cancelled" else ""
        await app.answers.end(job, stopped + fmt_speed(result.completion_tokens, tps), replace=result.markdown)
        app.answers.show_speed(
            result.completion_tokens,
            tps,
            result.prompt_tokens + result.completion_tokens,
            app.loader.details.context if app.loader.details else None,
        )

    # -- /refactor ---------------------------------------------------------------------------------

    async def refactor(self, rest: str, raw: str) -> None:
        """/refactor PATH[:SYMBOL] INSTRUCTION: the model's rewrite, shown as a diff to apply or reject."""
        app = self.app
        parts = rest.split(None, 1)
        if len(parts) < 2 or not parts[1].strip():
            await app.say("usage: " + cmds.BY_NAME["refactor"].usage + " (say what to change)", "error")
            return
        if await app.submitter.refuse_busy():
            return
        try:
            spec, doc, target = load_target(parts[0], app.root, app.max_bytes)
        except DemiUserError as exc:
            await app.say(one_line(exc), "error")
            return
        instruction = parts[1].strip()
        app.submitter.accept(raw)
        if not app.conv.session_id and not app.conv.title:
            app.conv.title = session_title(f"refactor {spec.label}: {instruction}")
        job = await app.answers.start(
            "refactor",
            UserMessage(f"/refactor {spec.label} {instruction}"),
            app.loader.who(f"rewriting {target.label}"),
            None,
        )
        self.thread_worker("engine", self._refactor_in_thread, job, spec, doc, instruction)

    def _refactor_in_thread(self, job: Job, spec: TargetSpec, doc: Any, instruction: str) -> None:
        from demi.assistant.refactor import propose

        app = self.app
        save = app.answers.save
        engine = self._engine_for(job)
        if engine is None:
            return
        cfg = app.config
        meta = {
            "command": "refactor",
            "path": spec.path,
            "symbol": spec.symbol,
            "lines": list(spec.lines) if spec.lines else None,
            "instruction": instruction,
        }
        save(job.conv, "user", f"/refactor {spec.label} {instruction}", meta=meta)
        try:
            result = propose(
                engine,
                doc,
                instruction,
                spec.symbol,
                spec.lines,
                max_tokens=int(cfg["refactor.max_tokens"]),
                budget=int(cfg["refactor.context_tokens"]),
                cancel=job.cancel,
                on_text=job.push,
            )
        except Exception as exc:  # a rejected rewrite: the reason, and the file untouched
            save(
                job.conv,
                "assistant",
                f"(no change: {one_line(exc)})",
                model=getattr(engine, "name", None),
                meta=dict(meta, rejected=True),
            )
            app.from_thread(self._failed, job, one_line(exc))
            return
        shown = self._display_diff(result)
        save(
            job.conv,
            "assistant",
            shown or "(no change)",
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            seconds=round(result.seconds, 4),
            meta=dict(meta, applied=False),
        )
        app.from_thread(self._proposed, job, result, shown)

    def _display_diff(self, result: Any) -> str:
        from dataclasses import replace

        from demi.assistant.edits import unified_diff

        return unified_diff(replace(result.edit, path=Path(self.shown_path(result.path)))) if result.diff else ""

    async def _proposed(self, job: Job, result: Any, shown: str) -> None:
        app = self.app
        tps = result.completion_tokens / result.seconds if result.seconds > 0 and result.completion_tokens else None
        await app.answers.end(job, "rewrite: " + fmt_speed(result.completion_tokens, tps))
        job.widget.fold()  # the diff below shows what matters
        if job.conv is app.conv:
            app.turns += [
                Turn("user", f"Rewrite `{self.shown_path(result.path)}` ({result.target})."),
                Turn("assistant", shown or "(no change)"),
            ]
        card = DiffProposal(
            f"proposed change to {self.shown_path(result.path)} ({result.target})", shown, result.notes, result
        )
        if self.proposal is not None and self.proposal.resolved is None:
            self.proposal.resolve("superseded by a newer proposal")
        self.proposal = card if result.edit.changed else None
        await app.mount_in_log(card)
        app.answers.show_speed(
            result.completion_tokens,
            tps,
            result.prompt_tokens + result.completion_tokens,
            app.loader.details.context if app.loader.details else None,
        )

    # -- /fix --------------------------------------------------------------------------------------

    async def fix(self, rest: str, raw: str) -> None:
        """/fix PATH[:SYMBOL|:A-B] [ERROR]: the model's fix of the code the error points at (or of the
        symbol or lines named), validated like a refactor and shown as a diff to apply or reject."""
        from demi.assistant.fix import locate, parse_error

        app = self.app
        parts = rest.split(None, 1)
        if not parts:
            await app.say("usage: " + cmds.BY_NAME["fix"].usage + " (paste the error after the path)", "error")
            return
        if await app.submitter.refuse_busy():
            return
        error = parts[1].strip() if len(parts) > 1 else ""
        try:
            spec, doc, _ = load_target(parts[0], app.root, app.max_bytes)
            report = parse_error(error)
            site = locate(report, doc, spec.symbol, spec.lines, root=app.root, how="PATH:SYMBOL or PATH:A-B")
        except DemiUserError as exc:
            await app.say(one_line(exc), "error")
            return
        app.submitter.accept(raw)
        asked = f"/fix {spec.label}" + (f" {report.summary}" if report.summary else "")
        if not app.conv.session_id and not app.conv.title:
            app.conv.title = session_title(f"fix {spec.label}: {report.summary}")
        job = await app.answers.start("fix", UserMessage(asked), app.loader.who(f"fixing {site.label}"), None)
        self.thread_worker("engine", self._fix_in_thread, job, spec, doc, report, site, asked)

    def _fix_in_thread(self, job: Job, spec: TargetSpec, doc: Any, report: Any, site: Any, asked: str) -> None:
        from demi.assistant.fix import propose_fix

        app = self.app
        save = app.answers.save
        engine = self._engine_for(job)
        if engine is None:
            return
        cfg = app.config
        meta = {"command": "fix", "path": spec.path, "target": site.label, "error": report.text}
        save(job.conv, "user", asked, meta=meta)
        try:
            result = propose_fix(
                engine,
                doc,
                report,
                site,
                max_tokens=int(cfg["refactor.max_tokens"]),
                budget=int(cfg["refactor.context_tokens"]),
                cancel=job.cancel,
                on_text=job.push,
            )
        except Exception as exc:  # no valid fix: the reason, and the file untouched
            save(job.conv, "assistant", f"(no fix: {one_line(exc)})", model=getattr(engine, "name", None), meta=meta)
            app.from_thread(self._failed, job, one_line(exc))
            return
        shown = self._display_diff(result)
        save(
            job.conv,
            "assistant",
            shown,
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            seconds=round(result.seconds, 4),
            meta=dict(meta, applied=False),
        )
        app.from_thread(self._proposed, job, result, shown)

    # -- apply, reject, undo -----------------------------------------------------------------------

    async def decide_pending(self, raw: str, apply: bool) -> None:
        """/apply or /reject: decide the proposal waiting on screen."""
        if self.proposal is None or self.proposal.resolved is not None:
            await self.app.say(
                "no proposed change is waiting (/refactor PATH[:SYMBOL] INSTRUCTION or /fix PATH ERROR makes one)",
                "error",
            )
            return
        self.app.submitter.accept(raw)
        await self.decide(self.proposal, apply)

    async def decide(self, card: DiffProposal, apply: bool) -> None:
        """Reject a proposal (nothing written), or apply it in a thread worker (group "edits")."""
        if card.resolved is not None:
            return
        if not apply:
            card.resolve("rejected: nothing was written")
            self.app.answers.save(self.app.conv, "note", f"rejected the change to {self.shown_path(card.result.path)}")
            if self.proposal is card:
                self.proposal = None
            return
        card.resolve("applying…")
        self.thread_worker("edits", self._apply_in_thread, card)

    def _apply_in_thread(self, card: DiffProposal) -> None:
        from demi.assistant.refactor import apply

        app = self.app
        try:
            result = apply(card.result, app.data_dir, root=app.root)
        except Exception as exc:  # a conflict or an unwritable file: shown, nothing half-written
            app.from_thread(self._applied, card, None, one_line(exc))
            return
        app.from_thread(self._applied, card, result, None)

    async def _applied(self, card: DiffProposal, result: Any, error: str | None) -> None:
        app = self.app
        if self.proposal is card:
            self.proposal = None
        if error is not None:
            card.resolve("not applied")
            await app.say(f"not applied: {error}", "error")
            return
        self.applied.append(Path(result.path))
        where = self.shown_path(result.path)
        card.resolve(f"applied to {where} (backup kept; /undo restores it)")
        app.answers.save(app.conv, "note", f"applied the change to {where} (backup {result.backup})")
        await app.say(f"applied to {where}; /undo restores the previous version")

    async def undo(self, rest: str, raw: str) -> None:
        """/undo [--force] [PATH]: restore a file Demi changed from its backup (the last one by default)."""
        app = self.app
        words = rest.split()
        force = "--force" in words
        words = [w for w in words if w != "--force"]
        if words:
            path = Path(" ".join(words)).expanduser()
            path = path if path.is_absolute() else app.root / path
        elif self.applied:
            path = self.applied[-1]
        else:
            await app.say("nothing to undo in this session; /undo PATH restores a file Demi changed", "error")
            return
        app.submitter.accept(raw)
        self.thread_worker("edits", self._undo_in_thread, path, force)

    def _undo_in_thread(self, path: Path, force: bool) -> None:
        from demi.assistant.edits import undo

        app = self.app
        try:
            undo(path, app.data_dir, force=force, root=app.root)
        except Exception as exc:  # no backup, or the file changed since: say so, touch nothing
            app.from_thread(self._undone, path, one_line(exc))
            return
        app.from_thread(self._undone, path, None)

    async def _undone(self, path: Path, error: str | None) -> None:
        app = self.app
        if error is not None:
            hint = " (/undo --force PATH restores it anyway)" if "changed since" in error else ""
            await app.say(error + hint, "error")
            return
        if path in self.applied:
            self.applied.reverse()
            self.applied.remove(path)
            self.applied.reverse()
        app.answers.save(app.conv, "note", f"restored {self.shown_path(path)} from Demi's backup")
        await app.say(f"restored {self.shown_path(path)} from Demi's backup")
