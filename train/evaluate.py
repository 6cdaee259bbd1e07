"""FIM line completion on held-out files: exact match and edit similarity.

A sample puts the cursor in a code line, either at its start (after the indentation) or right
after a word inside it, and asks the model for the rest of the line through the caller's
`infill(prefix, suffix, path) -> text` (the CLI passes the session layer's engine, which builds the
model family's prompt with `assistant/fim.py`: the prompt `demi complete` sends); the completion
is cut at the first newline.

- exact match: the completion equals the rest of the line (trailing whitespace ignored);
- edit similarity: 1 - Levenshtein(completion, target) / max(len), in [0, 1].
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

_WORD = re.compile(r"\w+")


@dataclass
class LineSample:
    path: str
    prefix: str
    suffix: str
    target: str
    kind: str  # line_start | mid_line


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, target: str) -> float:
    pred, target = pred.rstrip(), target.rstrip()
    if not pred and not target:
        return 1.0
    return 1.0 - levenshtein(pred, target) / max(len(pred), len(target))


def exact_match(pred: str, target: str) -> bool:
    return pred.rstrip() == target.rstrip()


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


def _cut_prefix(prefix: str, max_chars: int) -> str:
    if len(prefix) <= max_chars:
        return prefix
    cut = prefix[-max_chars:]
    nl = cut.find("\n")
    return cut[nl + 1 :] if 0 <= nl < len(cut) - 1 else cut


def _cut_suffix(suffix: str, max_chars: int) -> str:
    if len(suffix) <= max_chars:
        return suffix
    cut = suffix[:max_chars]
    nl = cut.rfind("\n")
    return cut[: nl + 1] if nl > 0 else cut


def line_samples(
    files: Sequence[tuple[str, str]],
    n: int,
    seed: int = 0,
    mid_line_rate: float = 0.5,
    prefix_chars: int = 2400,
    suffix_chars: int = 800,
    min_target: int = 3,
) -> list[LineSample]:
    """`n` cursor positions drawn from code lines of `files` ((path, text) pairs), deterministic
    for a seed. Blank lines, comment lines and lines with less than `min_target` characters of
    code are not used. The context is cut at line boundaries to `prefix_chars` before and
    `suffix_chars` after the line (about 700 + 230 tokens of Python: what fits the 1,024-token
    prompt budget `demi complete` uses by default)."""
    rng = random.Random(seed)
    candidates: list[tuple[int, int, int]] = []  # (file, line start offset, line end offset)
    for fi, (_, text) in enumerate(files):
        offset = 0
        for line in text.split("\n"):
            code = line.strip()
            if len(code) >= min_target and not code.startswith("#"):
                candidates.append((fi, offset, offset + len(line)))
            offset += len(line) + 1
    if not candidates:
        return []
    picks = rng.sample(candidates, min(n, len(candidates)))
    out = []
    for fi, start, end in picks:
        path, text = files[fi]
        line = text[start:end].rstrip()
        indent = len(line) - len(line.lstrip())
        cursor, kind = start + indent, "line_start"
        if rng.random() < mid_line_rate:
            ends = [m.end() for m in _WORD.finditer(line) if m.end() <= len(line) - min_target and m.start() >= indent]
            if ends:
                cursor, kind = start + rng.choice(ends), "mid_line"
        target = text[cursor : start + len(line)]
        out.append(
            LineSample(
                path,
                _cut_prefix(text[:cursor], prefix_chars),
                _cut_suffix(text[start + len(line) :], suffix_chars),
                target,
                kind,
            )
        )
    return out


def evaluate_fim(
    infill: Callable[[str, str, str], str],
    samples: Sequence[LineSample],
    examples: int = 5,
    on_sample: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run `infill(prefix, suffix, path) -> text` on every sample; exact match and edit similarity
    overall and per cursor kind, plus the first `examples` predictions."""
    started = time.monotonic()
    rows = []
    for i, s in enumerate(samples):
        pred = first_line(infill(s.prefix, s.suffix, s.path))
        rows.append((s, pred, exact_match(pred, s.target), edit_similarity(pred, s.target)))
        if on_sample:
            on_sample(i + 1, len(samples))
    return summarize(rows, examples, time.monotonic() - started)


def summarize(
    rows: list[tuple[LineSample, str, bool, float]], examples: int = 5, seconds: float = 0.0
) -> dict[str, Any]:
    def agg(sel: list[tuple[LineSample, str, bool, float]]) -> dict[str, Any]:
        if not sel:
            return {"samples": 0, "exact_match": None, "edit_similarity": None}
        return {
            "samples": len(sel),
            "exact_match": sum(r[2] for r in sel) / len(sel),
            "edit_similarity": sum(r[3] for r in sel) / len(sel),
        }

    out = agg(rows)
    out["by_kind"] = {k: agg([r for r in rows if r[0].kind == k]) for k in ("line_start", "mid_line")}
    out["examples"] = [
        {
            "path": s.path,
            "kind": s.kind,
            "target": s.target,
            "prediction": p,
            "exact": e,
            "edit_similarity": round(sim, 4),
        }
        for s, p, e, sim in rows[:examples]
    ]
    out["seconds"] = round(seconds, 3)
    return out


def as_dict(sample: LineSample) -> dict[str, str]:
    return asdict(sample)
