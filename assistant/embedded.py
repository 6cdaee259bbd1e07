"""Regions of a file written in another language: injection, as editors do it.

An HTML page's `<script>` is JavaScript and its `<style>` CSS; a Vue single-file component's
`<script setup lang="ts">` is TypeScript; an MDX file's `import`/`export` lines and JSX blocks
are JavaScript (with JSX) and its fenced code is whatever the fence says. `regions` finds them
(with the host's own grammar where it has one); each is then parsed by its own grammar limited
to its byte range (tree-sitter's included ranges), so every node keeps its position in the
whole file and nothing has to be mapped back. `focus` does the same for the text around a
cursor, so post-processing applies the rules of the language the cursor is in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from demi.assistant.languages import LANGUAGES, LangSpec, by_name, parser_for, ts_language
from demi.assistant.markup import scan_tags


@dataclass(frozen=True)
class Region:
    """Bytes [start, end) of the host's source written in `spec`'s language."""

    spec: LangSpec
    start: int
    end: int
    kind: str  # script | style | esm | jsx | fence
    host: Any = None  # the host node holding it (script_element, style_element, fenced_code_block)


def _attributes(start_tag: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for attr in start_tag.named_children:
        if attr.type != "attribute":
            continue
        name = value = ""
        for part in attr.named_children:
            if part.type == "attribute_name":
                name = (part.text or b"").decode("utf-8", "replace").lower()
            elif part.type == "attribute_value":
                value = (part.text or b"").decode("utf-8", "replace")
            elif part.type == "quoted_attribute_value":
                inner = part.named_children[0] if part.named_children else None
                value = (inner.text or b"").decode("utf-8", "replace") if inner is not None else ""
        if name:
            out[name] = value.strip()
    return out


_JS_TYPES = {"", "module", "text/javascript", "application/javascript", "text/babel", "text/jsx"}
_SCRIPT_LANGS = {"js": "javascript", "jsx": "javascript", "ts": "typescript", "tsx": "tsx", "": "javascript"}
_STYLE_LANGS = {"", "css", "postcss"}


def script_language(attrs: dict[str, str]) -> LangSpec | None:
    """A `<script>`'s language from `lang` (Vue) or `type` (HTML); None for JSON, templates..."""
    lang = attrs.get("lang", "").lower()
    if lang:
        name = _SCRIPT_LANGS.get(lang)
        return LANGUAGES[name] if name else None
    kind = attrs.get("type", "").lower()
    if kind in _JS_TYPES:
        return LANGUAGES["javascript"]
    if kind in ("text/typescript", "application/typescript"):
        return LANGUAGES["typescript"]
    return None


def style_language(attrs: dict[str, str]) -> LangSpec | None:
    """A `<style>`'s language: CSS, unless `lang` names a preprocessor Demi has no grammar for."""
    return LANGUAGES["css"] if attrs.get("lang", "").lower() in _STYLE_LANGS else None


def _markup_region(node: Any) -> Region | None:
    """The region of a `<script>` or `<style>` element, or of the raw text an unclosed one leaves
    in an ERROR node (being typed); None for any other node and for languages Demi cannot read."""
    if node.type in ("script_element", "style_element"):
        tag = next((c for c in node.named_children if c.type == "start_tag"), None)
        end_tag = next((c for c in node.named_children if c.type == "end_tag"), None)
        if tag is None:
            return None
        attrs = _attributes(tag)
        spec = script_language(attrs) if node.type == "script_element" else style_language(attrs)
        end = end_tag.start_byte if end_tag is not None else node.end_byte
        kind = "script" if node.type == "script_element" else "style"
        return Region(spec, tag.end_byte, max(tag.end_byte, end), kind, node) if spec is not None else None
    if node.type == "raw_text":
        tag = node.prev_named_sibling
        name = next((c for c in tag.named_children if c.type == "tag_name"), None) if tag is not None else None
        kind = (name.text or b"").decode("ascii", "replace").lower() if name is not None else ""
        if tag is not None and tag.type == "start_tag" and kind in ("script", "style"):
            attrs = _attributes(tag)
            spec = script_language(attrs) if kind == "script" else style_language(attrs)
            return Region(spec, tag.end_byte, node.end_byte, kind, node.parent) if spec is not None else None
    return None


def _markup_regions(root: Any) -> list[Region]:
    """Walked with a cursor, entering only the nodes a `<script>` or `<style>` can be in."""
    out: list[Region] = []
    cursor = root.walk()
    while True:
        node = cursor.node
        if node.type in ("script_element", "style_element", "raw_text"):
            region = _markup_region(node)
            if region is not None:
                out.append(region)
        elif node.type in ("document", "element", "ERROR") and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return out


_ESM = re.compile(rb"(import|export)[\s{*]")
_JSX_START = re.compile(rb"<([A-Za-z]|>)")


