"""`explain`: static facts that are certain, and the model's prose, each labelled as what it is.

A small model (demi-tiny) is not trusted to get a signature right, so the facts lead and its
prose follows under a heading that says who wrote it. A large model, or one behind a server,
leads with its explanation and the facts follow as a reference. The markdown streams in the
order it is shown, so a front end can print pieces as they come.

The model's text is held to the facts (`explain_check`): a parameter it invents or leaves out,
or a return value it does not describe, is flagged under it. For a function and a small model the
section is a `summary`: the one sentence demi-tiny was trained to write, then what the function
takes, returns and raises written from the facts (marked so), which its free prose got wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from demi.assistant.document import Document
from demi.assistant.explain_check import FUNCTION_KINDS, Consistency, check, warnings
from demi.assistant.facts import Facts, detail_items
from demi.assistant.loop_guard import AnswerLoopGuard
from demi.assistant.prompts import ChatPrompt, explain_prompt, summary_prompt
from demi.assistant.target import Target, resolve_target, target_context

if TYPE_CHECKING:  # torch loads only with the engine, so bad input fails fast
    from demi.assistant.context import CodeContext
    from demi.model.generate import CancelToken, Sampling

SUMMARY_TOKENS = 80  # the summary style's one sentence


@dataclass
class Explanation:
    path: str
    symbol: str | None
    lines: tuple[int, int]
    markdown: str
    facts: Facts
    model_text: str
    model: str
    lead: str  # facts | model
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str = ""
    notes: list[str] = field(default_factory=list)
    speculation: dict[str, int] | None = None  # speculative decoding's figures (None: off)
    style: str = "prose"  # prose | summary (one sentence by the model, the parameters and return by the facts)
    consistency: Consistency | None = None  # the model's text held to the facts (functions only)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "symbol": self.symbol,
            "lines": list(self.lines),
            "explanation": self.markdown,
            "model_text": self.model_text,
            "facts": self.facts.as_dict(),
            "lead": self.lead,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
            "finish_reason": self.finish_reason,
            "notes": self.notes,
            "speculation": self.speculation,
            "style": self.style,
            "consistency": self.consistency.as_json() if self.consistency is not None else None,
        }


def _code(text: str) -> str:
    ticks = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _detail_lines(f: Facts) -> list[str]:
    """What only this kind of target has (an element's attributes, a rule's specificity...)."""
    return [
        f"- **{label}:** " + ((", ".join(_code(v) for v in value) or "none") if isinstance(value, list) else value)
        for label, value in detail_items(f)
    ]


def render_facts(t: Target) -> str:
    """The static-analysis section in Markdown; every line is read from the code, none guessed."""
    f = t.facts
    out = ["### Static analysis (read from the code: certain)", ""]
    if t.doc.lang is None:
        out.append(f"- No grammar for this file type: read as plain text ({t.last - t.first + 1} lines).")
        return "\n".join(out) + "\n"
    if f.kind == "file":
        out.append(f"- **Language:** {f.language}; {f.end_line} lines")
        if f.docstring:
            out.append(f"- **Module docstring:** {f.docstring.splitlines()[0]}")
        out.append("- **Imports:** " + (", ".join(_code(i) for i in f.imports[:20]) if f.imports else "none"))
        if f.members:
            out.append("- **Defines:**")
            out += [
                f"  - {_code(m.split(' (lines')[0])}" + (f" (lines{m.split(' (lines')[1]}" if " (lines" in m else "")
                for m in f.members[:40]
            ]
        else:
            out.append("- **Defines:** nothing (no functions or classes)")
        out += _detail_lines(f)
        return "\n".join(out) + "\n"
    if f.kind == "lines":
        out.append(f"- **Lines:** {f.start_line}-{f.end_line}")
        if f.members:
            out.append("- **Inside or touching:** " + "; ".join(_code(m) for m in f.members[:10]))
    else:
        out.append(f"- **Kind:** {f.kind}, lines {f.start_line}-{f.end_line}")
        out.append(f"- **Signature:** {_code(f.signature)}")
    if f.kind in ("function", "method", "constructor"):
        if f.params:
            out.append("- **Parameters:**")
            for p in f.params:
                line = f"  - {_code(p.name)}"
                line += f": {_code(p.type)}" if p.type else " (no type given)"
                line += f", default {_code(p.default)}" if p.default else ""
                out.append(line)
        else:
            out.append("- **Parameters:** none")
        ret = []
        if f.returns_annotation:
            ret.append(f"declared {_code(f.returns_annotation)}")
        if f.returns:
            ret.append("`return` " + ", ".join(_code(r) for r in f.returns))
        if f.yields:
            ret.append("yields values (a generator)")
        out.append("- **Returns:** " + ("; ".join(ret) if ret else "nothing explicit (no return statement)"))
    elif f.kind == "lines":
        if f.returns:
            out.append("- **Returns:** " + ", ".join(_code(r) for r in f.returns))
    if f.kind not in ("function", "method", "constructor", "lines"):
        if f.bases:
            out.append("- **Bases:** " + ", ".join(_code(b) for b in f.bases))
        if f.members:
            out.append("- **Members:**")
            out += [f"  - {_code(m)}" for m in f.members[:30]]
    else:
        out.append("- **Raises:** " + (", ".join(_code(r) for r in f.raises) if f.raises else "nothing explicit"))
        out.append("- **Calls:** " + (", ".join(_code(c) for c in f.calls) if f.calls else "nothing"))
    out += _detail_lines(f)
    if f.docstring:
        doc = f.docstring.strip().split("\n\n")[0].replace("\n", " ")
        out.append(f"- **Docstring:** {doc}")
    return "\n".join(out) + "\n"


def choose_lead(setting: str, large: bool) -> str:
    if setting in ("facts", "model"):
        return setting
    return "model" if large else "facts"


def choose_style(setting: str, lead: str, facts: Facts) -> str:
    """`summary` for a function explained by a small model (the lead is the facts'): one sentence
    it was trained to write, with the parameters and return written by the facts, so the section
    cannot leave one out or invent one; `prose` otherwise."""
    if setting in ("prose", "summary"):
        return setting if facts.kind in FUNCTION_KINDS or setting == "prose" else "prose"
    return "summary" if lead == "facts" and facts.kind in FUNCTION_KINDS else "prose"


def _names(items: list[str]) -> str:
    shown = [_code(i) for i in items]
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def facts_sentence(f: Facts) -> str:
    """What the function takes, returns and raises, in one sentence from the facts."""
    from demi.assistant.explain_check import parameter_names, returns_value

    params = parameter_names(f)
    parts = [f"takes {_names(params)}" if params else "takes no parameters"]
    returned = [r for r in f.returns if r not in ("(bare return)", "None")]
    if f.yields:
        parts.append("yields values (a generator)")
    elif returned:
        parts.append("returns " + _names(returned[:3]))
    elif returns_value(f) and f.returns_annotation:
        parts.append(f"returns {_code(f.returns_annotation)}")
    else:
        parts.append("returns nothing")
    raised = [r for r in f.raises if r != "re-raises the current exception"]
    if raised:
        parts.append("raises " + _names(raised[:3]))
    return "It " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]) + "."


def explain(
    engine: Any,
    doc: Document,
    symbol: str | None = None,
    lines: tuple[int, int] | None = None,
    max_tokens: int = 320,
    budget: int = 2048,
    lead: str = "auto",
    on_text: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
    sampling: Sampling | None = None,
    time_budget: float | None = None,
    style: str = "auto",
) -> Explanation:
    """Explain a file, a symbol or a line range; `on_text` gets the Markdown as it is written.
    `style`: auto | prose | summary (see `choose_style`)."""
    started = time.monotonic()
    language = doc.lang.fence if doc.lang else None
    target = resolve_target(doc, symbol, lines)
    info = engine.info()
    chosen = choose_lead(lead, info.large)
    shape = choose_style(style, chosen, target.facts)
    name = target.symbol.name if target.symbol is not None else target.label
    frame: Callable[[Facts, CodeContext], ChatPrompt]
    if shape == "summary":
        max_tokens = min(max_tokens, SUMMARY_TOKENS)
        frame = lambda facts, c: summary_prompt(doc.name, facts.kind, name, c.code, language)  # noqa: E731
    else:
        frame = lambda facts, c: explain_prompt(doc.name, language, facts, c)  # noqa: E731
    target, info, ctx, budget = target_context(engine, doc, symbol, lines, max_tokens, budget, frame, target)
    prompt = frame(target.facts, ctx)
    parts: list[str] = []

    def emit(text: str) -> None:
        parts.append(text)
        if on_text:
            on_text(text)

    where = (
        f" › {_code(target.symbol.qualname)}"
        if target.symbol is not None
        else (f" lines {target.first}-{target.last}" if target.kind == "lines" else "")
    )
    emit(f"## {_code(doc.name)}{where}\n\n")
    facts_md = render_facts(target)
    if chosen == "facts":
        emit(facts_md + "\n")
        emit(
            f"### Explanation (written by the model {_code(info.name)}; a small model can be wrong, "
            "so check it against the facts above)\n\n"
        )
    else:
        emit(f"### Explanation (written by the model {_code(info.name)})\n\n")
    started_text = False

    def emit_model(piece: str) -> None:  # leading blank lines from the model would only push the text down
        nonlocal started_text
        if not started_text:
            piece = piece.lstrip()
            started_text = bool(piece)
        if piece:
            emit(piece)

    guard = AnswerLoopGuard(emit_model, cancel)  # a looping explanation is stopped and cut
    result = engine.chat(
        prompt,
        on_text=guard.push,
        max_new_tokens=max_tokens,
        sampling=sampling,
        cancel=guard.token,
        time_budget=time_budget,
    )
    model_text = guard.finish(result.text).lstrip()
    finish_reason = guard.finish_reason(result.finish_reason)
    if not model_text.strip():
        emit("_(the model wrote nothing)_\n")
    elif not model_text.endswith("\n"):
        emit("\n")
    checked_text = model_text
    if shape == "summary":
        line = facts_sentence(target.facts)
        emit(f"\n_From static analysis:_ {line}\n")
        checked_text = f"{model_text}\n{line}"
    consistency = check(checked_text, target.facts, ctx.code) if model_text.strip() else None
    flags = warnings(consistency, target.facts) if consistency is not None else []
    if flags:
        emit("\n" + "".join(f"- {w}\n" for w in flags))
    if chosen == "model":
        emit("\n" + facts_md)
    notes = []
    if ctx.code_cut:
        notes.append(f"the code was cut to fit {budget} tokens")
    if finish_reason == "loop":
        notes.append("the model started repeating itself; the repeats were cut")
    elif finish_reason == "length":
        notes.append(f"the explanation stopped at --max-tokens {max_tokens}")
    if notes:
        text = "; ".join(notes)
        emit(f"\n_{text[0].upper()}{text[1:]}._\n")
    tokens = result.extra.get("completion_tokens", result.completion_tokens)
    return Explanation(
        doc.name,
        target.symbol.qualname if target.symbol else None,
        (target.first, target.last),
        "".join(parts),
        target.facts,
        model_text,
        info.name,
        chosen,
        result.prompt_tokens,
        int(tokens),
        time.monotonic() - started,
        finish_reason,
        notes,
        result.extra.get("speculation"),
        shape,
        consistency,
    )
