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
    """`rate`: share of documents transformed; `spm_rate`: share of those in SPM order."""

    rate: float = 0.5
    spm_rate: float = 0.5

    def __post_init__(self) -> None:
        if not (0 <= self.rate <= 1 and 0 <= self.spm_rate <= 1):
            raise ValueError("FIM rate and SPM rate must be in [0, 1]")


def split_points(n: int, rng: random.Random) -> tuple[int, int]:
    """Two cut positions 0 <= a <= b <= n, uniform over characters."""
    a, b = rng.randint(0, n), rng.randint(0, n)
    return (a, b) if a <= b else (b, a)


def fim_segments(prefix: str, middle: str, suffix: str, order: str) -> Sample:
    """One FIM sample from its three parts, ending in <|endoftext|>."""
    if order == "psm":
        return [Special(FIM_PREFIX), prefix, Special(FIM_SUFFIX), suffix, Special(FIM_MIDDLE), middle, Special(EOT)]
    if order == "spm":
        return [Special(FIM_SUFFIX), suffix, Special(FIM_PREFIX), prefix, Special(FIM_MIDDLE), middle, Special(EOT)]
    raise ValueError(f"unknown FIM order {order!r}")


def fim_transform(text: str, rng: random.Random, options: FimOptions = FimOptions()) -> Sample:
    """`text` as a plain sample (`text<|endoftext|>`) or, with probability `options.rate`, a
    character-level FIM sample, SPM with probability `options.spm_rate`.

    The random draws are always the same three (transform?, order?, cut points), whatever the
    outcome, so one document's choice never shifts the next document's.
    """
    do_fim = rng.random() < options.rate
    spm = rng.random() < options.spm_rate
    a, b = split_points(len(text), rng)
    if not do_fim:
        return [text, Special(EOT)]
    return fim_segments(text[:a], text[a:b], text[b:], "spm" if spm else "psm")


def file_head(path: str | None, repo: str | None = None,
              other_files: Sequence[tuple[str, str]] = ()) -> Sample:
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
    out, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if cur and size + len(line) > max_chars:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        out.append("".join(cur))
    return out
