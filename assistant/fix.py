"""`fix`: from an error (a traceback, a compiler or linter line, a failing test) to a checked fix.

Three steps, each its own function:

- `parse_error` reads the places an error names: Python tracebacks (3.11+ carets, chained
  exceptions, exception groups), pytest's long, short and line reports, one-line diagnostics
  `path:LINE[:COL]: message` (flake8, ruff, mypy, pylint, gcc/clang, go vet), rustc's
  `--> path:L:C`, tsc's `path(L,C): ...` and JavaScript stack lines. Frames come out most
  relevant first: the exception that surfaced before its causes, its innermost frame first.
- `locate` takes the first of them in the user's file and, through tree-sitter, the function
  around it (a module-level line: its statement); `--symbol`/`--lines` override.
- `propose_fix` asks the model for that target's corrected code (the prompt is `prompts.fix_prompt`)
  and checks the reply with the refactor's own splice and validator (`refactor.rewrite`): it must
  parse where the original did, keep the definition and stay inside the target. Up to `candidates`
  replies are tried (the first as asked, the others sampled) until one is valid (and, with a
  `check`, passes it). Nothing is written here; `refactor.apply` writes, atomically, with a backup.

Model output is never run, with one exception the user asks for by name: `run_test` runs the user's
own test command on a temporary copy of the project with the fix written into the copy, in a
subprocess with a timeout, before the user's file is touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from demi.assistant.document import Document, PositionError
from demi.assistant.edits import Edit, unified_diff, workspace_edit
from demi.assistant.prompts import fix_prompt
from demi.assistant.refactor import RefactorRejected, RefactorResult, candidate_rewrites
from demi.assistant.syntax import Syntax, parse
from demi.assistant.target import resolve_target, target_context
from demi.model.errors import DemiUserError

if TYPE_CHECKING:  # torch loads only with the engine, so bad input fails fast
    from demi.model.generate import CancelToken, Sampling


class FixRejected(RefactorRejected):
    """No reply of the model was a valid fix; the file is untouched (a runtime failure, exit 1)."""


# -- reading errors ------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One place an error names: a file, a 1-based line, maybe a column and a function."""

    path: str
    line: int
    column: int | None = None
    function: str | None = None
    message: str = ""  # the error this frame belongs to, one line
    span: tuple[int, int] = (0, 0)  # the lines of the error text that report it (0-based, inclusive)

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "column": self.column, "function": self.function}


@dataclass
class ErrorReport:
    text: str  # the error as given
    frames: list[Frame]  # most relevant first
    summary: str  # one line: the exception or the diagnostic

    def excerpt(self, frame: Frame | None, limit: int = 2400) -> str:
        """The part of the text about `frame` (its traceback, chained causes included), cut to
        `limit` characters keeping both ends; the whole text when it is short."""
        text = self.text
        if frame is not None and len(text) > limit:
            lines = text.split("\n")
            text = "\n".join(lines[frame.span[0] : frame.span[1] + 1])
        if len(text) <= limit:
            return text
        head = text[: limit // 3]
        tail = text[-(limit - len(head) - 30) :]
        return head.rstrip() + "\n[... cut ...]\n" + tail.lstrip("\n")


@dataclass
class _Block:
    """One error in the text: a traceback or one diagnostic, with the frames it names."""

    first: int
    last: int
    frames: list[Frame] = field(default_factory=list)
    message: str = ""
    chained: bool = False  # a Python traceback that follows the one before as its cause or context
    innermost_first: bool = False  # JavaScript stacks list the innermost frame first


_PY_START = re.compile(r"^(?:Exception Group )?Traceback \(most recent call last\):\s*$")
_PY_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)(?:, in (?P<func>.+?))?\s*$')
_PY_CHAIN = re.compile(
    r"^(?:The above exception was the direct cause of the following exception:"
    r"|During handling of the above exception, another exception occurred:)\s*$"
)
_GROUP_RULE = re.compile(r"^\s*\+[-+]")  # an exception group's separators: "+-+---- 1 ----"
_GROUP_BAR = re.compile(r"^\s*[|+] ?")
_PYTEST_RULE = re.compile(r"^(?:_{3,} .* _{3,}|={3,}.*={3,})\s*$")
_PYTEST_E = re.compile(r"^E\s+(?P<msg>\S.*)$")
_RUST = re.compile(r"^\s*--> (?P<path>[^\s:][^:]*?):(?P<line>\d+):(?P<col>\d+)\s*$")
_TSC = re.compile(r"^(?P<path>[^\s(][^(]*?)\((?P<line>\d+),(?P<col>\d+)\): ?(?P<msg>.*)$")
_JS_AT = re.compile(r"^\s+at (?:(?P<func>[^()]+?) \()?(?P<path>[^\s()]+?):(?P<line>\d+):(?P<col>\d+)\)?\s*$")
_LOC = re.compile(r"^(?P<path>[^\s:][^:]*?):(?P<line>\d+)(?::(?P<col>\d+))?:(?P<rest>.*)$")
_IN_FUNC = re.compile(r"^ in (?P<func>\S+)\s*$")
_EXC_NAME = re.compile(r"^ (?P<name>[A-Za-z_][\w.]*)\s*$")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt|Failure|Iteration)\b.*$")


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or re.search(r"\.\w{1,10}$", text) is not None


