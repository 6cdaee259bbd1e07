"""Short texts for the screen: one-line errors, speeds, model names, sidebar labels.

Pure functions, so every part of the app words these things the same way.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from rich.text import Text


def one_line(exc: BaseException) -> str:
    """An error as one line: the screen has room for a sentence, not a traceback."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def fmt_speed(tokens: int, tps: float | None) -> str:
    """An answer's size and speed, for its meta line."""
    return f"{tokens} tokens" + (f" · {tps:.1f} tok/s" if tps else "")


def model_label(name: str) -> str:
    """A model's name for the screen: a local directory by its folder name, anything else as given."""
    p = Path(name).expanduser()
    return p.name if ("/" in name or "\\" in name) and p.is_dir() else name


def clip(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters (the sidebar is narrow)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def marked(snippet: str) -> Text:
    """A search snippet with the store's [match] markers shown as highlights."""
    out = Text(style="dim")
    for i, part in enumerate(re.split(r"\[([^\[\]\n]+)\]", snippet)):
        out.append(part, style="bold reverse" if i % 2 else "")
    return out


def day_label(t: float) -> str:
    """When a session was last used, as a person says it: today, yesterday, or the date."""
    day = _dt.date.fromtimestamp(t)
    today = _dt.date.today()
    if day == today:
        return "today"
    if (today - day).days == 1:
        return "yesterday"
    return day.isoformat()
