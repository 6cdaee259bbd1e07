"""`demi explain`, `complete`, `refactor`, `fix`, `undo`, `sessions` and `config`: the session layer from a shell.

Everything here is presentation: arguments in, `demi.assistant` calls, text or one JSON object
out. Bad input (file, position, symbol, range) is checked before the model loads, so a typo
costs milliseconds. While the model loads, its progress shows on stderr as for every command that
loads one (cli/progress_display.py: only on a terminal, never with --json).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import sys
from typing import Any

from demi.cli.main import UsageError, emit_json
from demi.cli.progress_display import showing_progress

log = logging.getLogger("demi")


def register(sub, common) -> None:
    def engine_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            default=None,
            metavar="URL",
            help="an OpenAI-compatible server (demi serve, vLLM, llama.cpp, Ollama) instead of "
            "loading the model here (default: $DEMI_SERVER, then `server` in the config file)",
        )
        p.add_argument("--max-tokens", "-n", type=int, default=None, help="new tokens at most")
        p.add_argument("--temperature", "-t", type=float, default=None, help="0 (default) is greedy")
        p.add_argument("--no-history", action="store_true", help="do not record this in the session store")

    ex = sub.add_parser(
        "explain",
        parents=[common()],
        help="explain a file, a symbol or a line range",
        description="Explain code as Markdown, streamed: facts from static analysis (certain) "
        "and the model's explanation, each labelled.",
    )
    ex.add_argument("path", metavar="PATH")
    ex.add_argument("--symbol", "-s", help="a function, class or method (e.g. parse or Parser.parse)")
    ex.add_argument("--lines", "-l", metavar="A-B", help="a 1-based inclusive line range")
    ex.add_argument(
        "--lead",
        choices=("auto", "facts", "model"),
        default=None,
        help="which section comes first (auto: the model's when it is large)",
    )
    engine_opts(ex)
    ex.set_defaults(func=cmd_explain)

    co = sub.add_parser(
        "complete",
        parents=[common()],
        help="fill in the code at a position (FIM)",
        description="Complete the code at LINE:COL (1-based; COL may be one past the line's "
        "end) and print the text to insert.",
    )
    co.add_argument("path", metavar="PATH")
    co.add_argument("--at", required=False, metavar="LINE:COL", help="cursor position, 1-based")
    co.add_argument(
        "--context-file",
        action="append",
        default=[],
        metavar="FILE",
        help="another file to draw context from (repeatable)",
    )
    co.add_argument(
        "--workspace-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mix n-gram statistics of the file, the --context-file files and the files of its folder into "
        "the model's choices (in-process models; config complete.workspace_cache)",
    )
    engine_opts(co)
    co.set_defaults(func=cmd_complete)

    rf = sub.add_parser(
        "refactor",
        parents=[common()],
        help="rewrite a symbol or range; prints a diff",
        description="Ask the model to rewrite a symbol, a line range or the file; the rewrite "
        "is validated and printed as a unified diff. Only --apply writes (atomically, "
        "with a backup that `demi undo PATH` restores).",
    )
    rf.add_argument("path", metavar="PATH")
    rf.add_argument("--instruction", "-i", help="what to change")
    rf.add_argument("--symbol", "-s")
    rf.add_argument("--lines", "-l", metavar="A-B")
    rf.add_argument(
        "--candidates",
        type=int,
        default=3,
        metavar="N",
        help="model replies to try until one is valid (3); renames, comprehensions and constants need no model",
    )
    rf.add_argument("--apply", action="store_true", help="write the change (a backup is kept)")
    rf.add_argument("--workspace-edit", action="store_true", help="print the LSP WorkspaceEdit JSON, not the diff")
    engine_opts(rf)
    rf.set_defaults(func=cmd_refactor)

    fx = sub.add_parser(
        "fix",
        parents=[common()],
        help="fix the code an error points at; prints a diff",
        description="Read an error (a traceback, a compiler or linter line, a failing test's output), "
        "find the code it points at in FILE (the innermost frame there, the function around it), and "
        "ask the model for a fix, validated like a refactor and printed as a unified diff. --test runs "
        "your test command on a temporary copy of the project, before (for the error) and with the fix "
        "(whether it passes); only --apply writes (atomically, with a backup that `demi undo FILE` restores).",
    )
    fx.add_argument("path", metavar="FILE")
    fx.add_argument("--symbol", "-s", help="fix this function, class or method (default: where the error points)")
    fx.add_argument("--lines", "-l", metavar="A-B", help="fix this 1-based inclusive line range")
    source = fx.add_mutually_exclusive_group()
    source.add_argument("--error", "-e", metavar="TEXT", help="the error message (e.g. `geo.py:12:5: E999 ...`)")
    source.add_argument("--traceback", metavar="FILE", help="a file holding the traceback or tool output ('-': stdin)")
    source.add_argument(
        "--test",
        metavar="CMD",
        help="a test command to run (no shell) on a temporary copy of the project: its failure is the "
        "error, and it runs again with the fix",
    )
    fx.add_argument("--test-timeout", type=float, default=120.0, metavar="SEC", help="seconds per test run (120)")
    fx.add_argument(
        "--candidates", type=int, default=1, metavar="N", help="replies to try until one is valid (and passes --test)"
    )
    fx.add_argument("--apply", action="store_true", help="write the fix (a backup is kept)")
    fx.add_argument("--workspace-edit", action="store_true", help="print the LSP WorkspaceEdit JSON, not the diff")
    engine_opts(fx)
    fx.set_defaults(func=cmd_fix)

    un = sub.add_parser("undo", parents=[common(model=False)], help="restore a file from Demi's last backup")
    un.add_argument("path", metavar="PATH")
    un.add_argument("--force", action="store_true", help="restore even if the file changed since Demi wrote it")
    un.set_defaults(func=cmd_undo)

    se = sub.add_parser("sessions", parents=[common(model=False)], help="history: list | show ID | search TEXT")
    ss = se.add_subparsers(dest="sessions_command", metavar="ACTION")
    se.set_defaults(func=cmd_sessions_list, limit=20)
    ls = ss.add_parser("list", parents=[common(model=False)], help="recent sessions")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(func=cmd_sessions_list)
    sh = ss.add_parser("show", parents=[common(model=False)], help="one session's messages")
    sh.add_argument("id", metavar="ID")
    sh.set_defaults(func=cmd_sessions_show)
    sr = ss.add_parser("search", parents=[common(model=False)], help="full-text search over all messages")
    sr.add_argument("query", nargs="+", metavar="TEXT")
    sr.add_argument("--limit", type=int, default=20)
    sr.set_defaults(func=cmd_sessions_search)

    cf = sub.add_parser("config", parents=[common(model=False)], help="effective settings and where each comes from")
    cf.set_defaults(func=cmd_config)


# -- shared ---------------------------------------------------------------------------------------


def config_flags(args: argparse.Namespace, **task: Any) -> dict[str, Any]:
    """The settings the command line gives (`common()`'s model flags and --server, plus a command's
    own `task` keys such as "explain.max_tokens"), as `load_config` takes them: None is "not given",
    so the environment, the config file or the default decides."""
    return {
        "model": getattr(args, "model", None),
        "server": getattr(args, "server", None),
        "device": getattr(args, "device", None),
        "context": getattr(args, "context", None),
        "dtype": None if getattr(args, "dtype", "auto") == "auto" else args.dtype,
        "quant": getattr(args, "quant", None),
        **task,
    }


def _config(args: argparse.Namespace, **task: Any):
    from demi.assistant.config import load_config

    return load_config(config_flags(args, **task))


def _engine(cfg, json_output: bool):
    """The engine the settings ask for, its loading shown as every command shows it (not with --json)."""
    from demi.assistant.engines import engine_from_config

    where = cfg["server"] or cfg["model"] or "the default model"
    with showing_progress(f"{'connecting to' if cfg['server'] else 'loading'} {where}", json_output):
        return engine_from_config(cfg)


def _sampling(temperature: float | None):
    from demi.assistant.engines import Sampling

    return Sampling(temperature=temperature or 0.0, top_p=0.95 if temperature else 1.0)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value}")
    return value


def _load(path: str, cfg):
    from demi.assistant.document import Document

    return Document.load(path, max_bytes=int(cfg["max_file_mb"] * 1024 * 1024))


def _warn(text: str) -> None:
    print(f"demi: warning: {text}", file=sys.stderr, flush=True)


def _record(
    cfg,
    args: argparse.Namespace,
    kind: str,
    title: str,
    model: str,
    prompt: str,
    answer: str,
    prompt_tokens: int,
    completion_tokens: int,
    seconds: float,
    meta: dict,
) -> str | None:
    """Keep the request in the session store; a store problem is a warning, never a lost answer."""
    if args.no_history or not cfg["history"]:
        return None
    from demi.assistant.config import data_dir
    from demi.assistant.store import Store, StoreError

    try:
        with Store.open_default(data_dir(cfg), cfg["db_timeout"]) as store:
            return store.record(kind, title, model, prompt, answer, prompt_tokens, completion_tokens, seconds, meta)
    except StoreError as exc:
        _warn(f"not saved to history: {exc}")
        return None


def _stdout(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


# -- explain --------------------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from demi.assistant.document import parse_line_range
    from demi.assistant.explain import explain
    from demi.assistant.target import resolve_target

    cfg = _config(args, **{"explain.max_tokens": args.max_tokens, "explain.lead": args.lead})
    max_tokens = _positive(cfg["explain.max_tokens"], "--max-tokens")
    lines = parse_line_range(args.lines) if args.lines else None
    doc = _load(args.path, cfg)
    resolve_target(doc, args.symbol, lines)  # a bad symbol or range fails here, before the model loads
    engine = _engine(cfg, args.json)
    result = explain(
        engine,
        doc,
        args.symbol,
        lines,
        max_tokens=max_tokens,
        budget=cfg["explain.context_tokens"],
        lead=cfg["explain.lead"],
        on_text=None if args.json else _stdout,
        sampling=_sampling(args.temperature),
    )
    title = f"explain {doc.name}" + (
        f" {result.symbol}" if result.symbol else f" lines {args.lines}" if args.lines else ""
    )
    _record(
        cfg,
        args,
        "explain",
        title,
        result.model,
        title,
        result.markdown,
        result.prompt_tokens,
        result.completion_tokens,
        result.seconds,
        {"path": doc.name, "symbol": result.symbol, "lines": list(result.lines)},
    )
    if args.json:
        emit_json(result.as_json())
    return 0


# -- complete -------------------------------------------------------------------------------------


def cmd_complete(args: argparse.Namespace) -> int:
    from demi.assistant.complete import complete
    from demi.assistant.context import RecentFiles
    from demi.assistant.document import parse_position

    if not args.at:
        raise UsageError("demi complete: --at LINE:COL is required (1-based, e.g. --at 12:5)")
    cfg = _config(
        args,
        **{
            "complete.max_tokens": args.max_tokens,
            "complete.temperature": args.temperature,
            "complete.workspace_cache": args.workspace_cache,
        },
    )
    max_tokens = _positive(cfg["complete.max_tokens"], "--max-tokens")
    line, col = parse_position(args.at)
    doc = _load(args.path, cfg)
    offset = doc.offset(line, col)
    recent = RecentFiles()
    for extra in args.context_file:
        recent.add(extra, _load(extra, cfg).text)
    engine = _engine(cfg, args.json)
    cache = None
    if cfg["complete.workspace_cache"]:
        from pathlib import Path

        from demi.assistant.workspace_cache import folder_cache

        cache = folder_cache(engine, Path(args.path), recent.items())
    result = complete(
        engine,
        doc,
        offset,
        max_tokens=max_tokens,
        budget=cfg["complete.context_tokens"],
        recent=recent,
        sampling=_sampling(cfg["complete.temperature"]),
        workspace_cache=cache,
    )
    for w in result.warnings:
        _warn(w)
    if args.json:
        emit_json({"path": doc.name, **result.as_json()})
    else:
        _stdout(result.completion + "\n")
    return 0


# -- refactor -------------------------------------------------------------------------------------


def cmd_refactor(args: argparse.Namespace) -> int:
    import json as _json

    from demi.assistant.config import data_dir
    from demi.assistant.document import parse_line_range
    from demi.assistant.refactor import apply, needs_model, propose
    from demi.assistant.target import resolve_target

    if not args.instruction or not args.instruction.strip():
        raise UsageError("demi refactor: --instruction TEXT is required (what to change)")
    cfg = _config(args, **{"refactor.max_tokens": args.max_tokens})
    max_tokens = _positive(cfg["refactor.max_tokens"], "--max-tokens")
    candidates = _positive(args.candidates, "--candidates")
    lines = parse_line_range(args.lines) if args.lines else None
    doc = _load(args.path, cfg)
    resolve_target(doc, args.symbol, lines)
    if args.apply and doc.lossy:
        from demi.assistant.errors import DemiUserError

        raise DemiUserError(
            f"{doc.name} is not valid UTF-8; Demi will not rewrite it (it would replace the undecodable bytes)"
        )
    engine = _engine(cfg, args.json) if needs_model(doc, args.instruction, args.symbol, lines) else None
    result = propose(
        engine,
        doc,
        args.instruction,
        args.symbol,
        lines,
        max_tokens=max_tokens,
        budget=cfg["refactor.context_tokens"],
        sampling=_sampling(args.temperature),
        candidates=candidates,
    )
    if args.apply:
        apply(result, data_dir(cfg))
    _record(
        cfg,
        args,
        "refactor",
        f"refactor {doc.name} {result.target}: {args.instruction.strip()[:60]}",
        result.model,
        args.instruction,
        result.diff or "(no change)",
        result.prompt_tokens,
        result.completion_tokens,
        result.seconds,
        {"path": doc.name, "target": result.target, "applied": result.applied},
    )
    if args.json:
        emit_json(result.as_json())
        return 0
    if args.workspace_edit:
        _stdout(_json.dumps(result.workspace_edit, ensure_ascii=False, indent=2) + "\n")
    else:
        _stdout(result.diff)
    for note in result.notes:
        print(f"demi: {note}", file=sys.stderr)
    if result.applied:
        print(f"demi: applied to {doc.name} (backup kept; `demi undo {doc.name}` restores it)", file=sys.stderr)
    elif result.edit.changed:
        print("demi: nothing written; run again with --apply to write this change", file=sys.stderr)
    return 0


# -- fix ------------------------------------------------------------------------------------------


def _error_text(args: argparse.Namespace, cfg) -> tuple[str, Any]:
    """(the error text, the test run that produced it or None): from --error, --traceback or --test."""
    from pathlib import Path

    from demi.assistant.errors import DemiUserError

    if args.error is not None:
        if not args.error.strip():
            raise UsageError("demi fix: --error is empty")
        return args.error, None
    if args.traceback is not None:
        if args.traceback == "-":
            return sys.stdin.read(), None
        from demi.assistant.files import read_text_file

        return read_text_file(Path(args.traceback), max_bytes=int(cfg["max_file_mb"] * 1024 * 1024)), None
    if args.test is not None:
        from demi.assistant.edits import workspace_root
        from demi.assistant.fix import run_test

        run = run_test(args.test, workspace_root(Path(args.path)), timeout=args.test_timeout)
        if run.timed_out:
            raise DemiUserError(f"--test: `{args.test}` ran past {args.test_timeout:g} s; nothing to fix from")
        if run.passed:
            raise DemiUserError(f"--test: `{args.test}` passes (exit 0); there is nothing to fix")
        return run.output, run
    return "", None


def cmd_fix(args: argparse.Namespace) -> int:
    import json as _json
    from pathlib import Path

    from demi.assistant.config import data_dir
    from demi.assistant.document import parse_line_range
    from demi.assistant.edits import workspace_root
    from demi.assistant.errors import DemiUserError
    from demi.assistant.fix import locate, parse_error, propose_fix, run_test
    from demi.assistant.refactor import apply
    from demi.assistant.target import resolve_target

    if args.error is None and args.traceback is None and args.test is None and not (args.symbol or args.lines):
        raise UsageError("demi fix: say what fails: --error TEXT, --traceback FILE or --test CMD")
    if args.test_timeout <= 0:
        raise UsageError(f"--test-timeout must be positive, got {args.test_timeout:g}")
    candidates = _positive(args.candidates, "--candidates")
    cfg = _config(args, **{"refactor.max_tokens": args.max_tokens})
    max_tokens = _positive(cfg["refactor.max_tokens"], "--max-tokens")
    lines = parse_line_range(args.lines) if args.lines else None
    doc = _load(args.path, cfg)
    resolve_target(doc, args.symbol, lines)  # a bad symbol or range fails here, before anything runs
    if args.apply and doc.lossy:
        raise DemiUserError(
            f"{doc.name} is not valid UTF-8; Demi will not rewrite it (it would replace the undecodable bytes)"
        )
    root = workspace_root(Path(args.path))
    text, before = _error_text(args, cfg)
    report = parse_error(text)
    site = locate(report, doc, args.symbol, lines, root=root)
    check = None
    if args.test is not None:
        assert doc.path is not None

        def check(new_text: str):
            return run_test(args.test, root, timeout=args.test_timeout, changes={doc.path: new_text})

    engine = _engine(cfg, args.json)
    result = propose_fix(
        engine,
        doc,
        report,
        site,
        max_tokens=max_tokens,
        budget=cfg["refactor.context_tokens"],
        sampling=_sampling(args.temperature),
        candidates=candidates,
        check=check,
    )
    failing = result.test is not None and not result.test.passed
    if args.apply and not failing:
        apply(result, data_dir(cfg))
    where = f" (line {site.frame.line})" if site.frame else ""
    _record(
        cfg,
        args,
        "fix",
        f"fix {doc.name} {result.target}{where}: {result.error[:60]}",
        result.model,
        report.excerpt(site.frame),
        result.diff,
        result.prompt_tokens,
        result.completion_tokens,
        result.seconds,
        {"path": doc.name, "target": result.target, "applied": result.applied, "error": result.error},
    )
    if args.json:
        emit_json({**result.as_json(), "test_before": before.as_json() if before else None})
        return 1 if failing else 0
    if args.workspace_edit:
        _stdout(_json.dumps(result.workspace_edit, ensure_ascii=False, indent=2) + "\n")
    else:
        _stdout(result.diff)
    at = f" at {doc.name}:{site.frame.line}" if site.frame else ""
    print(f"demi: {result.error or 'the bug'}{at}; the fix rewrites {result.target}", file=sys.stderr)
    for note in result.notes:
        print(f"demi: {note}", file=sys.stderr)
    if result.test is not None:
        verdict = "passes" if result.test.passed else "still fails" + (" (timed out)" if result.test.timed_out else "")
        print(
            f"demi: with this fix, `{result.test.command}` {verdict} ({result.test.seconds:.1f} s, on a copy)",
            file=sys.stderr,
        )
    if result.applied:
        print(f"demi: applied to {doc.name} (backup kept; `demi undo {doc.name}` restores it)", file=sys.stderr)
    elif failing:
        print("demi: nothing written: the fix does not make the test pass", file=sys.stderr)
    else:
        print("demi: nothing written; run again with --apply to write this fix", file=sys.stderr)
    return 1 if failing else 0


# -- undo -----------------------------------------------------------------------------------------


def cmd_undo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from demi.assistant.config import data_dir
    from demi.assistant.edits import undo

    cfg = _config(args)
    backup = undo(Path(args.path), data_dir(cfg), force=args.force)
    if args.json:
        emit_json({"path": args.path, "restored": True, "backup": str(backup)})
    else:
        print(f"restored {args.path} from Demi's backup")
    return 0


# -- sessions -------------------------------------------------------------------------------------


def _store(args: argparse.Namespace):
    from demi.assistant.config import data_dir
    from demi.assistant.store import Store

    cfg = _config(args)
    return Store.open_default(data_dir(cfg), cfg["db_timeout"])


def _when(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")


def cmd_sessions_list(args: argparse.Namespace) -> int:
    _positive(args.limit, "--limit")
    with _store(args) as store:
        sessions = store.sessions(args.limit)
    if getattr(args, "json", False):
        emit_json({"sessions": [s.as_dict() for s in sessions]})
        return 0
    if not sessions:
        print("no sessions yet (explain and refactor are recorded here)")
    for s in sessions:
        print(f"{s.id}  {_when(s.updated)}  {s.kind:8s}  {s.messages:3d} msg  {s.title}")
    return 0


def cmd_sessions_show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        session = store.session(args.id)
        messages = store.messages(session.id)
    if args.json:
        emit_json({"session": session.as_dict(), "messages": [m.as_dict() for m in messages]})
        return 0
    print(f"# {session.title or session.id}  ({session.kind}, {_when(session.created)}, model {session.model})\n")
    for m in messages:
        timing = f"  [{m.completion_tokens} tokens, {m.seconds:.2f}s]" if m.seconds is not None else ""
        print(f"--- {m.role}{timing}\n{m.content.rstrip()}\n")
    return 0


def cmd_sessions_search(args: argparse.Namespace) -> int:
    _positive(args.limit, "--limit")
    with _store(args) as store:
        hits = store.search(" ".join(args.query), args.limit)
    if args.json:
        emit_json(
            {
                "results": [
                    {
                        "session_id": m.session_id,
                        "message_id": m.id,
                        "role": m.role,
                        "snippet": snip,
                        "created": m.created,
                    }
                    for m, snip in hits
                ]
            }
        )
        return 0
    if not hits:
        print("no matches")
    for m, snip in hits:
        print(f"{m.session_id}  {_when(m.created)}  {m.role:9s}  {snip.replace(chr(10), ' ')}")
    return 0


# -- config ---------------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.json:
        emit_json(cfg.as_dict())
        return 0
    print(f"config file: {cfg.path}{'' if cfg.path.is_file() else ' (not present)'}")
    for row in cfg.describe():
        print(f"  {row['key']:26s} {row['value']!s:28s} {row['source']}")
    return 0
