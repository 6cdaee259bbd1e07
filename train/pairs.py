"""Docstring-to-code and code-to-docstring samples, drawn from the corpus with `ast`.

For each function or method with a docstring whose first sentence says something, two chat
samples in the tokenizer's ChatML layout (`<|im_start|>role\\ncontent<|im_end|>\\n`):

- code -> doc: the function *without* its docstring, and the question what it does; the answer is
  the docstring's summary sentence. This is what `demi explain` asks a small model.
- doc -> code: the summary and the signature; the answer is the whole function in a fence.

Only training files are used (never held-out ones), so evaluation stays clean.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from demi.train.corpus import Document
from demi.train.fim import EOT, IM_END, IM_START, Sample, Special

SYSTEM = "You are Demi, a coding assistant. Answer in concise Markdown."
_EXPLAIN_ASKS = (
    "What does the function `{name}` do? Answer in one sentence.",
    "Explain the function `{name}` from `{path}` in one sentence.",
    "Explain the function `{name}` from `{path}` to a programmer reading it for the first time. Keep it short.",
    "Summarize what `{name}` does.",
)
_WRITE_ASKS = (
    "Write a Python function `{signature}` that does this: {summary}",
    "Implement `{signature}`. {summary}",
    "In `{path}`, write `{signature}`: {summary}",
)


@dataclass
class FunctionDoc:
    path: str
    name: str
    signature: str
    summary: str
    code: str  # the whole definition, dedented
    code_without_doc: str


def summary_of(docstring: str, max_chars: int = 300) -> str | None:
    """The first paragraph, whitespace collapsed, cut to its first sentence when long; None when
    too short or not prose (doctest, parameter list, a bare signature)."""
    para = docstring.strip().split("\n\n", 1)[0]
    text = " ".join(para.split())
    if len(text) > max_chars:
        m = re.match(r"(.{20,}?[.!?])\s", text)
        text = m.group(1) if m else ""
    if len(text) < 12 or text.startswith((">>>", ":", "@", "(")) or " " not in text:
        return None
    if re.match(r"^[\w.]+\(.*\)( ->.*)?$", text):  # "f(a, b) -> c" restating the signature
        return None
    return text


def functions(doc: Document, max_lines: int = 60) -> Iterator[FunctionDoc]:
    """Functions and methods of a file that have a useful docstring."""
    try:
        tree = ast.parse(doc.text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return
    lines = doc.text.splitlines(keepends=True)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        docstring = ast.get_docstring(node, clean=True)
        if not docstring or node.end_lineno is None:
            continue
        summary = summary_of(docstring)
        if summary is None:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        end = node.end_lineno
        if end - start + 1 > max_lines or len(node.body) < 2:
            continue  # too long for a sample, or nothing but the docstring
        first = node.body[0]
        if first.lineno == node.lineno or first.end_lineno is None:
            continue  # `def f(): """doc"""; ...` on one line: no clean cut
        code = textwrap.dedent("".join(lines[start - 1 : end]))
        without = textwrap.dedent("".join(lines[start - 1 : first.lineno - 1] + lines[first.end_lineno : end]))
        header = textwrap.dedent("".join(lines[node.lineno - 1 : node.body[0].lineno - 1])).strip()
        signature = header.removeprefix("async ").removeprefix("def ").rstrip(":").strip()
        if not signature.startswith(node.name) or "\n" in signature or len(signature) > 120:
            signature = f"{node.name}(...)"
        yield FunctionDoc(doc.path, node.name, signature, summary, code.rstrip() + "\n", without.rstrip() + "\n")


def _turn(role: str, content: str) -> Sample:
    return [Special(IM_START), f"{role}\n{content}", Special(IM_END), "\n"]


def chat_sample(user: str, assistant: str, system: str | None) -> Sample:
    out: Sample = []
    if system:
        out += _turn("system", system)
    return out + _turn("user", user) + _turn("assistant", assistant) + [Special(EOT)]


def pair_samples(fn: FunctionDoc, rng: random.Random) -> list[Sample]:
    """The code->doc and doc->code samples for one function (phrasing drawn from `rng`)."""
    system = SYSTEM if rng.random() < 0.5 else None
    ask = rng.choice(_EXPLAIN_ASKS).format(name=fn.name, path=fn.path)
    explain = chat_sample(f"{ask}\n\n```python\n{fn.code_without_doc}```", fn.summary, system)
    write = rng.choice(_WRITE_ASKS).format(signature=fn.signature, summary=fn.summary, path=fn.path)
    code = chat_sample(write, f"```python\n{fn.code}```", system)
    return [explain, code]


def extract_pairs(docs: Sequence[Document], seed: int = 0, max_per_file: int = 20) -> list[Sample]:
    """Pair samples for every documented function of `docs`, deterministic for a seed."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for doc in docs:
        fns = list(functions(doc))
        if len(fns) > max_per_file:
            fns = rng.sample(fns, max_per_file)
        for fn in fns:
            out += pair_samples(fn, rng)
    return out
