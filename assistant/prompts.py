"""Prompt text for explain, refactor and fix, for chat models and for base models alike.

A task builds a `ChatPrompt`: chat messages for models with a chat template (or a server's
chat endpoint) and a completion-style text for base models without one, shaped so that
continuing it *is* the answer (a Markdown heading to write under; an open code fence to fill).
FIM prompts come from the template registry in `fim.py`. `looks_instruct` flags models that
were tuned for chat, which complete code in the middle of a file poorly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demi.assistant.context import CodeContext
from demi.assistant.facts import Facts, detail_items

PROMPT_OVERHEAD = 160  # tokens of instructions and chat markup around the code and the facts
SYSTEM = (
    "You are Demi, a coding assistant that runs on the user's own machine. "
    "Answer in concise Markdown. Never invent facts about code you were not shown."
)
SYSTEM_SHORT = "You are Demi, a coding assistant. Answer in concise Markdown."  # demi-tiny's training system prompt


@dataclass
class ChatPrompt:
    messages: list[dict[str, str]]
    plain: str  # for base models: continue this text
    plain_stops: list[str] = field(default_factory=list)


_INSTRUCT = re.compile(r"(instruct|[-_.]chat\b|[-_.]it\b|[-_]sft\b|[-_]dpo\b|rlhf)", re.I)


def looks_instruct(name: str, path: Path | None = None) -> bool:
    """Whether the model's name (or `_name_or_path` in its config) says it was tuned for chat."""
    names = [name, path.name if path else ""]
    if path is not None and (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
            names.append(str(cfg.get("_name_or_path", "")))
        except (OSError, ValueError, AttributeError):
            pass
    return any(_INSTRUCT.search(n or "") for n in names)


def instruct_warning(name: str) -> str:
    return (
        f"{name} looks like an instruct (chat) model; fill-in-the-middle completion works best "
        "with a base model of the same family"
    )


# -- facts as prompt text ----------------------------------------------------------------------


def facts_lines(f: Facts) -> list[str]:
    """The static facts as short lines for a prompt (certain, so the model need not guess)."""
    out = []
    if f.signature:
        out.append(f"signature: {f.signature}")
    if f.params:
        out.append(
            "parameters: "
            + ", ".join(
                p.name + (f": {p.type}" if p.type else "") + (f" = {p.default}" if p.default else "") for p in f.params
            )
        )
    if f.returns_annotation:
        out.append(f"declared return type: {f.returns_annotation}")
    if f.returns:
        out.append("return statements: " + "; ".join(f.returns))
    if f.yields:
        out.append("it is a generator (yields values)")
    if f.raises:
        out.append("raises: " + "; ".join(f.raises))
    if f.calls:
        out.append("calls: " + ", ".join(f.calls))
    if f.bases:
        out.append("bases: " + ", ".join(f.bases))
    if f.members:
        out.append("members: " + "; ".join(f.members[:20]))
    for label, value in detail_items(f):
        out.append(f"{label.lower()}: " + ("; ".join(value) or "none" if isinstance(value, list) else value))
    if f.docstring:
        out.append("docstring: " + f.docstring.split("\n\n")[0].replace("\n", " ")[:400])
    return out


def _context_block(ctx: CodeContext) -> str:
    parts = []
    if ctx.outline:
        parts.append("Outline of the file:\n" + "\n".join(ctx.outline))
    if ctx.imports:
        parts.append("Imports:\n" + "\n".join(ctx.imports))
    if ctx.definitions:
        parts.append("Definitions it uses from the same file:\n" + "".join(ctx.definitions).rstrip())
    return "\n\n".join(parts)


def _fenced(code: str, fence: str) -> str:
    ticks = "````" if "```" in code else "```"
    return f"{ticks}{fence}\n{code.rstrip()}\n{ticks}"


def target_label(f: Facts) -> str:
    if f.kind == "file":
        return "this file"
    if f.kind == "lines":
        return f"lines {f.start_line}-{f.end_line}"
    return f"the {f.kind} `{f.name}`"


# -- explain -----------------------------------------------------------------------------------


def explain_prompt(path: str, language: str | None, facts: Facts, ctx: CodeContext) -> ChatPrompt:
    fence = language or ""
    label = target_label(facts)
    cut = "\n(The code is cut to fit; explain what is shown.)" if ctx.code_cut else ""
    ask = (
        f"Explain {label} from `{path}` to a programmer reading it for the first time. "
        "Say what it takes, what it returns and what it does, step by step where that helps; "
        "mention errors it raises and side effects. Do not repeat the code; keep it short."
    )
    facts_text = "\n".join(f"- {line}" for line in facts_lines(facts))
    user = "\n\n".join(
        x
        for x in (
            ask,
            f"Facts from static analysis (certain):\n{facts_text}" if facts_text else "",
            _context_block(ctx),
            _fenced(ctx.code, fence) + cut,
        )
        if x
    )
    name = facts.name if facts.kind not in ("file", "lines") else Path(path).name
    plain = (
        f"# Notes on `{path}`\n\n{_fenced(ctx.code, fence)}\n\n"
        + (f"Facts:\n{facts_text}\n\n" if facts_text else "")
        + f"## What `{name}` does\n\n"
    )
    return ChatPrompt(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], plain, ["\n## ", "\n# "]
    )


