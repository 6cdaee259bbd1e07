"""Context from tree-sitter and plain text: outlines in eight languages, facts, positions, budgets.

No model here: the token counter is a real tokenizer (the tiny byte-level one) where counts
matter, and plain arithmetic elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers_fixture import make_bytelevel_tokenizer

from demi.assistant.budget import keep_head, keep_tail, split_budget
from demi.assistant.context import RecentFiles, code_context, fim_context, used_definitions
from demi.assistant.document import Document, PositionError, parse_line_range, parse_position
from demi.assistant.facts import file_facts, range_facts, symbol_facts
from demi.assistant.files import FileInputError
from demi.assistant.languages import language_for
from demi.assistant.syntax import UnknownSymbolError, parse

SOURCES = {
    "a.py": '''import os
from typing import Any


def add(x: int, y: int = 2, *rest, **kw) -> int:
    """Add two numbers."""
    if x < 0:
        raise ValueError("negative")
    return helper(x) + y


class Box(Base):
    def get(self, key: str) -> Any:
        return self.items[key]
''',
    "a.js": """import fs from "fs";
/** Adds. */
function add(a, b = 2) { if (!a) throw new Error("no"); return a + b; }
const twice = (x) => x * 2;
class Box extends Base { get(k) { return this.items[k]; } }
""",
    "a.ts": """import { A } from "./a";
export function add(a: number, b?: string): Promise<number> { return g(a); }
interface Shape { area(): number; }
export class Box implements Shape { area(): number { return 1; } }
""",
    "a.go": """package main

import "fmt"

// Add adds.
func Add(a int, b ...string) (int, error) { if a < 0 { panic("neg") }; return a, nil }

type Box struct{ X int }

func (b *Box) Get(x int) int { return fmt.Println(x) }
""",
    "a.rs": """use std::io;
/// Adds.
pub fn add(a: i32, b: &str) -> Result<i32, String> { let x = parse(a)?; Ok(x) }
struct Box { x: i32 }
impl Box { fn get(&self, y: i32) -> i32 { self.x + y } }
""",
    "A.java": """import java.util.List;
public class A {
  /** Adds. */
  public static int add(int a, String... b) throws IOException {
    if (a < 0) throw new IllegalStateException();
    return foo(a);
  }
  public A(int x) {}
}
""",
    "a.c": """#include <stdio.h>
/* Adds. */
static int *add(int a, const char *b) { return lookup(a, b); }
struct Box { int x; };
""",
    "a.cpp": """#include <vector>
