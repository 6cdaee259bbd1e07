"""Which licenses may go into a model Demi ships: MIT, BSD, Apache, PSF and ISC.

A package's license is read, in this order, from the `License-Expression` field of its
METADATA (an SPDX expression), the free-text `License` field, and the `License ::` trove
classifiers. An SPDX expression is permissive when it is, read as logic: `A AND B` needs both,
`A OR B` either (the user may pick), `A WITH exception` follows A. Anything unrecognised
(MPL, GPL, CC0, Zlib, "UNKNOWN", no license at all) is *not* permissive: the filter errs on the
side of leaving code out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

# SPDX ids (upper-cased) that count as permissive for a shipped model.
PERMISSIVE_SPDX = frozenset(
    {
        "MIT",
        "MIT-0",
        "BSD-2-CLAUSE",
        "BSD-3-CLAUSE",
        "0BSD",
        "BSD",
        "APACHE",  # a free-text "Apache" with no version (each version is permissive)
        "APACHE-2.0",
        "APACHE-1.1",
        "PSF-2.0",
        "PYTHON-2.0",
        "PYTHON-2.0.1",
        "ISC",
    }
)

# Free-text spellings (License field, classifiers, LICENSE files), matched case-insensitively.
_TEXT_RULES: tuple[tuple[str, str], ...] = (
    (r"\bapache\b.*\b2(\.0)?\b|\bapache ?2(\.0)?\b|\bapache software license\b|\bapache-2\.0\b", "Apache-2.0"),
    # "Apache" with no version: every version of the Apache license is permissive, as "BSD" is
    (r"^\s*apache(\s+licen[cs]e)?\s*$", "Apache"),
    (r"\bpython software foundation\b|\bpsfl?\b|\bpython license\b", "PSF-2.0"),
    (r"\bisc\b", "ISC"),
    (r"\bmit\b|\bexpat\b", "MIT"),
    (r"\bbsd\b", "BSD"),
)
_NON_PERMISSIVE_TEXT = re.compile(
    r"\b(l?gpl|agpl|gnu|mozilla|mpl|eupl|cddl|epl|creative commons|cc-by|"
    r"proprietary|commercial|sspl|busl)\b",
    re.I,
)


@dataclass(frozen=True)
class License:
    """What a package declares (`expression`), how we read it (`spdx`) and the verdict."""

    expression: str  # as declared, e.g. "BSD-3-Clause", "License :: OSI Approved :: MIT License"
    spdx: str  # normalized, e.g. "MIT", "Apache-2.0 OR BSD-2-Clause", "unknown"
    permissive: bool


_OPERATORS = ("OR", "AND")  # SPDX binary operators, loosest first


def _tokens(expr: str) -> list[str]:
    return re.findall(r"\(|\)|[^\s()]+", expr)


def spdx_is_permissive(expr: str) -> bool:
    """Evaluate an SPDX expression: every id permissive under AND, any under OR."""
    toks = _tokens(expr)
    pos = 0

    def parse(level: int = 0) -> bool:
        """Operands joined by _OPERATORS[level] (OR binds loosest), each parsed one level down;
        every operand is parsed (no short circuit) so the whole expression must be well formed."""
        nonlocal pos
        if level == len(_OPERATORS):
            return parse_atom()
        op = _OPERATORS[level]
        values = [parse(level + 1)]
        while pos < len(toks) and toks[pos].upper() == op:
            pos += 1
            values.append(parse(level + 1))
        return any(values) if op == "OR" else all(values)

    def parse_atom() -> bool:
        nonlocal pos
        if pos >= len(toks):
            raise ValueError("expression ends early")
        tok = toks[pos]
        pos += 1
        if tok == "(":
            value = parse()
            if pos >= len(toks) or toks[pos] != ")":
                raise ValueError("unbalanced parenthesis")
            pos += 1
        else:
            value = tok.rstrip("+").upper() in PERMISSIVE_SPDX
        if pos < len(toks) and toks[pos].upper() == "WITH":
            pos += 2  # an exception only adds permissions to its license
        return value

    try:
        result = parse()
    except ValueError:
        return False
    return result and pos == len(toks)


def from_text(text: str) -> str | None:
    """An SPDX-like id for a free-text license name, or None when it is not a permissive one."""
    if not text or _NON_PERMISSIVE_TEXT.search(text):
        return None
    for pattern, spdx in _TEXT_RULES:
        if re.search(pattern, text, re.I):
            return spdx
    return None


def from_metadata(metadata: str) -> License:
    """Read a dist-info METADATA file's text."""
    msg = HeaderParser().parsestr(metadata)
    expr = (msg.get("License-Expression") or "").strip()
    if expr:
        return License(expr, expr, spdx_is_permissive(expr))
    field = (msg.get("License") or "").strip()
    classifiers = [c.split("::", 1)[1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    # (declaration, what it reads as): classifiers by name, less the ones that only qualify others
    declared_as = [(c, from_text(c)) for c in classifiers if c not in _QUALIFIER_CLASSIFIERS]
    lines = [line.strip() for line in field.splitlines() if line.strip()]
    if len(lines) > 1:  # the license's full text (its first line is often a copyright): read its wording
        declared_as.append((lines[0], _full_text_id(field)))
    elif lines and lines[0] != "UNKNOWN":
        declared_as.append((lines[0], from_text(lines[0])))
    if not declared_as:
        return License(field or "", "unknown", False)
    found = [f for _, f in declared_as]
    declared = "; ".join(d for d, _ in declared_as)
    if any(f is None for f in found):  # one non-permissive (or unreadable) declaration is enough to refuse
        return License(declared, "unknown" if all(f is None for f in found) else declared, False)
    return License(declared, " AND ".join(dict.fromkeys(f for f in found if f)), True)


# classifiers that say something of the license named beside them, not a license of their own
_QUALIFIER_CLASSIFIERS = frozenset({"OSI Approved", "DFSG approved"})


def _full_text_id(text: str) -> str | None:
    """A permissive license's id from its full text (a METADATA License field that holds the whole
    license): its first line's name ("MIT License") or else its wording, and no mention of a
    copyleft or proprietary one in its first 2 KB."""
    head = text[:2048]
    if _NON_PERMISSIVE_TEXT.search(head):
        return None
    name = from_text(head.strip().splitlines()[0])
    if name in (None, "Apache"):  # no name, or one without its version: the wording may say more
        return _license_file_id(head) or name
    return name


def from_license_file(root: Path) -> License:
    """Guess a directory's license from a LICENSE/COPYING file at its top (first 2 KB)."""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE.rst", "COPYING", "COPYING.txt", "LICENCE"):
        path = root / name
        if path.is_file():
            try:
                head = path.read_text(encoding="utf-8", errors="replace")[:2048]
            except OSError:
                continue
            spdx = _license_file_id(head)
            return License(f"{name}", spdx or "unknown", spdx is not None)
    return License("", "unknown", False)


def _license_file_id(head: str) -> str | None:
    h = head.lower()
    if "apache license" in h and "2.0" in h:
        return "Apache-2.0"
    if "permission is hereby granted, free of charge" in h:
        return "MIT"
    if "redistribution and use in source and binary forms" in h:
        return "BSD"
    if "permission to use, copy, modify, and/or distribute" in h:
        return "ISC"
    if "python software foundation" in h and "gnu" not in h:
        return "PSF-2.0"
    return None


def named(spdx: str) -> License:
    """A license the user states (`--license MIT`)."""
    return License(spdx, spdx, spdx_is_permissive(spdx))


def from_license_text(name: str, text: str) -> License:
    """A license file's verdict from its first 2 KB (the wording of MIT, BSD, Apache-2.0, ISC, PSF)."""
    spdx = _license_file_id(text[:2048])
    return License(name, spdx or "unknown", spdx is not None)


def from_package_json(manifest: dict) -> License | None:
    """An npm package.json's declaration: `license` as an SPDX expression (or the old object form
    `{"type": ...}`), or the old `licenses` list (a choice among them, read as OR). None when it
    declares nothing or points at a file (`SEE LICENSE IN ...`), so the caller reads the file."""
    declared = manifest.get("license")
    if isinstance(declared, dict):
        declared = declared.get("type")
    if declared is None and isinstance(manifest.get("licenses"), list):
        listed = [x.get("type") if isinstance(x, dict) else x for x in manifest["licenses"]]
        kinds = [k for k in listed if isinstance(k, str) and k.strip()]
        declared = " OR ".join(kinds) if kinds else None
    if not isinstance(declared, str) or not declared.strip():
        return None
    expr = declared.strip()
    if expr.upper() == "UNLICENSED":  # npm's word for "no permission given"
        return License(expr, "UNLICENSED", False)
    if expr.upper().startswith(("SEE LICENSE", "SEE LICENCE")):
        return None
    if len(expr.split()) > 1 and not any(op in expr.split() for op in ("OR", "AND", "WITH")):
        found = from_text(expr)  # a free-text name ("Apache License 2.0")
        return License(expr, found or "unknown", found is not None)
    return License(expr, expr, spdx_is_permissive(expr))
