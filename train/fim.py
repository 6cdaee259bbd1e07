"""Fill-in-the-middle training samples, in exactly the layout `assistant/fim.py` sends demi-tiny.

A document is cut at two character positions drawn uniformly (so a cut can fall inside a word,
as a cursor can) into prefix, middle and suffix, and written in one of two orders:

    PSM  <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>{middle}<|endoftext|>
    SPM  <|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>{middle}<|endoftext|>

Inference (`FimTemplate.build` for demi-tiny) writes everything up to `<|fim_middle|>` the same
way, optionally after a repository head: `<|repo_name|>{repo}\\n`, then for each other file
`<|file_sep|>{path}\\n{content}\\n`, then `<|file_sep|>{path}\\n` for the current file. Repository
samples here have that head too, so the model sees at training time what it is sent later.

Samples are lists of segments: a `str` is raw text (tokenized with special-token strings
treated as plain text, so a file that mentions "<|endoftext|>" cannot inject a control token),
a `Special` is one special token. `render` joins them into the text a prompt would be.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

EOT = "<|endoftext|>"
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"
REPO_NAME, FILE_SEP = "<|repo_name|>", "<|file_sep|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Special:
    token: str


Segment = str | Special
Sample = list[Segment]


@dataclass(frozen=True)
class FimOptions:
    """`rate`: share of documents transformed; `spm_rate`: share of those in SPM order;
    `line_rate`: share of those whose hole is an editor's (`line_split_points`) rather than two
    uniform cuts."""

    rate: float = 0.5
    spm_rate: float = 0.5
    line_rate: float = 0.0

    def __post_init__(self) -> None:
        if not all(0 <= r <= 1 for r in (self.rate, self.spm_rate, self.line_rate)):
            raise ValueError("FIM rate, SPM rate and line rate must be in [0, 1]")


def split_points(n: int, rng: random.Random) -> tuple[int, int]:
    """Two cut positions 0 <= a <= b <= n, uniform over characters."""
    a, b = rng.randint(0, n), rng.randint(0, n)
    return (a, b) if a <= b else (b, a)


_WORD_END = re.compile(r"\w\b")


def line_split_points(text: str, rng: random.Random, max_extra_lines: int = 4) -> tuple[int, int]:
    """A hole the way an editor asks for one: the cursor in a non-blank line (after its
    indentation, right after a word, or at any character of it, 40/40/20), the middle running to
    the end of that line and, a third of the time, 1 to `max_extra_lines` lines further, so the
    suffix starts with the line break. Two uniform cuts (`split_points`) make middles of about a
    third of the document that rarely end where a line does, which is not what completing the
    current line asks; both kinds are trained. A text with no non-blank line gets uniform cuts."""
    spans, offset = [], 0
    for line in text.split("\n"):
        if line.strip():
            spans.append((offset, offset + len(line)))
        offset += len(line) + 1
    if not spans:
        return split_points(len(text), rng)
    k = rng.randrange(len(spans))
    start, end = spans[k]
    line = text[start:end]
    code_at = start + len(line) - len(line.lstrip())
    kind = rng.random()
    a = code_at
    if kind >= 0.8:
        a = rng.randint(code_at, end)
    elif kind >= 0.4:
        ends = [start + m.end() for m in _WORD_END.finditer(line) if start + m.end() > code_at]
        a = rng.choice(ends) if ends else code_at
    b = end
    if rng.random() < 1 / 3:
        later = [e for _, e in spans[k + 1 : k + 1 + max_extra_lines]]
        if later:
            b = later[rng.randrange(len(later))]
    return a, b


def fim_segments(prefix: str, middle: str, suffix: str, order: str) -> Sample:
    """One FIM sample from its three parts, ending in <|endoftext|>."""
    if order == "psm":
        return [Special(FIM_PREFIX), prefix, Special(FIM_SUFFIX), suffix, Special(FIM_MIDDLE), middle, Special(EOT)]
    if order == "spm":
        return [Special(FIM_SUFFIX), suffix, Special(FIM_PREFIX), prefix, Special(FIM_MIDDLE), middle, Special(EOT)]
    raise ValueError(f"unknown FIM order {order!r}")


def fim_transform(text: str, rng: random.Random, options: FimOptions = FimOptions()) -> Sample:
    """`text` as a plain sample (`text<|endoftext|>`) or, with probability `options.rate`, a
    character-level FIM sample, SPM with probability `options.spm_rate`, its hole an editor's
    (`line_split_points`) with probability `options.line_rate`.

    The random draws are always the same three (transform?, order?, cut points), whatever the
    outcome, so one document's choice never shifts the next document's.
    """
    do_fim = rng.random() < options.rate
    spm = rng.random() < options.spm_rate
    a, b = split_points(len(text), rng)
    if options.line_rate > 0:  # (drawn only then: runs without line holes keep their old draws)
        line_hole = rng.random() < options.line_rate
        sub = random.Random(rng.getrandbits(64))  # a line hole's varying draws stay out of `rng`
        if do_fim and line_hole:
            a, b = line_split_points(text, sub)
    if not do_fim:
        return [text, Special(EOT)]
    return fim_segments(text[:a], text[a:b], text[b:], "spm" if spm else "psm")


def file_head(path: str | None, repo: str | None = None, other_files: Sequence[tuple[str, str]] = ()) -> Sample:
    """The repository head `FimTemplate.build` writes before the FIM part (see the module doc)."""
    out: Sample = []
    if repo is not None:
        out += [Special(REPO_NAME), f"{repo}\n"]
    for p, content in other_files:
        out += [Special(FILE_SEP), f"{p}\n{content}" + ("" if content.endswith("\n") else "\n")]
    if path is not None:
        out += [Special(FILE_SEP), f"{path}\n"]
    return out


def render(sample: Sample) -> str:
    """The sample as one string (special tokens written out), as a prompt would be."""
    return "".join(s.token if isinstance(s, Special) else s for s in sample)


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split a long file at line boundaries into pieces of at most about `max_chars` characters
    (a single longer line stays whole), so a FIM sample fits in a training sequence."""
    if len(text) <= max_chars:
        return [text]
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if cur and size + len(line) > max_chars:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        out.append("".join(cur))
    return out