def parse_error(text: str) -> ErrorReport:
    """The frames `text` names, most relevant first, and its one-line summary; text that names no
    place gives no frames (the summary is still its gist)."""
    text = text.replace("\r\n", "\n").strip("\n")
    lines = text.split("\n")
    blocks: list[_Block] = []
    py: _Block | None = None  # the Python traceback being read
    chain_open = False  # a chain marker seen: the next traceback is chained to the one before
    stack: _Block | None = None  # the pytest failure (or JavaScript stack) being read
    pending = ""  # a pytest `E` line seen before its failure's first location

    def new_stack(i: int, **kw: Any) -> _Block:
        nonlocal pending
        block = _Block(i, i, message=pending, **kw)
        pending = ""
        blocks.append(block)
        return block

    for i, raw in enumerate(lines):
        if _GROUP_RULE.match(raw):
            continue
        line = _GROUP_BAR.sub("", raw, count=1) if raw.lstrip().startswith(("|", "+ ")) else raw
        if _PY_START.match(line.strip()):
            py, chain_open, stack = _Block(i, i, chained=chain_open), False, None
            blocks.append(py)
            continue
        if _PY_CHAIN.match(line.strip()):
            py, chain_open = None, True
            continue
        if py is not None:
            m = _PY_FRAME.match(line)
            if m:
                py.frames.append(Frame(m["path"], int(m["line"]), None, m["func"]))
                py.last = i
            elif line.strip() and not line[:1].isspace():  # the exception: the traceback ends
                py.message, py.last, py = line.strip(), i, None
            elif line.strip():
                py.last = i
            continue
        m = _PY_FRAME.match(line)
        if m:  # a SyntaxError of a script run directly: its place, without a "Traceback" line
            py, stack = _Block(i, i, [Frame(m["path"], int(m["line"]), None, m["func"])]), None
            blocks.append(py)
            continue
        if _PYTEST_RULE.match(line):
            stack, pending = None, ""
            continue
        m = _PYTEST_E.match(line)
        if m:
            msg = m["msg"].strip()
            where = _PY_FRAME.match("  " + msg)
            if where:  # a SyntaxError's place, reported inside the failure (a module that fails to import)
                stack = stack if stack is not None and not stack.innermost_first else new_stack(i)
                stack.frames.append(Frame(where["path"], int(where["line"]), None, where["func"]))
                stack.last = i
            elif stack is None:
                pending = msg if not pending or _EXC_LINE.match(msg) and not _EXC_LINE.match(pending) else pending
            elif _better_message(msg, stack.message):
                stack.message, stack.last = msg, i
            continue
        m = _JS_AT.match(line)
        if m:
            if stack is None or not stack.innermost_first:
                pending = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                stack = new_stack(i, innermost_first=True)
            path = m["path"].removeprefix("file://")
            stack.frames.append(Frame(path, int(m["line"]), int(m["col"]), m["func"]))
            stack.last = i
            continue
        if stack is not None and stack.innermost_first and line.strip():
            stack = None
        m = _RUST.match(line) or _TSC.match(line)
        if m and _looks_like_path(m["path"]):
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            message = m.groupdict().get("msg") or before
            blocks.append(_Block(i, i, [Frame(m["path"], int(m["line"]), int(m["col"]))], message.strip()))
            continue
        m = _LOC.match(line)
        if not m or not _looks_like_path(m["path"]):
            continue
        rest = m["rest"]
        col = int(m["col"]) if m["col"] else None
        inner, exc = _IN_FUNC.match(rest), _EXC_NAME.match(rest)
        if not rest.strip() or inner or exc:  # pytest: one frame of a failure's traceback
            if stack is None or stack.innermost_first:
                stack = new_stack(i)
            stack.frames.append(Frame(m["path"], int(m["line"]), col, inner["func"] if inner else None))
            stack.last = i
            if exc and not stack.message:
                stack.message = exc["name"]
            continue
        message = rest.strip()
        if message.startswith("note:"):  # mypy's notes explain the error before them
            continue
        blocks.append(_Block(i, i, [Frame(m["path"], int(m["line"]), col)], message))
    frames = _ordered(blocks)
    return ErrorReport(text, frames, _summary(frames, blocks, lines))


