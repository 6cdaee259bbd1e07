"""Cutting text to a token budget with the model's own tokenizer, at line boundaries.

A prompt that does not fit is cut where it hurts least: the prefix before the cursor loses
its oldest lines, the suffix its farthest ones. Only a window of characters near the kept end
is ever tokenized, so a 2 MB file costs no more than a short one.

While the user types, the cut must not move with every keystroke: the engine reuses the KV
of the previous prompt only up to the first token that differs, and a prefix that lost its
oldest line (or a suffix that lost its farthest) differs almost from the start. `snap` makes
the cuts move in steps of whole blocks of lines, counted from the file's start for the prefix
and from the cursor for the suffix, so typing leaves both ends where they were until a whole
block has to go.
"""

from __future__ import annotations

from collections.abc import Callable

Counter = Callable[[str], int]

CHARS_PER_TOKEN_MAX = 12  # no tokenizer packs more characters than this into a token on average


def approx_tokens(text: str) -> int:
    """A conservative estimate for when no tokenizer is at hand (about 3 characters per token)."""
    return (len(text) + 2) // 3


def _fits(text: str, budget: int, count: Counter) -> bool:
    return count(text) <= budget if text else True


def keep_tail(text: str, budget: int, count: Counter, snap: int = 0) -> str:
    """The longest run of whole lines at the end of `text` that fits in `budget` tokens; with
    `snap`, the number of lines dropped from the start is rounded up to a multiple of it."""
    if budget <= 0 or not text:
        return ""
    window = text[-budget * CHARS_PER_TOKEN_MAX :]
    if window is text and _fits(text, budget, count):
        return text
    if len(window) < len(text):  # start the window on a line boundary
        cut = window.find("\n")
        window = window[cut + 1 :] if cut >= 0 else window
    lines = window.splitlines(keepends=True)
    kept, used = 0, 0
    for line in reversed(lines):
        c = count(line)
        if used + c > budget:
            break
        kept, used = kept + 1, used + c
    out = "".join(lines[len(lines) - kept :]) if kept else ""
    if not out and lines:  # the last line alone is too long: keep its end
        last = lines[-1]
        out = last[-max(1, budget * 2) :]
    while out and not _fits(out, budget, count):  # merges across lines can add a token or two
        nl = out.find("\n")
        out = out[nl + 1 :] if 0 <= nl < len(out) - 1 else out[len(out) // 4 or 1 :]
    if snap > 1 and out and len(out) < len(text) and text[-len(out) - 1] == "\n":
        dropped = text.count("\n", 0, len(text) - len(out))
        out = _drop_head_lines(out, -dropped % snap)
    return out


def _drop_head_lines(text: str, n: int) -> str:
    """`text` without its first `n` lines, keeping at least its last line."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[min(n, len(lines) - 1) :])


def keep_head(text: str, budget: int, count: Counter, snap: int = 0) -> str:
    """The longest run of whole lines at the start of `text` that fits in `budget` tokens; with
    `snap`, the number of lines kept is rounded down to a multiple of it (while at least one is)."""
    if budget <= 0 or not text:
        return ""
    window = text[: budget * CHARS_PER_TOKEN_MAX]
    if window is text or len(window) == len(text):
        if _fits(text, budget, count):
            return text
    lines = window.splitlines(keepends=True)
    if len(window) < len(text) and lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a line cut by the window is not whole
    kept, used = 0, 0
    for line in lines:
        c = count(line)
        if used + c > budget:
            break
        kept, used = kept + 1, used + c
    out = "".join(lines[:kept])
    if not out and lines:
        out = lines[0][: max(1, budget * 2)]
    while out and not _fits(out, budget, count):
        nl = out.rstrip("\n").rfind("\n")
        out = out[: nl + 1] if nl >= 0 else out[: len(out) * 3 // 4]
    if snap > 1 and out.endswith("\n") and len(out) < len(text):
        lines = out.splitlines(keepends=True)
        keep = len(lines) - len(lines) % snap
        if keep:
            out = "".join(lines[:keep])
    return out


def split_budget(total: int, prefix_need: int, suffix_need: int, ratio: float = 0.75) -> tuple[int, int]:
    """Share `total` between prefix and suffix about `ratio`:1-ratio; a side needing less gives
    the rest to the other (FIM context is roughly 3:1 before:after the cursor)."""
    total = max(0, total)
    want_p = int(total * ratio)
    want_s = total - want_p
    if suffix_need < want_s:
        want_p, want_s = total - suffix_need, suffix_need
    elif prefix_need < want_p:
        want_p, want_s = prefix_need, total - prefix_need
    return max(0, want_p), max(0, want_s)