namespace ns {
class Box { public: int get(int x) const { if (x) throw std::runtime_error("e"); return x; } };
template <typename T> T add(T a, T b = T()) { return a + b; }
}
""",
}

EXPECTED = {  # language, qualified names of the outline, the function `add`'s parameters and return type
    "a.py": ("python", ["add", "Box", "Box.get"], ["x", "y", "*rest", "**kw"], "int"),
    "a.js": ("javascript", ["add", "twice", "Box", "Box.get"], ["a", "b"], None),
    "a.ts": ("typescript", ["add", "Shape", "Shape.area", "Box", "Box.area"], ["a", "b?"], "Promise<number>"),
    "a.go": ("go", ["Add", "Box", "Box.Get"], ["a", "b"], "(int, error)"),
    "a.rs": ("rust", ["add", "Box", "Box", "Box.get"], ["a", "b"], "Result<i32, String>"),
    "A.java": ("java", ["A", "A.add", "A.A"], ["a", "b"], "int"),
    "a.c": ("c", ["add", "Box"], ["a", "b"], "int *"),
    "a.cpp": ("cpp", ["ns", "ns.Box", "ns.Box.get", "ns.add"], ["a", "b"], "T"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("src")
    for name, text in SOURCES.items():
        (d / name).write_text(text, encoding="utf-8")
    return {name: d / name for name in SOURCES}


@pytest.fixture(scope="module")
def count(tmp_path_factory):
    tok = make_bytelevel_tokenizer(tmp_path_factory.mktemp("tok"))
    return lambda text: len(tok.encode(text, add_special_tokens=False))


# -- syntax and facts in every language ----------------------------------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_outline_and_facts_per_language(files, name):
    lang, outline, params, ret = EXPECTED[name]
    doc = Document.load(files[name])
    syn = parse(doc)
    assert doc.lang.name == lang and syn.error_count() == 0
    assert [s.qualname for s in syn.symbols()] == outline
    fn = syn.find("add" if name != "a.go" else "Add")
    facts = symbol_facts(syn, fn)
    assert [p.name for p in facts.params] == params
    assert facts.returns_annotation == ret
    assert syn.imports(), "every sample has an import"


def test_python_facts_are_complete(files):
    syn = parse(Document.load(files["a.py"]))
    f = symbol_facts(syn, syn.find("add"))
    assert f.signature == "def add(x: int, y: int = 2, *rest, **kw) -> int"
    assert [(p.name, p.type, p.default) for p in f.params[:2]] == [("x", "int", None), ("y", "int", "2")]
    assert f.raises == ["ValueError"] and f.calls == ["ValueError", "helper"]
    assert f.returns == ["helper(x) + y"] and f.docstring == "Add two numbers."
    box = symbol_facts(syn, syn.find("Box"))
    assert box.bases == ["Base"] and box.members == ["def get(self, key: str) -> Any"]
    ff = file_facts(syn)
    assert ff.imports == ["import os", "from typing import Any"] and ff.end_line == 14


def test_facts_in_other_languages(files):
    def facts(name, sym):
        syn = parse(Document.load(files[name]))
        return symbol_facts(syn, syn.find(sym))

    assert facts("a.js", "add").raises == ["Error"] and facts("a.js", "add").docstring == "Adds."
    assert facts("a.go", "Add").raises == ['panic("neg")'] and facts("a.go", "Add").docstring == "Add adds."
    assert "propagates errors with `?`" in facts("a.rs", "add").raises
    java = facts("A.java", "add")
    assert "declares `throws IOException`" in java.raises and "IllegalStateException" in java.raises
    assert facts("a.c", "add").calls == ["lookup"] and facts("a.c", "add").docstring == "Adds."
    assert facts("a.cpp", "get").raises == ["std::runtime_error"]
    assert facts("a.ts", "Box").bases == ["Shape"]


def test_find_accepts_qualified_names_and_lists_symbols_when_unknown(files):
    syn = parse(Document.load(files["a.cpp"]))
    assert syn.find("Box::get").qualname == "ns.Box.get" == syn.find("ns.Box.get").qualname
    with pytest.raises(UnknownSymbolError, match=r"no symbol 'nope'; symbols: ns, ns.Box, ns.Box.get, ns.add"):
        syn.find("nope")


def test_enclosing_symbol_and_range_facts(files):
    doc = Document.load(files["a.py"])
    syn = parse(doc)
    assert syn.enclosing(doc.offset(13, 9)).qualname == "Box.get"
    assert syn.enclosing(doc.offset(1, 1)) is None
    rf = range_facts(syn, 7, 9)
    assert rf.raises == ["ValueError"] and "helper" in rf.calls


def test_plain_text_has_no_symbols_but_works(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("alpha beta\n  gamma\n", encoding="utf-8")
    doc = Document.load(p)
    syn = parse(doc)
    assert doc.lang is None and syn.symbols() == [] and syn.imports() == [] and syn.error_count() == 0
    with pytest.raises(UnknownSymbolError, match="no symbols found.*--lines"):
        syn.find("alpha")
    assert "alpha" in syn.identifiers(1, 2)


def test_language_detection():
    assert language_for("x.h", "int f(void);").name == "c"
    assert language_for("x.h", "class K { public: int x; };").name == "cpp"
    assert language_for("tool", "#!/usr/bin/env python3\nprint(1)\n").name == "python"
    assert language_for("x.tsx").name == "tsx" and language_for("README.md") is None


# -- documents and positions ---------------------------------------------------------------------


def test_positions_are_checked(tmp_path):
    doc = Document.from_text("ab\ncdé\n", "x.py")
    assert doc.line_count == 3
    assert doc.offset(2, 4) == 6 and doc.offset(3, 1) == 7  # one past the end of a line; the last empty line
    with pytest.raises(PositionError, match=r"line 4 is outside the file \(lines 1-3\)"):
        doc.offset(4, 1)
    with pytest.raises(PositionError, match=r"column 9 is outside the line \(columns 1-4\)"):
        doc.offset(2, 9)
    assert doc.offset(2, 9, clamp=True) == 6 and doc.offset(9, 1, clamp=True) == 7
    with pytest.raises(PositionError, match="past the end of the file"):
        doc.check_lines(1, 3)
    with pytest.raises(PositionError):
        parse_position("12")
    with pytest.raises(PositionError):
        parse_line_range("5-2")
    assert parse_line_range("7") == (7, 7)


def test_utf16_positions_for_lsp():
    doc = Document.from_text("a😀b\nx\n")
    assert doc.lsp_position(2) == {"line": 0, "character": 3}  # the emoji is two UTF-16 units
    assert doc.offset_utf16(0, 3) == 2


def test_bad_files(tmp_path):
    (tmp_path / "bin").write_bytes(b"\x7fELF\x00\x01")
    (tmp_path / "big.py").write_bytes(b"x = 1\n" * 400_000)
    (tmp_path / "bad.py").write_bytes(b"s = 'caf\xc3 \xff'\ndef f():\n    return 1\n")
    with pytest.raises(FileInputError, match="binary"):
        Document.load(tmp_path / "bin")
    with pytest.raises(FileInputError, match="over the 2 MB limit"):
        Document.load(tmp_path / "big.py")
    with pytest.raises(FileInputError, match="no such file"):
        Document.load(tmp_path / "missing.py")
    doc = Document.load(tmp_path / "bad.py")
    assert doc.lossy and "\ufffd" in doc.text
    assert parse(doc).find("f").start_line == 2  # still parsed


# -- budgets and context -------------------------------------------------------------------------


def test_keep_tail_and_head_cut_at_lines(count):
    text = "".join(f"value_{i} = compute({i})\n" for i in range(200))
    tail = keep_tail(text, 40, count)
    assert count(tail) <= 40 and text.endswith(tail) and tail.startswith("value_")
    head = keep_head(text, 40, count)
    assert count(head) <= 40 and text.startswith(head) and head.endswith("\n")
    assert keep_tail(text, 0, count) == "" and keep_head("short\n", 100, count) == "short\n"
    assert split_budget(100, 1000, 1000) == (75, 25)
    assert split_budget(100, 1000, 10) == (90, 10) and split_budget(100, 5, 1000) == (5, 95)


def test_fim_context_splits_about_three_to_one(count):
    text = "".join(f"line_{i} = {i}\n" for i in range(400))
    doc = Document.from_text(text, "big.py")
    offset = doc.line_start(200)
    ctx = fim_context(doc, offset, count, 200, parse(doc))
    p, s = count(ctx.prefix), count(ctx.suffix)
    assert 170 <= p + s <= 200 and 2.5 <= p / s <= 4  # whole lines only, so not exactly 3:1
    assert text[:offset].endswith(ctx.prefix) and text[offset:].startswith(ctx.suffix)
    assert ctx.prefix_cut and ctx.suffix_cut


def test_fim_context_brings_definitions_the_cut_dropped(count):
    body = "".join(f"filler_{i} = {i}\n" for i in range(150))
    text = "def scale(v, factor=2):\n    return v * factor\n\n" + body + "result = scale("
    doc = Document.from_text(text, "m.py")
    ctx = fim_context(doc, len(text), count, 200, parse(doc))
    assert "def scale" not in ctx.prefix
    assert ctx.other_files and "def scale(v, factor=2):" in ctx.other_files[-1][1]


def test_recent_files_ring_buffer_and_snippets():
    ring = RecentFiles(capacity=2)
    ring.add("a.py", "def parse_config(path):\n    return load_yaml(path)\n")
    ring.add("b.py", "unrelated = 1\n")
    ring.add("c.py", "def load_yaml(path):\n    import yaml\n    return yaml.safe_load(open(path))\n")
    assert ring.paths() == ["b.py", "c.py"]  # the oldest fell out
    snips = ring.snippets("config = load_yaml(path)", exclude="x.py")
    assert snips and snips[0].path == "c.py"


def test_code_context_outline_and_used_definitions(files, count):
    doc = Document.load(files["a.py"])
    syn = parse(doc)
    sym = syn.find("Box.get")
    ctx = code_context(doc, syn, sym.start_line, sym.end_line, count, 400, sym)
    assert ctx.code.startswith("    def get") and not ctx.code_cut
    assert any("def add" in line for line in ctx.outline) and "import os" in ctx.imports
    uses = used_definitions(syn, 5, 9)
    assert [s.name for s in uses] == []  # `helper` is not defined in this file


def test_a_definition_holding_the_cursor_is_never_copied_ahead_of_the_prefix():
    """Its text is the code being typed: copied into the prompt's head it would change the prompt's
    start at every keystroke (seen on a held-out file: one character moved the prompt 330 tokens in)."""
    code = "def helper(x):\n    return x\n\n\ndef test_pipe(self):\n    helper(1)\n    \n    test_pipe(2)\n"
    syn = parse(Document.from_text(code, "t.py"))
    names = {s.name for s in used_definitions(syn, 1, 8)}
    assert names == {"helper", "test_pipe"}  # without the cursor: both are used near these lines
    names = {s.name for s in used_definitions(syn, 1, 8, cursor_line=7)}
    assert names == {"helper"}


def test_fim_cuts_stay_put_while_typing(count):
    """Typing at the cursor appends to the prompt; the cut ends must not move with each keystroke,
    or the prefix cache could reuse almost nothing (the prompt would differ near its start)."""
    head = "".join(f"before_{i} = compute({i}, 'x')\n" for i in range(300))
    tail = "".join(f"after_{i} = compute({i}, 'y')\n" for i in range(300))
    typed = "    result = transform(before_12, after_7, mode='fast')"
    starts, ends = set(), set()
    for n in range(len(typed) + 1):
        text = head + typed[:n] + "\n" + tail
        doc = Document.from_text(text, "typing.py")
        offset = len(head) + n
        ctx = fim_context(doc, offset, count, 600, parse(doc))
        assert text[:offset].endswith(ctx.prefix) and text[offset:].startswith(ctx.suffix)
        assert count(ctx.prefix) + count(ctx.suffix) <= 600
        starts.add(offset - len(ctx.prefix))
        ends.add(len(ctx.suffix))
    # 50-odd keystrokes: the prefix start moves at most once (a whole block at a time), the suffix
    # end at most once; without snapping both would move every few keystrokes.
    assert len(starts) <= 2 and len(ends) <= 2, (starts, ends)


def test_snapped_cuts_still_fit_and_keep_the_cursor_line(count):
    text = "".join(f"value_{i} = compute({i})\n" for i in range(200)) + "partial = comp"
    tail = keep_tail(text, 200, count, snap=4)
    assert tail.endswith("partial = comp") and count(tail) <= 200 and tail.count("\n") >= 6
    assert text.count("\n", 0, len(text) - len(tail)) % 4 == 0
    assert keep_tail(text, 40, count, snap=64) == "partial = comp"  # a block bigger than what fits
    head = keep_head("".join(f"v_{i} = {i}\n" for i in range(200)), 400, count, snap=16)
    assert head.count("\n") % 16 == 0 and count(head) <= 400 and head.count("\n") >= 16