def _better_message(new: str, old: str) -> bool:
    """Whether a pytest `E` line says more than the message kept so far (an exception beats source)."""
    return not old or old.isidentifier() or bool(_EXC_LINE.match(new)) and not _EXC_LINE.match(old)


def _ordered(blocks: list[_Block]) -> list[Frame]:
    """Frames most relevant first: errors in the order given, but within a chain of Python
    tracebacks the last (the one that surfaced) first; within one traceback the innermost first."""
    groups: list[list[_Block]] = []
    for b in blocks:
        if b.chained and groups:
            groups[-1].append(b)
        else:
            groups.append([b])
    out: list[Frame] = []
    for group in groups:
        span = (min(b.first for b in group), max(b.last for b in group))
        for b in reversed(group):
            for f in b.frames if b.innermost_first else reversed(b.frames):
                f.message, f.span = b.message, span
                out.append(f)
    return out


def _summary(frames: list[Frame], blocks: list[_Block], lines: list[str]) -> str:
    """The most relevant error's message; else the last exception-like line, else the text's gist."""
    said = [f.message for f in frames if f.message] + [b.message for b in reversed(blocks) if b.message]
    if said:
        return said[0][:300]
    filled = [ln.strip() for ln in lines if ln.strip()]
    exceptions = [ln for ln in filled if _EXC_LINE.match(ln)]
    if exceptions:
        return exceptions[-1][:300]
    return (filled[0] if len(filled) == 1 else filled[-1])[:300] if filled else ""


def error_at(path: str | Path, line: int, message: str, column: int | None = None) -> ErrorReport:
    """An error the caller already placed (an editor's diagnostic): one frame at `line` (1-based)."""
    gist = " ".join(message.split())
    frame = Frame(str(path), line, column, None, gist[:300], (0, 0))
    return ErrorReport(f"{Path(path).name}:{line}: {message}", [frame], gist[:300])


# -- which frame, which code -----------------------------------------------------------------------------


def _same_file(frame_path: str, file: Path, roots: list[Path]) -> int:
    """How surely `frame_path` names `file`: 1000 for the same file on disk, else how many trailing
    path parts agree (1: the name only; 0: another file)."""
    if not frame_path or frame_path.startswith("<"):
        return 0
    given = Path(frame_path)
    for base in [Path(".")] if given.is_absolute() else roots:
        try:
            if (base / given).is_file() and os.path.samefile(base / given, file):
                return 1000
        except OSError:
            pass
    a = Path(os.path.normpath(frame_path)).parts
    b = Path(os.path.abspath(file)).parts
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def frames_in(report: ErrorReport, doc: Document, root: Path | None = None) -> list[Frame]:
    """The report's frames in `doc`'s file, surest match first, then most relevant first."""
    if doc.path is None:
        return []
    roots = [Path.cwd()] + ([root] if root is not None else []) + [doc.path.parent]
    scored = [(_same_file(f.path, doc.path, roots), i, f) for i, f in enumerate(report.frames)]
    scored = [s for s in scored if s[0] > 0]
    best = max((s[0] for s in scored), default=0)
    return [f for score, _, f in sorted(scored, key=lambda s: s[1]) if score == best]


