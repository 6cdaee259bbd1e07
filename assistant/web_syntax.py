"""The symbols of the web languages: HTML and Vue elements, CSS rules, MDX sections.

These languages define no functions, so their outline is made of what a reader looks for:
elements (with an id, sectioning, components, or spanning lines; `<b>` inside a sentence is not
one), rules and at-rules, and headings. Each symbol's qualified name says where it is in a way
that finds it again: a CSS selector path for an element (`#main > ul.menu > li:nth-of-type(2)`),
the at-rules and rules around a CSS rule, the headings above an MDX section. Aliases are the
other names a user may give: an element's tag, `#id` and `.class`, each selector of a rule.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from demi.assistant.languages import LangSpec
from demi.assistant.markup import VOID
from demi.assistant.syntax import Symbol

ELEMENTS = ("element", "script_element", "style_element")
_TRANSPARENT = frozenset({"html", "head", "body"})  # their children are the outline's top level
_INLINE = frozenset(
    {
        *VOID,
        "a",
        "abbr",
        "b",
        "bdi",
        "bdo",
        "cite",
        "code",
        "data",
        "dfn",
        "em",
        "i",
        "kbd",
        "mark",
        "q",
        "rp",
        "rt",
        "s",
        "samp",
        "small",
        "span",
        "strong",
        "sub",
        "sup",
        "time",
        "u",
        "var",
        "title",
        "option",
    }
)
CSS_BLOCKS = ("rule_set", "media_statement", "supports_statement", "keyframes_statement", "at_rule")


def text_of(node: Any) -> str:
    return node.text.decode("utf-8", errors="replace") if node is not None and node.text is not None else ""


def end_line(node: Any) -> int:
    """1-based last line of a node; one that ends at the start of a line ends on the line before."""
    row, col = node.end_point
    return row if col == 0 and row > node.start_point[0] else row + 1


# -- HTML ---------------------------------------------------------------------------------------


@dataclass
class Element:
    """An HTML element's parts, read from its node."""

    node: Any
    tag: str  # as written (Vue components keep their case)
    start_tag: Any
    end_tag: Any | None
    attributes: list[tuple[str, str | None]]  # (name, value) in order; None: no value

    @cached_property
    def id(self) -> str | None:
        return next((v for n, v in self.attributes if n.lower() == "id" and v), None)

    @cached_property
    def classes(self) -> list[str]:
        value = next((v for n, v in self.attributes if n.lower() == "class" and v), "")
        return value.split()

    @property
    def self_closing(self) -> bool:
        return self.start_tag is not None and self.start_tag.type == "self_closing_tag"

    @cached_property
    def end_line(self) -> int:
        """1-based line of its closing tag; a void element ends with its start tag (its node runs
        on over the blanks after it), an unclosed one where its content ends."""
        if self.end_tag is not None:
            return self.end_tag.end_point[0] + 1
        if self.start_tag is not None and (self.self_closing or self.tag.lower() in VOID):
            return self.start_tag.end_point[0] + 1
        return end_line(self.node)

    @cached_property
    def label(self) -> str:
        """`tag#id`, else `tag.first-class`, else the tag."""
        if self.id:
            return f"{self.tag}#{self.id}"
        return f"{self.tag}.{self.classes[0]}" if self.classes else self.tag


def element(node: Any) -> Element | None:
    """The parts of an element node (None for any other node)."""
    if node.type not in ELEMENTS:
        return None
    start = next((c for c in node.named_children if c.type in ("start_tag", "self_closing_tag")), None)
    end = next((c for c in node.named_children if c.type == "end_tag"), None)
    name = next((c for c in start.named_children if c.type == "tag_name"), None) if start is not None else None
    tag = text_of(name)
    if not tag:
        return None
    attrs: list[tuple[str, str | None]] = []
    for attr in start.named_children if start is not None else []:
        if attr.type != "attribute":
            continue
        key, value = "", None
        for part in attr.named_children:
            if part.type == "attribute_name":
                key = text_of(part)
            elif part.type == "attribute_value":
                value = text_of(part)
            elif part.type == "quoted_attribute_value":
                value = "".join(text_of(c) for c in part.named_children)
        if key:
            attrs.append((key, value))
    return Element(node, tag, start, end, attrs)