def summary_prompt(path: str, kind: str, name: str, code: str, language: str | None = "python") -> ChatPrompt:
    """One sentence on what a function (or class) does, asked as demi-tiny was trained to answer
    (train/pairs.py: the question, then the code in a fence); for small models, whose long
    explanations wander, and for the summary line of a docstring."""
    what = "function" if kind in ("function", "method", "constructor") else kind
    ask = f"What does the {what} `{name}` do? Answer in one sentence."
    user = f"{ask}\n\n{_fenced(code, language or '')}"
    plain = f"# Notes on `{path}`\n\n{_fenced(code, language or '')}\n\nWhat `{name}` does, in one sentence:\n"
    return ChatPrompt(
        [{"role": "system", "content": SYSTEM_SHORT}, {"role": "user", "content": user}], plain, ["\n\n", "\n#"]
    )


# -- refactor ----------------------------------------------------------------------------------


def refactor_prompt(path: str, language: str | None, facts: Facts, ctx: CodeContext, instruction: str) -> ChatPrompt:
    fence = language or ""
    label = target_label(facts)
    user = "\n\n".join(
        x
        for x in (
            f"Rewrite {label} from `{path}` following this instruction: {instruction.strip()}",
            f"Reply with the complete rewritten code in one ```{fence} block and nothing else. Keep its "
            "indentation, keep everything the instruction does not ask to change, and add no code "
            "outside it.",
            ("Context (read only, do not rewrite):\n" + _context_block(ctx)) if _context_block(ctx) else "",
            "The code to rewrite:\n" + _fenced(ctx.code, fence),
        )
        if x
    )
    comment = "#" if language in (None, "python") else "//"
    plain = (
        f"{comment} {path}: before\n{_fenced(ctx.code, fence)}\n\n"
        f"{comment} After this change: {instruction.strip()}\n```{fence}\n"
    )
    return ChatPrompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], plain, ["```"])


# -- fix ---------------------------------------------------------------------------------------


def fix_prompt(
    path: str, language: str | None, facts: Facts, ctx: CodeContext, error: str, summary: str, where: str = ""
) -> ChatPrompt:
    """The model asked for the corrected code of the target, given the error it causes (`error`: the
    traceback or diagnostic as the user saw it; `summary`: its one-line gist; `where`: the line it
    points at). The reply's shape is the refactor's, so the same splice and validator check it."""
    fence = language or ""
    label = target_label(facts)
    user = "\n\n".join(
        x
        for x in (
            f"Fix the bug in {label} from `{path}` that causes this error:\n" + _fenced(error, "")
            if error.strip()
            else f"Find and fix the bug in {label} from `{path}`.",
            where,
            f"Reply with the complete corrected code in one ```{fence} block and nothing else. Change only "
            "what the fix needs, keep its indentation and everything else as it is, and add no code outside it.",
            ("Context (read only, do not rewrite):\n" + _context_block(ctx)) if _context_block(ctx) else "",
            "The code to fix:\n" + _fenced(ctx.code, fence),
        )
        if x
    )
    comment = "#" if language in (None, "python") else "//"
    gist = " ".join(summary.split())[:200]
    plain = (
        f"{comment} {path}: before"
        + (f" (it fails with: {gist})" if gist else " (it has a bug)")
        + f"\n{_fenced(ctx.code, fence)}\n\n"
        f"{comment} After fixing the bug:\n```{fence}\n"
    )
    return ChatPrompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], plain, ["```"])


_FENCE = re.compile(r"(`{3,})[^\n`]*\n(.*?)(?:\n\1|\Z)", re.S)


def extract_code(reply: str) -> str:
    """The code in a model's reply: the first fenced block (a block cut short counts), else all of it."""
    m = _FENCE.search(reply)
    if m:
        return m.group(2).rstrip("`").rstrip() + "\n"
    text = reply.strip("\n")
    return text + "\n" if text else ""


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> tuple[str, bool]:
    """(prompt text, whether the chat template was used) for an in-process model."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True), True
    return prompt.plain, False