@dataclass
class FixSite:
    """What the fix rewrites (`symbol` or `lines`, as `resolve_target` takes them) and why."""

    symbol: str | None
    lines: tuple[int, int] | None
    frame: Frame | None  # the place in the file the error names (None: the user chose the target)
    summary: str
    label: str = ""


def _last_line(doc: Document) -> int:
    n = doc.line_count
    return n - 1 if doc.text.endswith("\n") and n > 1 else n


def _statement_lines(syntax: Syntax, doc: Document, line: int) -> tuple[int, int]:
    """The top-level statement holding `line` (a few lines around it without a grammar, or for a
    statement too long to rewrite whole)."""
    last = _last_line(doc)
    if syntax.root is not None:
        for node in syntax.root.named_children:
            first, end = node.start_point[0] + 1, node.end_point[0] + 1
            if first <= line <= end and end - first < 60:
                return first, min(end, last)
    return max(1, line - 2), min(last, line + 2)


def locate(
    report: ErrorReport,
    doc: Document,
    symbol: str | None = None,
    lines: tuple[int, int] | None = None,
    root: Path | None = None,
    syntax: Syntax | None = None,
    how: str = "--symbol or --lines",
) -> FixSite:
    """The code to fix: the function around the innermost frame the error names in `doc`'s file,
    or the user's `symbol`/`lines`. User errors (exit 2) when the error does not name the file and
    no target is given (`how`: how the front end's user names one), or names a line the file does
    not have."""
    syntax = syntax or parse(doc)
    hits = frames_in(report, doc, root)
    last = _last_line(doc)
    if symbol or lines:
        target = resolve_target(doc, symbol, lines, syntax)
        inside = [f for f in hits if target.first <= f.line <= target.last]
        frame = inside[0] if inside else next((f for f in hits if f.line <= last), None)
        return FixSite(symbol, lines, frame, frame.message if frame and frame.message else report.summary, target.label)
    if not hits:
        named = list(dict.fromkeys(Path(f.path).name for f in report.frames if not f.path.startswith("<")))
        if named:
            shown = ", ".join(named[:6]) + (", ..." if len(named) > 6 else "")
            raise DemiUserError(
                f"the error does not mention {doc.name} (it names {shown}); fix the file it names, "
                f"or give {how} to fix this one anyway"
            )
        raise DemiUserError(f"the error names no line of {doc.name}; give {how} to say what to fix")
    frame = hits[0]
    if frame.line > last:
        raise PositionError(
            f"the error names line {frame.line} of {doc.name}, which has {last} lines "
            "(did the file change since the error?)"
        )
    line_text = doc.line(frame.line)
    offset = doc.line_start(frame.line) + len(line_text) - len(line_text.lstrip())
    sym = syntax.enclosing(offset, ("function", "method", "constructor")) or syntax.enclosing(offset)
    summary = frame.message or report.summary
    if sym is not None:
        found = syntax.find(sym.qualname)
        if found.start_line == sym.start_line:  # the name finds this very definition
            return FixSite(sym.qualname, None, frame, summary, sym.qualname)
        span = (sym.start_line, min(sym.end_line, last))
    else:
        span = _statement_lines(syntax, doc, frame.line)
    return FixSite(None, span, frame, summary, f"lines {span[0]}-{span[1]}")


# -- running the user's test on a copy --------------------------------------------------------------------