def _is_symbol(el: Element) -> bool:
    if el.tag.lower() in _TRANSPARENT:
        return False
    if el.id or el.tag.lower() not in _INLINE:
        return True
    if any(c.isupper() for c in el.tag) or "-" in el.tag:  # components and custom elements
        return True
    return el.end_line > el.node.start_point[0] + 1


def _aliases(el: Element) -> tuple[str, ...]:
    out = [el.tag]
    if el.id:
        out.append("#" + el.id)
    out += ["." + c for c in el.classes]
    return tuple(dict.fromkeys(a for a in out if a != el.label))


@dataclass
class _Level:
    """What the children of one node share while the walk is among them."""

    parent: Any  # the node whose children they are
    symbol: Symbol | None  # the innermost symbol around them
    symbol_node: Any  # that symbol's element node
    depth: int
    tags: dict[str, list[int]] | None = None  # tag -> start bytes of the element children, on demand


def _tag_of(node: Any) -> str:
    """An element node's tag name, read without building its children's lists."""
    start = node.named_child(0) if node.named_child_count else None
    name = start.named_child(0) if start is not None and start.named_child_count else None
    return text_of(name) if name is not None and name.type == "tag_name" else ""


def _walk_markup(root: Any, visit: Any, top: Any) -> None:
    """Pre-order over the elements (and the ERROR nodes an unclosed one leaves) under `root`,
    with a tree cursor: no Python list of children per node, and tags, attributes and text are
    not entered. `visit(node, level)` returns the level for the node's children, or None."""
    cursor = root.walk()
    levels = [top]
    if not cursor.goto_first_child():
        return
    while True:
        node = cursor.node
        inner = visit(node, levels[-1]) if node.type in ELEMENTS or node.type == "ERROR" else None
        if inner is not None and cursor.goto_first_child():
            levels.append(inner)
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return
            levels.pop()
            if not levels:
                return


def html_symbols(root: Any, spec: LangSpec) -> list[Symbol]:
    """Elements worth naming, in source order."""
    out: list[Symbol] = []

    def visit(node: Any, level: _Level) -> _Level | None:
        el = element(node)
        if el is None or not _is_symbol(el):  # an unclosed element's ERROR, a transparent or inline one
            return _Level(node, level.symbol, level.symbol_node, level.depth)
        if level.tags is None:  # once per parent: a table of 5,000 rows stays linear
            level.tags = {}
            for i in range(level.parent.named_child_count):
                kid = level.parent.named_child(i)
                if kid.type in ELEMENTS:
                    level.tags.setdefault(_tag_of(kid), []).append(kid.start_byte)
        part, siblings = el.label, level.tags.get(el.tag, [])
        if not el.id and len(siblings) > 1:
            part += f":nth-of-type({bisect_left(siblings, node.start_byte) + 1})"
        parent = level.symbol
        if el.id or parent is None:
            qual = part
        else:
            qual = parent.qualname + (" > " if level.parent.id == level.symbol_node.id else " ") + part
        sym = Symbol(
            el.label,
            qual,
            "element",
            node.start_point[0] + 1,
            el.end_line,
            " ".join(text_of(el.start_tag).split())[:240],
            level.depth,
            node,
            node,
            spec,
            _aliases(el),
        )
        out.append(sym)
        return _Level(node, sym, node, level.depth + 1)

    _walk_markup(root, visit, _Level(root, None, None, 0))
    return out


def markup_words(root: Any, lo: int, hi: int) -> list[str]:
    """Names a template uses in rows lo..hi (0-based): in event handlers and directives
    (`onclick`, `@click`, `:value`, `v-if`, `x-on`) and `{{ mustaches }}`, for the definitions
    in the page's scripts they refer to."""
    import re

    words: dict[str, None] = {}
    cursor = root.walk()
    while True:
        n = cursor.node
        inside = not (n.end_point[0] < lo or n.start_point[0] > hi)
        if inside and n.type == "attribute":
            name = text_of(n.named_children[0]) if n.named_children else ""
            if name.lower().startswith(("on", "@", ":", "v-", "x-")):
                for part in n.named_children[1:]:
                    words.update(dict.fromkeys(re.findall(r"[A-Za-z_$][\w$]*", text_of(part))))
        elif inside and n.type == "text" and "{{" in text_of(n):
            for expr in re.findall(r"\{\{(.*?)\}\}", text_of(n), re.S):
                words.update(dict.fromkeys(re.findall(r"[A-Za-z_$][\w$]*", expr)))
        if inside and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return list(words)


