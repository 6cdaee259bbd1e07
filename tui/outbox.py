"""Messages typed while Demi answers: queued, shown above the message box, sent in order after it.

Why: the box stays live while an answer streams, and a message written then should not have to wait
in the box (or be lost to a refusal) until the user notices the answer has ended."""

from __future__ import annotations

from rich.text import Text


class Outbox:
    """The queue itself (texts as typed, commands included)."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    def add(self, text: str) -> None:
        self.items.append(text)

    def pop(self) -> str | None:
        return self.items.pop(0) if self.items else None

    def take_all(self) -> list[str]:
        items, self.items = self.items, []
        return items

    def describe(self, width: int = 80) -> Text:
        """What the strip above the box shows: each queued text on one line."""
        out = Text("queued, sent when the answer ends (esc stops it and brings them back here):", style="dim")
        for i, text in enumerate(self.items, 1):
            line = " ".join(text.split())
            line = line if len(line) <= width - 6 else line[: width - 7] + "…"
            out.append(f"\n {i}. ", style="dim")
            out.append(line)
        return out


def back_in_box(texts: list[str], draft: str) -> str:
    """The box's new text when queued messages come back: them (a blank line apart), then the draft."""
    parts = [t.strip("\n") for t in texts] + ([draft] if draft.strip() else [])
    return "\n\n".join(parts)
