"""Functions the refactor and explain benchmarks run on: the examples/ files, and functions of the
standard-library files demi-tiny's corpus held out (its manifest's `heldout` list), which the
model never trained on.

Standard library only plus Demi's own syntax layer (tree-sitter), so the choice of functions does
not depend on the tools being measured: a function qualifies for an instruction by its text
(it has a local to rename, a loop that appends, a literal...), never by whether Demi can do it.
"""

from __future__ import annotations

import json
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from demi.assistant.document import Document
from demi.assistant.syntax import Symbol, parse

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "model" / "builtin" / "demi-tiny" / "manifest.json"
EXAMPLES = ROOT / "examples"


@dataclass
class Function:
    path: Path
    doc: Document
    symbol: Symbol
    code: str  # the definition's text
    heldout: bool

    @property
    def label(self) -> str:
        where = self.path.name if not self.heldout else "/".join(self.path.parts[-2:])
        return f"{where}:{self.symbol.qualname}"


def heldout_files(manifest: Path = MANIFEST) -> list[Path]:
    """The held-out standard-library files that exist on this machine (the manifest's root first,
    then this interpreter's standard library)."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    roots = [Path(s["root"]) for s in data["sources"] if s.get("name") == "cpython-stdlib"]
    roots.append(Path(sysconfig.get_paths()["stdlib"]))
    out = []
    for item in data["heldout"]:
        if not item.startswith("cpython-stdlib/"):
            continue
        rel = item.removeprefix("cpython-stdlib/")
        found = next((r / rel for r in roots if (r / rel).is_file()), None)
        if found is not None:
            out.append(found)
    return out


def functions(paths: list[Path], heldout: bool, min_lines: int = 3, max_lines: int = 40) -> list[Function]:
    """Every function and method of `paths` between `min_lines` and `max_lines` long."""
    out = []
    for path in paths:
        try:
            doc = Document.load(path)
        except Exception:  # unreadable: not a benchmark's business
            continue
        syntax = parse(doc)
        for sym in syntax.symbols():
            if sym.kind not in ("function", "method") or sym.node is None or sym.node.type != "function_definition":
                continue
            if not min_lines <= sym.end_line - sym.start_line + 1 <= max_lines:
                continue
            start, end = doc.line_span(sym.start_line, sym.end_line)
            out.append(Function(path, doc, sym, doc.text[start:end], heldout))
    return out


def sample(items: list[Function], n: int, seed: int = 0) -> list[Function]:
    """`n` of `items`, the same ones on every run (examples first: all of them)."""
    examples = [f for f in items if not f.heldout]
    rest = sorted((f for f in items if f.heldout), key=lambda f: f.label)
    random.Random(seed).shuffle(rest)
    return examples + rest[: max(0, n - len(examples))] if n > len(examples) else examples[:n]


_DOCSTRING = re.compile(r'^\s*[rRuU]?("""|\'\'\')', re.M)


def has_docstring(code: str) -> bool:
    _, _, body = code.partition(":\n")
    first = next((ln for ln in body.splitlines() if ln.strip()), "")
    return bool(_DOCSTRING.match(first))