# Folders a test never needs copied: caches (skipped) and big ones it may need as they are (linked).
_SKIP = frozenset({"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".demi-build"})
_LINK = frozenset({".git", ".hg", ".svn", ".venv", "venv", "node_modules", ".tox", ".nox"})
MAX_COPY_FILES = 20_000
MAX_COPY_BYTES = 512 * 1024 * 1024
OUTPUT_LIMIT = 64 * 1024


@dataclass
class CommandRun:
    """The user's test command, run once on a copy of the project."""

    command: str
    passed: bool
    exit_code: int | None  # None: killed at the timeout
    seconds: float
    output: str  # stdout and stderr together, the copy's paths shown as the project's
    timed_out: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "timed_out": self.timed_out,
            "output": self.output[-4000:],
        }


def copy_project(root: Path, dest: Path) -> None:
    """Copy `root` into `dest` (which exists) for a test run: files and links as they are, caches
    left out, version-control folders, virtualenvs and node_modules linked instead of copied.
    A project too large to copy quickly is a user error."""
    files = size = 0
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        for d in list(dirs):
            src = Path(folder) / d
            if d in _SKIP:
                dirs.remove(d)
            elif d in _LINK or src.is_symlink():
                dirs.remove(d)
                target = os.readlink(src) if src.is_symlink() else os.path.abspath(src)
                os.symlink(target, dest / rel / d)
            else:
                (dest / rel / d).mkdir()
        for name in names:
            src = Path(folder) / name
            if src.is_symlink():
                os.symlink(os.readlink(src), dest / rel / name)
                continue
            files += 1
            try:
                size += src.stat().st_size
            except OSError:
                continue
            if files > MAX_COPY_FILES or size > MAX_COPY_BYTES:
                raise DemiUserError(
                    f"{root} is too large to copy for --test (over {MAX_COPY_FILES} files or "
                    f"{MAX_COPY_BYTES >> 20} MB); run demi fix from the project's own folder"
                )
            try:
                shutil.copy2(src, dest / rel / name)
            except OSError:  # a socket, a file that vanished, one we may not read: not the test's
                pass


def run_test(
    command: str,
    root: Path,
    cwd: Path | None = None,
    timeout: float = 120.0,
    changes: dict[Path, str] | None = None,
) -> CommandRun:
    """Run the user's `command` (split like a shell would, but run without one) in a fresh copy of
    the project `root`, from `cwd`'s place in it, with `changes` (path -> new text) written into
    the copy; the whole process group is killed at `timeout` seconds. The user's files are never
    touched. Passing means exit status 0."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DemiUserError(f"--test: cannot read the command {command!r} ({exc})") from None
    if not argv:
        raise DemiUserError("--test: the command is empty")
    root = Path(os.path.abspath(root))
    real_root = Path(os.path.realpath(root))
    cwd = Path(os.path.abspath(cwd or Path.cwd()))
    rel_cwd = cwd.relative_to(root) if cwd.is_relative_to(root) else Path(".")
    with tempfile.TemporaryDirectory(prefix="demi-fix-", ignore_cleanup_errors=True) as tmp:
        copy = Path(tmp) / (root.name or "project")
        copy.mkdir()
        copy_project(root, copy)
        for path, text in (changes or {}).items():
            real = Path(os.path.realpath(path))
            dest = copy / real.relative_to(real_root) if real.is_relative_to(real_root) else None
            # never through a folder linked to the user's own (a virtualenv, node_modules)
            if dest is None or not Path(os.path.realpath(dest.parent)).is_relative_to(os.path.realpath(copy)):
                raise DemiUserError(
                    f"{path} is outside the project folder {root} (or in a folder --test does not copy); "
                    "run demi fix from the project's folder"
                )
            dest.unlink(missing_ok=True)
            dest.write_bytes(text.encode("utf-8"))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=copy / rel_cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise DemiUserError(f"--test: cannot run {argv[0]!r}: {exc.strerror or exc}") from None
        timed_out = False
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            out, _ = proc.communicate()
        seconds = time.monotonic() - started
        text = out.decode("utf-8", errors="replace")[-OUTPUT_LIMIT:]
        for shown in {str(Path(os.path.realpath(copy))), str(copy)}:
            text = text.replace(shown, str(root))
    code = None if timed_out else proc.returncode
    return CommandRun(command, code == 0, code, seconds, text, timed_out)


# -- asking the model ------------------------------------------------------------------------------------


@dataclass
class FixResult(RefactorResult):
    """A validated fix: the refactor's result (diff, edit, WorkspaceEdit; `refactor.apply` writes
    it) with the error it fixes, the tries it took and, with a test command, how the test went."""

    error: str = ""
    frame: Frame | None = None
    tries: int = 1
    test: CommandRun | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            **super().as_json(),
            "error": self.error,
            "frame": self.frame.as_json() if self.frame else None,
            "tries": self.tries,
            "test": self.test.as_json() if self.test else None,
        }


def propose_fix(
    engine: Any,
    doc: Document,
    report: ErrorReport,
    site: FixSite,
    max_tokens: int = 768,
    budget: int = 2048,
    sampling: Sampling | None = None,
    cancel: CancelToken | None = None,
    on_text: Callable[[str], None] | None = None,
    time_budget: float | None = None,
    candidates: int = 1,
    check: Callable[[str], CommandRun] | None = None,
) -> FixResult:
    """Ask for the fix of `site` and validate it like a refactor; with `check` (the new file text
    -> a test run), a reply must also pass it. Returns the first reply that does; failing that, the
    first valid one (its `test` says it failed); raises `FixRejected` when none is valid."""
    if candidates < 1:
        raise DemiUserError(f"candidates must be at least 1, got {candidates}")
    started = time.monotonic()
    excerpt = report.excerpt(site.frame)
    where = ""
    if site.frame is not None and 1 <= site.frame.line <= doc.line_count:
        shown = doc.line(site.frame.line).strip()
        where = f"The error points at line {site.frame.line} of the file" + (f": `{shown}`" if shown else "") + "."
    language = doc.lang.fence if doc.lang else None
    summary = site.summary or report.summary
    target, info, ctx, budget = target_context(
        engine,
        doc,
        site.symbol,
        site.lines,
        max_tokens,
        budget,
        frame=lambda facts, c: fix_prompt(doc.name, language, facts, c, excerpt, summary, where),
    )
    if ctx.code_cut:
        raise DemiUserError(
            f"{target.label} is too long to fix within {budget} tokens of context; "
            "pick a smaller --symbol or --lines range"
        )
    prompt = fix_prompt(doc.name, language, target.facts, ctx, excerpt, summary, where)
    reasons: list[str] = []
    fallback: FixResult | None = None
    completion_tokens = 0
    replies = candidate_rewrites(
        engine, prompt, target, candidates, reasons, FixRejected, max_tokens, sampling, on_text, cancel, time_budget
    )
    for i, result, new_text, notes in replies:
        completion_tokens += int(result.extra.get("completion_tokens", result.completion_tokens))
        if new_text is None:
            continue
        if new_text == doc.text:
            reasons.append("the model returned the code unchanged")
            continue
        if result.finish_reason == "length":
            notes.append(f"the model stopped at max_tokens {max_tokens}; check the end of the fix")
        edit = Edit(doc.path or Path(doc.name), doc.text, new_text, doc.digest)
        found = FixResult(
            edit.path,
            target.label,
            (target.first, target.last),
            edit,
            unified_diff(edit),
            workspace_edit(edit),
            info.name,
            result.text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=completion_tokens,
            seconds=time.monotonic() - started,
            notes=notes,
            lossy=doc.lossy,
            speculation=result.extra.get("speculation"),
            error=site.summary or report.summary,
            frame=site.frame,
            tries=i + 1,
        )
        if check is None:
            return found
        found.test = check(new_text)
        found.seconds = time.monotonic() - started
        if found.test.passed:
            return found
        reasons.append("the test still fails with it" + (" (timed out)" if found.test.timed_out else ""))
        fallback = fallback or found
    if fallback is not None:
        return fallback
    tries = f"{candidates} tries" if candidates > 1 else "1 try"
    said = "; ".join(dict.fromkeys(reasons))
    raise FixRejected(
        f"no valid fix found ({tries}): {said}; {doc.name} is unchanged (try --candidates N, or a larger model)"
    )
