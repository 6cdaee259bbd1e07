"""The model's explanation checked against the static facts: parameters it invents or leaves
out, and a return value it does not describe.

Static analysis knows a function's parameters and whether it returns a value for certain; a
small model's prose often gets them wrong. `check(text, facts, code)` reads the prose for names
presented as parameters (in backticks, or next to "parameter" / "argument") and compares them
with the facts; `warnings` turns what it finds into lines for the Markdown answer
("⚠ the model mentions `foo`, which `f` does not take"). Only functions are checked: a class,
a file or a line range has no parameter list to hold the prose to.
"""

from __future__ import annotations

import builtins
import keyword
import re
from dataclasses import dataclass, field

from demi.assistant.facts import Facts

FUNCTION_KINDS = ("function", "method", "constructor")
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_BACKTICKED = re.compile(r"`+\s*([A-Za-z_$][\w$]*)\s*(?:[=:][^`]*)?`+")
_PARAM_WORD = r"(?:parameters?|params?|arguments?|args?|inputs?|keyword)"
_AFTER = re.compile(  # "parameter `x`", "argument max_n", "parameter qty." (a plain word only when the phrase ends)
    rf"\b{_PARAM_WORD}\s+(?:named\s+|called\s+)?(?:`([A-Za-z_$][\w$]*)`|([A-Za-z_$][\w$]*)(?=\s*(?:[,.;:)]|\band\b|\bor\b|$)))",
    re.I,
)
_BEFORE = re.compile(rf"(?:\bthe\s+`?|`)([A-Za-z_$][\w$]*)`?\s+{_PARAM_WORD}\b", re.I)
_CODE_LIKE = re.compile(r"`[^`]+`|[\w$]*(?:_|\d|[a-z][A-Z])[\w$]*")
_LIST_AFTER = re.compile(rf"\b{_PARAM_WORD}\s+((?:`?[A-Za-z_$][\w$]*`?\s*(?:,|and|or)\s*)+`?[A-Za-z_$][\w$]*`?)", re.I)
_RETURN_WORDS = re.compile(
    r"\b(?:returns?|returned|returning|yields?|yielded|gives?\s+back|produces?|outputs?|results?\s+in|"
    r"evaluates?\s+to|answers?)\b",
    re.I,
)
_VALUE_VERBS = re.compile(
    r"^\W*(?:gets?|computes?|calculates?|creates?|builds?|constructs?|makes?|finds?|loads?|parses?|converts?|"
    r"generates?|counts?|reads?|formats?|encodes?|decodes?|quotes?|looks?\s+up|checks?\s+whether|tests?\s+whether|"
    r"determines?|is\s+true|tells?\s+whether)\b",
    re.I,
)
_WORDS_NOT_NAMES = {
    "the", "a", "an", "of", "and", "or", "to", "is", "are", "it", "its", "this", "that", "these", "those", "as", "in",
    "on", "for", "with", "by", "from", "at", "each", "every", "all", "any", "some", "one", "two", "no", "not", "given",
    "same", "other", "optional", "default", "first", "second", "third", "last", "single", "extra", "keyword",
    "positional", "named", "called", "list", "which", "whose", "their", "his", "her", "if", "when", "then", "be",
    "passed", "type", "types", "value", "values", "parameter", "parameters", "argument", "arguments", "input",
    "inputs", "param", "params", "arg", "args", "new", "old", "more", "many", "several", "both", "only", "integer",
    "string", "boolean", "dictionary", "number", "numeric", "function", "object", "array", "file", "path", "required",
    "mandatory", "main", "command", "line", "variable", "additional", "remaining", "following", "above",
}  # fmt: skip
_KNOWN = set(dir(builtins)) | set(keyword.kwlist) | {"self", "cls", "true", "false", "null", "undefined", "this"}


