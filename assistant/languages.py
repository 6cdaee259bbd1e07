"""Which tree-sitter grammar reads a file, and what its node types mean to Demi.

One table per language maps grammar node types to the few roles the tasks need: definitions
(and their kind), imports, calls, raises, returns, comments, and wrappers (decorators, export,
template) whose range belongs to the definition inside. Grammars load lazily and are cached;
a file with no known language is handled as plain text by every task.

The web languages read differently: HTML and Vue single-file components are markup (elements,
not definitions; `web_syntax.py`), CSS is rules, and HTML, Vue and MDX embed other languages
(`<script>`, `<style>`, JSX blocks, fenced code) that `embedded.py` finds and parses on their own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LangSpec:
    name: str
    module: str
    func: str
    extensions: tuple[str, ...]
    definitions: dict[str, str]  # node type -> kind
    imports: frozenset[str]
    calls: frozenset[str]
    raises: frozenset[str]
    returns: frozenset[str]
    comments: frozenset[str]
    wrappers: frozenset[str] = frozenset()
    line_comment: str = "//"
    block_open: str = "{"  # what ends a line that opens a block
    fence: str = field(default="")
    block_comment: tuple[str, str] | None = None  # told to the bracket scanner (CSS, HTML)

    @property
    def indent_blocks(self) -> bool:
        """Python: blocks are indentation, not braces."""
        return self.block_open == ":"

    @property
    def markup(self) -> bool:
        """HTML and Vue: blocks are elements, opened and closed by tags."""
        return self.name in MARKUP

    @property
    def embeds(self) -> bool:
        """HTML, Vue and MDX hold regions in other languages (see embedded.py)."""
        return self.name in EMBEDDING

    @property
    def jsx(self) -> bool:
        """JavaScript and TSX may hold JSX elements."""
        return self.name in ("javascript", "tsx")


MARKUP = frozenset({"html", "vue"})
EMBEDDING = frozenset({"html", "vue", "mdx"})


_C_LIKE_COMMENTS = frozenset({"comment", "line_comment", "block_comment"})

_JS_DEFS = {
    "function_declaration": "function",
    "generator_function_declaration": "function",
    "method_definition": "method",
    "class_declaration": "class",
    "class": "class",
    "variable_declarator": "function",
}  # only when its value is a function (see syntax)
_TS_DEFS = {
    **_JS_DEFS,
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "abstract_class_declaration": "class",
    "method_signature": "method",
    "function_signature": "function",
    "abstract_method_signature": "method",
    "internal_module": "namespace",
    "module": "namespace",
}
_C_DEFS = {
    "function_definition": "function",
    "struct_specifier": "struct",
    "union_specifier": "union",
    "enum_specifier": "enum",
    "type_definition": "type",
}

LANGUAGES: dict[str, LangSpec] = {
    s.name: s
    for s in (
        LangSpec(
            "python",
            "tree_sitter_python",
            "language",
            (".py", ".pyi", ".pyw"),
            {"function_definition": "function", "class_definition": "class"},
            frozenset({"import_statement", "import_from_statement", "future_import_statement"}),
            frozenset({"call"}),
            frozenset({"raise_statement"}),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset({"decorated_definition"}),
            line_comment="#",
            block_open=":",
            fence="python",
        ),
        LangSpec(
            "javascript",
            "tree_sitter_javascript",
            "language",
            (".js", ".mjs", ".cjs", ".jsx"),
            _JS_DEFS,
            frozenset({"import_statement"}),
            frozenset({"call_expression", "new_expression"}),
            frozenset({"throw_statement"}),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset({"export_statement"}),
            fence="javascript",
        ),
        LangSpec(
            "typescript",
            "tree_sitter_typescript",
            "language_typescript",
            (".ts", ".mts", ".cts"),
            _TS_DEFS,
            frozenset({"import_statement"}),
            frozenset({"call_expression", "new_expression"}),
            frozenset({"throw_statement"}),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset({"export_statement"}),
            fence="typescript",
        ),
        LangSpec(
            "tsx",
            "tree_sitter_typescript",
            "language_tsx",
            (".tsx",),
            _TS_DEFS,
            frozenset({"import_statement"}),
            frozenset({"call_expression", "new_expression"}),
            frozenset({"throw_statement"}),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset({"export_statement"}),
            fence="tsx",
        ),
        LangSpec(
            "go",
            "tree_sitter_go",
            "language",
            (".go",),
            {"function_declaration": "function", "method_declaration": "method", "type_spec": "type"},
            frozenset({"import_declaration"}),
            frozenset({"call_expression"}),
            frozenset(),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset(),
            fence="go",
        ),
        LangSpec(
            "rust",
            "tree_sitter_rust",
            "language",
            (".rs",),
            {
                "function_item": "function",
                "function_signature_item": "function",
                "struct_item": "struct",
                "enum_item": "enum",
                "union_item": "union",
                "trait_item": "trait",
                "impl_item": "impl",
                "mod_item": "module",
                "macro_definition": "macro",
                "type_item": "type",
            },
            frozenset({"use_declaration", "extern_crate_declaration"}),
            frozenset({"call_expression", "macro_invocation"}),
            frozenset(),
            frozenset({"return_expression"}),
            frozenset({"line_comment", "block_comment"}),
            frozenset(),
            fence="rust",
        ),
        LangSpec(
            "java",
            "tree_sitter_java",
            "language",
            (".java",),
            {
                "class_declaration": "class",
                "interface_declaration": "interface",
                "enum_declaration": "enum",
                "record_declaration": "record",
                "annotation_type_declaration": "interface",
                "method_declaration": "method",
                "constructor_declaration": "constructor",
            },
            frozenset({"import_declaration"}),
            frozenset({"method_invocation", "object_creation_expression"}),
            frozenset({"throw_statement"}),
            frozenset({"return_statement"}),
            frozenset({"line_comment", "block_comment"}),
            frozenset(),
            fence="java",
        ),
        LangSpec(
            "c",
            "tree_sitter_c",
            "language",
            (".c",),
            _C_DEFS,
            frozenset({"preproc_include"}),
            frozenset({"call_expression"}),
            frozenset(),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset(),
            fence="c",
        ),
        LangSpec(
            "cpp",
            "tree_sitter_cpp",
            "language",
            (".cc", ".cpp", ".cxx", ".c++", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp"),
            {**_C_DEFS, "class_specifier": "class", "namespace_definition": "namespace"},
            frozenset({"preproc_include", "using_declaration"}),
            frozenset({"call_expression", "new_expression"}),
            frozenset({"throw_statement"}),
            frozenset({"return_statement"}),
            frozenset({"comment"}),
            frozenset({"template_declaration"}),
            fence="cpp",
        ),
        # The web languages: their symbols come from web_syntax.py, not from `definitions`.
        LangSpec(
            "html",
            "tree_sitter_html",
            "language",
            (".html", ".htm", ".shtml"),
            {},
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset({"comment"}),
            line_comment="",
            block_open=">",
            fence="html",
            block_comment=("<!--", "-->"),
        ),
        LangSpec(  # a Vue single-file component reads as HTML: <template>, <script>, <style>
            "vue",
            "tree_sitter_html",
            "language",
            (".vue",),
            {},
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset({"comment"}),
            line_comment="",
            block_open=">",
            fence="vue",
            block_comment=("<!--", "-->"),
        ),
        LangSpec(
            "css",
            "tree_sitter_css",
            "language",
            (".css",),
            {},
            frozenset({"import_statement"}),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset({"comment"}),
            line_comment="",
            fence="css",
            block_comment=("/*", "*/"),
        ),
        LangSpec(  # Markdown (headings) with JSX blocks and import/export lines
            "mdx",
            "tree_sitter_markdown",
            "language",
            (".mdx",),
            {},
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            frozenset(),
            line_comment="",
            block_open="",
            fence="mdx",
        ),
    )
}

_BY_EXT = {ext: spec for spec in LANGUAGES.values() for ext in spec.extensions}
_SHEBANGS = {"python": "python", "node": "javascript", "deno": "typescript", "bun": "javascript"}
_CPP_HINTS = ("class ", "namespace ", "template<", "template <", "public:", "private:", "std::", "#include <iostream>")


def language_for(path: str | Path | None, text: str | None = None) -> LangSpec | None:
    """The language of a file from its extension, or its shebang line; None for plain text."""
    if path is not None:
        suffix = Path(path).suffix.lower()
        if suffix == ".h":  # C unless the header is plainly C++
            head = (text or "")[:20000]
            return LANGUAGES["cpp"] if any(h in head for h in _CPP_HINTS) else LANGUAGES["c"]
        if suffix in _BY_EXT:
            return _BY_EXT[suffix]
    if text and text.startswith("#!"):
        first = text.split("\n", 1)[0]
        for word, lang in _SHEBANGS.items():
            if word in first:
                return LANGUAGES[lang]
    return None


def by_name(name: str) -> LangSpec | None:
    """A language by its name or an extension ("python", "py", ".rs"); None when unknown."""
    key = name.strip().lower()
    if key in LANGUAGES:
        return LANGUAGES[key]
    aliases = {
        "js": "javascript",
        "ts": "typescript",
        "c++": "cpp",
        "py": "python",
        "rs": "rust",
        "golang": "go",
        "jsx": "javascript",
        "javascriptreact": "javascript",  # the LSP language ids of .jsx and .tsx files
        "typescriptreact": "tsx",
        "htm": "html",
    }
    if key in aliases:
        return LANGUAGES[aliases[key]]
    return _BY_EXT.get(key if key.startswith(".") else "." + key)


@cache
def ts_language(spec_name: str) -> Any:
    """The tree_sitter.Language for a spec (the grammar package is imported on first use)."""
    import tree_sitter

    spec = LANGUAGES[spec_name]
    return tree_sitter.Language(getattr(importlib.import_module(spec.module), spec.func)())


def parser_for(spec: LangSpec) -> Any:
    """A fresh parser (parsers are cheap and not thread-safe, so none is shared)."""
    import tree_sitter

    return tree_sitter.Parser(ts_language(spec.name))