def _balanced_end(source: bytes, start: int) -> int:
    """The end of the line where the brackets opened from `start` are all closed (ESM that
    spans blank lines: `export function f() {\\n\\n}`); strings are skipped."""
    depth, i, n, quote = 0, start, len(source), 0
    while i < n:
        ch = source[i]
        if quote:
            if ch == 0x5C:  # backslash
                i += 2
                continue
            if ch == quote:
                quote = 0
        elif ch in b"\"'`":
            quote = ch
        elif ch in b"([{":
            depth += 1
        elif ch in b")]}":
            depth -= 1
        elif ch == 0x0A and depth <= 0:
            return i + 1
        i += 1
    return n


def _jsx_end(source: bytes, start: int) -> int:
    """The end of the line where the JSX block starting at `start` closes its first element."""
    text = source[start:].decode("utf-8", "replace")
    depth = 0
    for tag in scan_tags(text, jsx=True):
        depth += {"open": 1, "close": -1}.get(tag.kind, 0)
        if depth <= 0:
            end = start + len(text[: tag.end].encode("utf-8"))
            nl = source.find(b"\n", end)
            return len(source) if nl < 0 else nl + 1
    return len(source)  # still open: the rest of the text (being typed)


def _mdx_regions(source: bytes, root: Any) -> list[Region]:
    """Top-level blocks of an MDX file: import/export lines, JSX blocks, fenced code."""
    out: list[Region] = []
    covered = 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node.type in ("document", "section"):
            stack.extend(reversed(node.named_children))
            continue
        if node.start_byte < covered:
            continue
        if node.type == "fenced_code_block":
            info = next((c for c in node.named_children if c.type == "info_string"), None)
            body = next((c for c in node.named_children if c.type == "code_fence_content"), None)
            word = (info.text or b"").decode("utf-8", "replace").split()[0] if info is not None and info.text else ""
            spec = by_name(word) if word else None
            if spec is not None and body is not None and spec.name != "mdx":
                out.append(Region(spec, body.start_byte, body.end_byte, "fence", node))
            continue
        if node.type not in ("paragraph", "html_block"):
            continue
        head = source[node.start_byte : node.start_byte + 16]
        if _ESM.match(head):
            end = max(node.end_byte, _balanced_end(source, node.start_byte))
            out.append(Region(LANGUAGES["javascript"], node.start_byte, end, "esm", node))
            covered = end
        elif _JSX_START.match(head):
            end = _jsx_end(source, node.start_byte)
            out.append(Region(LANGUAGES["javascript"], node.start_byte, end, "jsx", node))
            covered = end
    return out


def regions(source: bytes, spec: LangSpec | None, root: Any = None) -> list[Region]:
    """The embedded regions of a file in `spec` (empty for a language that embeds none), in
    order; `root`: the host tree's root, when the caller has parsed it already."""
    if spec is None or not spec.embeds:
        return []
    if root is None:
        root = parser_for(spec).parse(source).root_node
    return _mdx_regions(source, root) if spec.name == "mdx" else _markup_regions(root)


def point_at(source: bytes, offset: int) -> tuple[int, int]:
    """tree-sitter's (row, byte column) of a byte offset."""
    row = source.count(b"\n", 0, offset)
    return row, offset - (source.rfind(b"\n", 0, offset) + 1)


def region_lines(source: bytes, region: Region) -> tuple[int, int]:
    """1-based first and last lines of a region's text, blank edges left out."""
    body = source[region.start : region.end]
    lead, trail = len(body) - len(body.lstrip()), len(body) - len(body.rstrip())
    first = point_at(source, region.start + lead)[0] + 1
    return first, max(first, point_at(source, max(region.start + lead, region.end - trail - 1))[0] + 1)


def parse_region(source: bytes, region: Region) -> Any:
    """The region's tree, positions in the whole file's bytes, rows and columns."""
    import tree_sitter

    span = tree_sitter.Range(point_at(source, region.start), point_at(source, region.end), region.start, region.end)
    parser = tree_sitter.Parser(ts_language(region.spec.name), included_ranges=[span])
    return parser.parse(source)


def region_at(found: list[Region], offset: int, source: bytes) -> Region | None:
    """The region holding byte `offset`; its end counts when no line break comes before it
    (typing at the end of an unclosed `<script>`), not the start of the line after a block."""
    for r in found:
        if r.start <= offset < r.end or (offset == r.end and (r.end == 0 or source[r.end - 1 : r.end] != b"\n")):
            return r
    return None


def focus(prefix: str, suffix: str, spec: LangSpec | None) -> tuple[LangSpec | None, str, str]:
    """The language at the cursor between `prefix` and `suffix`, and the text of its region on
    either side: a cursor in an HTML `<style>` gets CSS and the style's text only. Markdown
    prose in MDX has no block rules of its own, so it is treated as plain text (None)."""
    if spec is None or not spec.embeds:
        return spec, prefix, suffix
    source = (prefix + suffix).encode("utf-8", errors="replace")
    cursor = len(prefix.encode("utf-8", errors="replace"))
    found = regions(source, spec)
    r = region_at(found, cursor, source)
    if r is None:
        return (None if spec.name == "mdx" else spec), prefix, suffix
    before = source[r.start : cursor].decode("utf-8", errors="replace")
    after = source[cursor : r.end].decode("utf-8", errors="replace")
    return r.spec, before, after