def parameter_names(facts: Facts) -> list[str]:
    """The parameters' plain names (`*args` -> args, `{a, b}` -> a, b, `x?` -> x), self and cls aside."""
    out: list[str] = []
    for p in facts.params:
        for name in _IDENT.findall(p.name.split(":")[0].split("=")[0]):
            if name not in ("self", "cls", "this", "mut") and name not in out:
                out.append(name)
    return out


def returns_value(facts: Facts) -> bool:
    """Whether the function hands back a value: a `return` with one, a generator, or a declared
    return type other than None/void."""
    if facts.yields:
        return True
    if facts.returns_annotation and facts.returns_annotation.strip() not in ("None", "void", "()", "NoReturn", "never"):
        return True
    return any(r not in ("(bare return)", "None") for r in facts.returns)


@dataclass
class Consistency:
    """What the prose says against the facts; `checked` is False for targets with no parameters to check."""

    checked: bool
    invented: list[str] = field(default_factory=list)  # presented as parameters, not among them
    unknown: list[str] = field(default_factory=list)  # in backticks, but nowhere in the code
    missing: list[str] = field(default_factory=list)  # parameters the prose never names
    return_missing: bool = False  # returns a value, and the prose does not say so

    @property
    def consistent(self) -> bool:
        return not (self.invented or self.unknown or self.missing or self.return_missing)

    def as_json(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "consistent": self.consistent,
            "invented": self.invented,
            "unknown": self.unknown,
            "missing": self.missing,
            "return_missing": self.return_missing,
        }


def _presented_as_parameters(text: str) -> set[str]:
    found: set[str] = set()
    for m in _AFTER.finditer(text):
        found.add(m.group(1) or m.group(2))
    for m in _LIST_AFTER.finditer(text):  # "arguments `a`, `b` and c_d": code-looking items only
        found.update(_IDENT.findall(" ".join(_CODE_LIKE.findall(m.group(1)))))
    for m in _BEFORE.finditer(text):
        found.add(m.group(1))
    return {w for w in found if w.lower() not in _WORDS_NOT_NAMES}


def check(text: str, facts: Facts, code: str = "") -> Consistency:
    """Hold the model's `text` about the target to the facts (see the module's docstring)."""
    if facts.kind not in FUNCTION_KINDS:
        return Consistency(False)
    params = parameter_names(facts)
    in_code = set(_IDENT.findall(code)) | set(params) | {facts.name.split(".")[-1]}
    out = Consistency(True)
    for name in sorted(_presented_as_parameters(text), key=text.find):
        if name not in params and name not in _KNOWN and name not in out.invented:
            out.invented.append(name)
    for m in _BACKTICKED.finditer(text):
        name = m.group(1)
        if name not in in_code and name not in _KNOWN and name not in out.invented and name not in out.unknown:
            out.unknown.append(name)
    out.missing = [p for p in params if not re.search(rf"(?<![\w$]){re.escape(p)}(?![\w$])", text)]
    if returns_value(facts):
        returned = [r for r in facts.returns if r not in ("(bare return)", "None")]
        says = _RETURN_WORDS.search(text) or _VALUE_VERBS.search(text)
        shows = any(f"`{r}`" in text for r in returned)
        out.return_missing = not (says or shows)
    return out


def warnings(result: Consistency, facts: Facts) -> list[str]:
    """One line per problem, for the Markdown answer (empty when the prose agrees with the facts)."""
    if not result.checked:
        return []
    name = facts.name.split(".")[-1]
    lines = [f"⚠ the model mentions `{w}`, which `{name}` does not take" for w in result.invented]
    lines += [f"⚠ the model mentions `{w}`, which does not appear in the code" for w in result.unknown]
    if result.missing:
        shown = ", ".join(f"`{p}`" for p in result.missing)
        lines.append(
            f"⚠ the model does not mention {shown} (`{name}` takes {'it' if len(result.missing) == 1 else 'them'})"
        )
    if result.return_missing:
        returned = [r for r in facts.returns if r not in ("(bare return)", "None")]
        what = f" (`return {returned[0]}`)" if returned else ""
        lines.append(f"⚠ the model does not say what `{name}` returns{what}")
    return lines