def markup_imports(root: Any) -> list[str]:
    """What a page loads: `<script src>` and `<link rel="stylesheet|modulepreload|import" href>`."""
    out: dict[str, None] = {}

    def visit(node: Any, level: Any) -> Any:
        el = element(node)
        if el is not None and el.tag.lower() in ("script", "link"):
            attrs = {k.lower(): v for k, v in el.attributes}
            rel = (attrs.get("rel") or "").lower()
            if (el.tag.lower() == "script" and attrs.get("src")) or (
                attrs.get("href") and rel in ("stylesheet", "modulepreload", "import")
            ):
                out[" ".join(text_of(el.start_tag).split())] = None
        return level  # go on into its children

    _walk_markup(root, visit, True)
    return list(out)


# -- CSS ----------------------------------------------------------------------------------------


def at_rule_head(node: Any) -> str:
    """`@media (max-width: 600px)`: an at-rule's text up to its block."""
    block = next((c for c in node.named_children if c.type in ("block", "keyframe_block_list")), None)
    src = node.text or b""
    head = src[: block.start_byte - node.start_byte] if block is not None else src
    return " ".join(head.decode("utf-8", errors="replace").split()).rstrip(";")


def selectors_of(node: Any) -> list[str]:
    """A rule's selectors, one string each."""
    sel = next((c for c in node.named_children if c.type == "selectors"), None)
    if sel is None:
        return []
    return [" ".join(text_of(c).split()) for c in sel.named_children if c.type != "comment"]


def css_symbols(root: Any, spec: LangSpec) -> list[Symbol]:
    """Rules and at-rules, nested ones (in `@media`, CSS nesting) under their container."""
    out: list[Symbol] = []
    stack: list[tuple[Any, Symbol | None, int]] = [(c, None, 0) for c in reversed(root.named_children)]
    while stack:
        node, parent, depth = stack.pop()
        if node.type not in CSS_BLOCKS:
            continue
        if node.type == "rule_set":
            sels = selectors_of(node)
            name, kind, aliases = ", ".join(sels), "rule", tuple(s for s in sels if len(sels) > 1)
            head = name
        else:
            head = at_rule_head(node)
            name, aliases = head, ()
            kind = head.split(" ", 1)[0].lstrip("@") or "at-rule"
        if not name:
            continue
        qual = f"{parent.qualname} {name}" if parent is not None else name
        sym = Symbol(
            name, qual, kind, node.start_point[0] + 1, end_line(node), head[:240], depth, node, node, spec, aliases
        )
        out.append(sym)
        block = next((c for c in node.named_children if c.type == "block"), None)
        if block is not None:
            stack.extend((c, sym, depth + 1) for c in reversed(block.named_children))
    return out


# -- MDX ----------------------------------------------------------------------------------------


def mdx_symbols(root: Any, spec: LangSpec) -> list[Symbol]:
    """Sections, by their headings."""
    out: list[Symbol] = []
    stack: list[tuple[Any, Symbol | None, int]] = [(c, None, 0) for c in reversed(root.named_children)]
    while stack:
        node, parent, depth = stack.pop()
        if node.type != "section":
            continue
        heading = node.named_children[0] if node.named_children else None
        sym = parent
        if heading is not None and heading.type in ("atx_heading", "setext_heading"):
            content = heading.child_by_field_name("heading_content")
            name = " ".join(text_of(content).split()) or "(untitled)"
            qual = f"{parent.qualname} > {name}" if parent is not None else name
            signature = " ".join(text_of(heading).split())
            sym = Symbol(
                name, qual, "section", node.start_point[0] + 1, end_line(node), signature, depth, node, node, spec, ()
            )
            out.append(sym)
        next_depth = depth + 1 if sym is not parent else depth
        stack.extend((c, sym, next_depth) for c in reversed(node.named_children))
    return out
