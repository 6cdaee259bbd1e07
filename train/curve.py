"""A run's training curve: held-out loss and FIM line exact match against tokens seen, as JSON and
as a table for the model card, so that the next doubling of tokens (or of the model) is decided
from what the last one bought.

The trainer logs every evaluation in RUN/log.jsonl (`eval_loss`, and `fim_exact` with
`--eval-fim-lines`, beside `tokens`); `read_curve` keeps the last record of each step (a resumed
run logs the steps after its checkpoint again), `write_curve` writes RUN/curve.json, and
`update_card` puts the table between two markers in a model card, replacing the previous one:

    demi train curve --run runs/demi-tiny --card MODEL_CARD.md
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from demi.train.errors import ResumeError

CURVE_FORMAT = "demi-train-curve/1"


def read_curve(run_dir: str | Path) -> dict[str, Any]:
    """The evaluation points of a run, in step order, with its name and parameter count."""
    run = Path(run_dir)
    log = run / "log.jsonl"
    if not log.is_file():
        raise ResumeError(f"{run}: no log.jsonl (not a training run, or it has not trained yet)")
    by_step: dict[int, dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line from a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec.get("eval_loss") is not None:
            by_step[rec["step"]] = rec
    points = []
    for step in sorted(by_step):
        rec = by_step[step]
        point = {
            "step": step,
            "tokens": int(rec.get("tokens", 0)),
            "eval_loss": float(rec["eval_loss"]),
            "perplexity": round(math.exp(min(50.0, float(rec["eval_loss"]))), 3),
        }
        if rec.get("fim_exact") is not None:
            point["fim_exact"] = float(rec["fim_exact"])
            point["fim_lines"] = int(rec.get("fim_lines", 0))
        points.append(point)
    name, params = run.name, None
    try:
        spec = json.loads((run / "run.json").read_text(encoding="utf-8"))
        name = spec.get("name") or name
        params = _params(spec)
    except (OSError, ValueError, TypeError):
        pass
    return {"format": CURVE_FORMAT, "run": name, "params": params, "points": points}


def _params(spec: dict[str, Any]) -> int | None:
    """Parameters of the run's model, counted on a meta-device copy (no memory used)."""
    import torch

    from demi.model.config import ModelConfig
    from demi.model.decoder import Transformer

    fields = dict(spec.get("model") or {})
    fields.setdefault("vocab_size", spec.get("vocab_size", 8192))
    try:
        cfg = ModelConfig(**fields)
    except TypeError:
        return None
    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.parameters())


def write_curve(run_dir: str | Path, curve: dict[str, Any] | None = None) -> Path:
    run = Path(run_dir)
    curve = curve or read_curve(run)
    path = run / "curve.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(curve, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def last_doubling(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the last doubling of tokens seen bought: the loss (and exact match) at the last point
    against the point nearest half its tokens. None with too few points."""
    if len(points) < 2 or points[-1]["tokens"] <= 0:
        return None
    last = points[-1]
    half = min(points[:-1], key=lambda p: abs(math.log2(max(p["tokens"], 1) / (last["tokens"] / 2))))
    if half["tokens"] <= 0:
        return None
    out = {
        "from_tokens": half["tokens"],
        "to_tokens": last["tokens"],
        "doublings": round(math.log2(last["tokens"] / half["tokens"]), 2),
        "loss_change": round(last["eval_loss"] - half["eval_loss"], 4),
    }
    if "fim_exact" in last and "fim_exact" in half:
        out["fim_exact_change"] = round(last["fim_exact"] - half["fim_exact"], 4)
    return out


def _tokens(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


def render_markdown(curve: dict[str, Any], max_rows: int = 16) -> str:
    """The curve as a Markdown table (at most `max_rows` points, spread over the run, the last one
    always in) and one line on what the last doubling of tokens bought."""
    points = curve["points"]
    if not points:
        return f"No evaluation logged yet for `{curve['run']}`.\n"
    shown = points
    if len(points) > max_rows:
        picks = {round(i * (len(points) - 1) / (max_rows - 1)) for i in range(max_rows)}
        shown = [points[i] for i in sorted(picks)]
    has_em = any("fim_exact" in p for p in points)
    head = "| tokens seen | step | held-out loss | perplexity |" + (" FIM line exact match |" if has_em else "")
    rule = "| --- | --- | --- | --- |" + (" --- |" if has_em else "")
    lines = [head, rule]
    for p in shown:
        row = f"| {_tokens(p['tokens'])} | {p['step']:,} | {p['eval_loss']:.3f} | {p['perplexity']:.2f} |"
        if has_em:
            em = f" {100 * p['fim_exact']:.1f}% of {p['fim_lines']} |" if "fim_exact" in p else " |"
            row += em
        lines.append(row)
    params = f", {curve['params'] / 1e6:.1f}M parameters" if curve.get("params") else ""
    text = f"Run `{curve['run']}`{params}: held-out loss against tokens seen (`demi train curve`).\n\n"
    text += "\n".join(lines) + "\n"
    d = last_doubling(points)
    if d is not None:
        em = ""
        if "fim_exact_change" in d:
            em = f", exact match {100 * d['fim_exact_change']:+.1f} points"
        text += (
            f"\nFrom {_tokens(d['from_tokens'])} to {_tokens(d['to_tokens'])} tokens ({d['doublings']} doublings): "
            f"held-out loss {d['loss_change']:+.3f}{em}.\n"
        )
    return text


def markers(name: str) -> tuple[str, str]:
    return f"<!-- demi-train-curve:{name}:start -->", f"<!-- demi-train-curve:{name}:end -->"


def update_card(card: str | Path, curve: dict[str, Any], before: str = "## Limitations") -> bool:
    """Write the curve's table into the model card between its markers (replacing what was there),
    or, the first time, as a new section before the heading starting with `before` (else at the
    end). Returns True when the card changed."""
    path = Path(card)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    start, end = markers(curve["run"])
    block = f"{start}\n{render_markdown(curve)}{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        section = f"## Training curve: {curve['run']}\n\n{block}\n\n"
        at = text.find(f"\n{before}")
        new = text[: at + 1] + section + text[at + 1 :] if at >= 0 else text.rstrip("\n") + "\n\n" + section
    if new == text:
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    return True
