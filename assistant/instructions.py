"""What a refactor instruction asks, when it asks for something Demi can do without guessing.

`recognise("rename out to result")` is `Rename("out", "result")`; "add a docstring",
"add type hints", "turn the loop into a comprehension" and "extract the constant 0.08 as
TAX_RATE" have their own intents. Anything else is `None`: free text for the model. Recognition
is by a few patterns, not by a model: a mechanical instruction must be read right or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rename:
    old: str
    new: str
    attribute: bool = False  # "rename self.x to self.y": an attribute of self, not a local


@dataclass(frozen=True)
class AddDocstring:
    pass


@dataclass(frozen=True)
class AddTypeHints:
    pass


@dataclass(frozen=True)
class ToComprehension:
    pass


@dataclass(frozen=True)
class ExtractConstant:
    literal: str | None = None  # the literal named in the instruction ("0.08", '"utf-8"'), if any
    name: str | None = None  # the constant's name, if given


Intent = Rename | AddDocstring | AddTypeHints | ToComprehension | ExtractConstant

_NAME = r"[`'\"]?(?P<{g}>(?:self\.)?[A-Za-z_]\w*)[`'\"]?"
_KIND = r"(?:(?:the|a|local|parameter|param|argument|arg|variable|var|attribute|field|name|of|member)\s+)*"
_TAIL = r"\s*(?:(?:everywhere|throughout|in\s+(?:this|the)\s+(?:function|method|class|code))\s*)?[.!]?\s*$"
_RENAMES = [
    re.compile(
        rf"^(?:please\s+)?rename\s+{_KIND}{_NAME.format(g='old')}\s+(?:to|as|into|->|=>|→)\s+{_KIND}{_NAME.format(g='new')}{_TAIL}",
        re.I,
    ),
    re.compile(
        rf"^(?:please\s+)?call\s+{_KIND}{_NAME.format(g='old')}\s+{_NAME.format(g='new')}(?:\s+instead)?{_TAIL}", re.I
    ),
    re.compile(
        rf"^(?:please\s+)?change\s+(?:the\s+)?name\s+of\s+{_KIND}{_NAME.format(g='old')}\s+to\s+{_NAME.format(g='new')}{_TAIL}",
        re.I,
    ),
    re.compile(
        rf"^(?:please\s+)?replace\s+(?:the\s+)?(?:name|variable|parameter|local|attribute)\s+{_NAME.format(g='old')}\s+with\s+{_NAME.format(g='new')}{_TAIL}",
        re.I,
    ),
    re.compile(rf"^{_NAME.format(g='old')}\s*(?:->|=>|→)\s*{_NAME.format(g='new')}{_TAIL}", re.I),
]
_DOCSTRING = re.compile(
    r"\b(?:add|write|generate|create|insert|give\s+it|needs?)\b.*\bdoc\s*-?strings?\b|^document\b|^docstring\b|"
    r"\badd\s+(?:some\s+)?documentation\b",
    re.I,
)
_HINTS = re.compile(
    r"\b(?:add|write|insert|put|give\s+it|use)\b.*\b(?:type\s*hints?|type\s*annotations?|typing|types)\b|"
    r"^annotate\b|^type[- ]?hint\b",
    re.I,
)
_COMPREHENSION = re.compile(r"\bcomprehension\b", re.I)
_CONSTANT = re.compile(
    r"\b(?:extract|introduce|pull\s+out|move|make|turn|name|replace)\b.*\b(?:constants?|magic\s+(?:numbers?|values?|strings?))\b|"
    r"^constant\b",
    re.I,
)
_LITERAL = re.compile(r"""(?P<lit>(?<![\w.])-?\d[\d_]*(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])|"[^"\n]*"|'[^'\n]*')""")
_CONST_NAME = re.compile(r"\b(?:as|named|called|to|into|name\s+it)\s+[`'\"]?(?P<name>[A-Za-z_]\w*)[`'\"]?", re.I)
_MORE = re.compile(r"[;,]|\b(?:and|then|also|plus|while)\b", re.I)  # a second request: free text, the model's
_NOT_NAMES = {"a", "an", "the", "module", "constant", "constants", "level", "top", "global", "named", "called", "it"}


def recognise(instruction: str) -> Intent | None:
    """The intent of `instruction`, or None when it is free text (the model's job)."""
    text = " ".join(instruction.strip().split())
    for pattern in _RENAMES:
        m = pattern.match(text)
        if m:
            old, new = m.group("old"), m.group("new")
            attribute = old.startswith("self.") or new.startswith("self.")
            return Rename(old.removeprefix("self."), new.removeprefix("self."), attribute)
    asked = [p for p in (_COMPREHENSION, _DOCSTRING, _HINTS, _CONSTANT) if p.search(text)]
    if len(asked) != 1 or re.search(r"\brename\b", text, re.I) or _MORE.search(text.removesuffix(", please")):
        return None  # nothing mechanical, or several things at once: the model's
    if asked[0] is _COMPREHENSION:
        return ToComprehension()
    if asked[0] is _DOCSTRING:
        return AddDocstring()
    if asked[0] is _HINTS:
        return AddTypeHints()
    if asked[0] is _CONSTANT:
        lit = _LITERAL.search(text)
        name = next(
            (m.group("name") for m in _CONST_NAME.finditer(text) if m.group("name").lower() not in _NOT_NAMES), None
        )
        return ExtractConstant(lit.group("lit") if lit else None, name)
    return None


def describe(intent: Intent) -> str:
    """A few words for notes and benchmarks: what was asked."""
    if isinstance(intent, Rename):
        return f"rename {'self.' if intent.attribute else ''}{intent.old} to {intent.new}"
    if isinstance(intent, ExtractConstant):
        return (
            "extract a constant"
            + (f" {intent.literal}" if intent.literal else "")
            + (f" as {intent.name}" if intent.name else "")
        )
    return {
        AddDocstring: "add a docstring",
        AddTypeHints: "add type hints",
        ToComprehension: "loop into a comprehension",
    }[type(intent)]
