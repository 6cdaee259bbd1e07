"""What tree-sitter tells the tasks about a file: its outline, imports, the symbol at a position.

`parse(doc)` gives a `Syntax`; for a file with no known language it is an empty one (no
symbols, no imports), so every caller works on plain text without a special case. Symbols are
found by one walk over the tree using the language table in `languages.py` (for HTML, Vue, CSS
and MDX, by `web_syntax.py`). A file that embeds other languages (`embedded.py`) has a tree per
region too, in the file's own positions: its symbols, imports and names join the host's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from demi.assistant.document import Document
from demi.assistant.embedded import Region, parse_region, region_at, regions
from demi.assistant.languages import LangSpec, parser_for
from demi.model.errors import DemiUserError

WEB = frozenset({"html", "vue", "css", "mdx"})  # symbols from web_syntax.py


class UnknownSymbolError(DemiUserError):
    """--symbol names nothing in the file (the message lists what is there)."""


@dataclass
class Symbol:
    """A definition: function, method, class, struct, interface... with a 1-based line range."""

    name: str
    qualname: str
    kind: str
    start_line: int  # includes decorators / export / template wrappers
    end_line: int
    signature: str
    depth: int = 0
    node: Any = field(default=None, repr=False, compare=False)  # the definition node
    outer: Any = field(default=None, repr=False, compare=False)  # node whose range is the symbol's
    lang: LangSpec | None = field(default=None, repr=False, compare=False)  # its grammar (embedded: not the file's)
    aliases: tuple[str, ...] = field(default=(), compare=False)  # other names that find it (`#main`, `.btn`)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "qualname": self.qualname,
            "kind": self.kind,
            "start_line": self.start_line,
            "end_line": self.end_line,
            "signature": self.signature,
        }


def text_of(node: Any) -> str:
    return node.text.decode("utf-8", errors="replace") if node is not None and node.text is not None else ""


def one_line(text: str, limit: int = 160) -> str:
    out = re.sub(r"\s+", " ", text).strip()
    return out if len(out) <= limit else out[: limit - 1] + "…"


def walk(node: Any) -> Iterator[Any]:
    """Every node under `node` (named or not), depth first, without recursion limits."""
    cursor = node.walk()
    while True:
        yield cursor.node
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


# Nodes that never hold a definition: not worth walking into.
_LEAFY = frozenset(
    {
        "comment",
        "line_comment",
        "block_comment",
        "string",
        "string_literal",
        "raw_string_literal",
        "template_string",
        "interpreted_string_literal",
        "raw_string",
        "integer",
        "float",
        "number",
        "identifier",
        "type_identifier",
        "field_identifier",
        "property_identifier",
    }
)
_METHOD_HOSTS = {"class", "struct", "interface", "trait", "impl", "record", "enum", "union"}
_FUNCTION_VALUES = {"arrow_function", "function_expression", "function", "generator_function"}
_NAME_LEAVES = {
    "identifier",
    "field_identifier",
    "qualified_identifier",
    "destructor_name",
    "operator_name",
    "type_identifier",
    "property_identifier",
    "scoped_identifier",
    "template_function",
}


def _c_declarator_name(node: Any) -> str | None:
    """C/C++: the name inside nested declarators (pointer, reference, function)."""
    seen = 0
    while node is not None and seen < 16:
        if node.type in _NAME_LEAVES:
            return text_of(node)
        nxt = node.child_by_field_name("declarator")
        if nxt is None:  # reference_declarator has no field name
            nxt = next(
                (c for c in node.named_children if c.type.endswith("declarator") or c.type in _NAME_LEAVES), None
            )
        node, seen = nxt, seen + 1
    return None


_COMPONENT_WRAPPERS = {"memo", "forwardRef", "React.memo", "React.forwardRef"}


def function_value(node: Any, spec: LangSpec | None = None) -> Any | None:
    """The function a `variable_declarator` holds: its value, or in JSX code the function
    wrapped by `memo(...)` / `forwardRef(...)` (React components); None for any other value."""
    value = node.child_by_field_name("value")
    if value is None:
        return None
    if value.type in _FUNCTION_VALUES:
        return value
    if value.type == "call_expression" and (spec is None or spec.jsx):
        if text_of(value.child_by_field_name("function")) in _COMPONENT_WRAPPERS:
            args = value.child_by_field_name("arguments")
            first = args.named_children[0] if args is not None and args.named_children else None
            return first if first is not None and first.type in _FUNCTION_VALUES else None
    return None


def definition_name(node: Any, spec: LangSpec) -> str | None:
    """The declared name of a definition node, or None when it has none (anonymous)."""
    t = node.type
    if t == "variable_declarator":
        if function_value(node, spec) is None:
            return None
        return text_of(node.child_by_field_name("name")) or None
    if t == "function_definition" and spec.name in ("c", "cpp"):
        return _c_declarator_name(node.child_by_field_name("declarator"))
    if t == "type_definition":
        return _c_declarator_name(node.child_by_field_name("declarator"))
    if t in ("struct_specifier", "union_specifier", "enum_specifier", "class_specifier"):
        if node.child_by_field_name("body") is None:
            return None  # a use (`struct S *p`), not a definition
    if t == "impl_item":
        ty, trait = text_of(node.child_by_field_name("type")), text_of(node.child_by_field_name("trait"))
        return f"{trait} for {ty}" if trait else ty or None
    name = node.child_by_field_name("name")
    return text_of(name) or None


def _receiver_type(node: Any) -> str | None:
    """Go: the type a method is declared on (`func (s *S) M()` -> "S")."""
    recv = node.child_by_field_name("receiver")
    if recv is None:
        return None
    for param in recv.named_children:
        ty = param.child_by_field_name("type")
        if ty is not None:
            return text_of(ty).lstrip("*").split("[")[0].strip()
    return None


def signature_of(node: Any, outer: Any | None = None) -> str:
    """The definition's header: its text up to the body, on one line."""
    body = node.child_by_field_name("body")
    src = node.text or b""
    if body is not None and body.start_byte > node.start_byte:
        head = src[: body.start_byte - node.start_byte]
    else:
        head = src.split(b"\n", 1)[0] if node.type not in ("type_spec", "type_alias_declaration") else src
    text = head.decode("utf-8", errors="replace").rstrip().rstrip("{").rstrip()
    if text.endswith(":") and node.type in ("function_definition", "class_definition"):
        text = text[:-1]
    return one_line(text, 240)


class Syntax:
    """A parsed document; for plain text (no grammar) every query answers empty."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.spec: LangSpec | None = doc.lang
        self.source = doc.text.encode("utf-8", errors="replace")
        self.tree = parser_for(self.spec).parse(self.source) if self.spec else None
        self._symbols: list[Symbol] | None = None
        self._embedded: list[tuple[Region, Any]] | None = None

    @property
    def parsed(self) -> bool:
        return self.tree is not None

    @property
    def root(self) -> Any:
        return self.tree.root_node if self.tree is not None else None

    @property
    def embedded(self) -> list[tuple[Region, Any]]:
        """Each embedded region with its own tree (see embedded.py); empty for most languages."""
        if self._embedded is None:
            found = regions(self.source, self.spec, self.root) if self.tree is not None else []
            self._embedded = [(r, parse_region(self.source, r)) for r in found]
        return self._embedded

    def roots(self) -> list[tuple[LangSpec, Any]]:
        """The host's root and every embedded region's, each with its language."""
        if self.tree is None or self.spec is None:
            return []
        return [(self.spec, self.root)] + [(r.spec, tree.root_node) for r, tree in self.embedded]

    def language_at(self, offset: int) -> LangSpec | None:
        """The language at character `offset`: an embedded region's, else the file's."""
        if self.spec is None or not self.spec.embeds:
            return self.spec
        at = len(self.doc.text[:offset].encode("utf-8", errors="replace"))
        r = region_at([r for r, _ in self.embedded], at, self.source)
        return r.spec if r is not None else self.spec

    # -- errors -------------------------------------------------------------------------------------

    def error_count(self) -> int:
        """ERROR and MISSING nodes, embedded regions included: 0 for a file that parses cleanly."""
        return sum(
            sum(1 for n in walk(root) if n.is_error or n.is_missing) for _, root in self.roots() if root.has_error
        )

    def first_error_line(self) -> int | None:
        lines = [
            n.start_point[0] + 1
            for _, root in self.roots()
            if root.has_error
            for n in walk(root)
            if n.is_error or n.is_missing
        ]
        return min(lines) if lines else None

    # -- outline ------------------------------------------------------------------------------------

    def symbols(self) -> list[Symbol]:
        """Every named definition in source order, nested ones after their container; an
        embedded region's come after the element that holds it, one level deeper."""
        if self._symbols is None:
            self._symbols = [] if self.tree is None or self.spec is None else self._all_symbols(self.spec)
        return self._symbols

    def _all_symbols(self, spec: LangSpec) -> list[Symbol]:
        host = collect_symbols(self.root, spec)
        if not self.embedded:
            return host
        out = list(host)
        for region, tree in self.embedded:
            holders = [s for s in host if s.outer.start_byte <= region.start and region.end <= s.outer.end_byte]
            base = max((s.depth + 1 for s in holders), default=0)
            for sym in collect_symbols(tree.root_node, region.spec):
                sym.depth += base
                out.append(sym)
        out.sort(key=lambda s: (s.outer.start_byte, s.depth))
        return out

    def _collect(self, root: Any) -> list[Symbol]:
        assert self.spec is not None
        return collect_symbols(root, self.spec)

    # -- the rest of the outline --------------------------------------------------------------------

    def outline(self, max_depth: int = 1) -> list[Symbol]:
        return [s for s in self.symbols() if s.depth <= max_depth]

    def imports(self) -> list[str]:
        """Import statements outside function bodies, one line each, in source order (a page's
        `<script src>` and stylesheet links, then its scripts' and styles' own)."""
        out: dict[str, None] = {}
        for spec, root in self.roots():
            out.update(dict.fromkeys(_imports(root, spec)))
        return list(out)

    # -- lookup -------------------------------------------------------------------------------------

    def enclosing(self, offset: int, kinds: tuple[str, ...] | None = None) -> Symbol | None:
        """The innermost symbol whose range holds character `offset`."""
        at = len(self.doc.text[:offset].encode("utf-8", errors="replace"))
        best = None
        for s in self.symbols():
            if s.outer.start_byte <= at <= s.outer.end_byte and (kinds is None or s.kind in kinds):
                if best is None or s.outer.end_byte - s.outer.start_byte <= best.outer.end_byte - best.outer.start_byte:
                    best = s
        return best

    def find(self, name: str) -> Symbol:
        """A symbol by name ("apply", "Cache.get", "ns::K::m", "#main", ".btn"); a user error lists
        what exists."""
        web = self.spec is not None and self.spec.name in WEB  # `a::before` is a selector
        want = name.strip() if web else name.strip().replace("::", ".")
        syms = self.symbols()
        if not syms:
            lang = self.spec.name if self.spec else "plain text (no grammar for this file type)"
            raise UnknownSymbolError(f"{self.doc.name}: no symbols found ({lang}); use --lines A-B instead")
        rules = (
            lambda s: s.qualname == want,
            lambda s: s.name == want,
            lambda s: s.qualname.endswith("." + want),
            lambda s: want in s.aliases,
        )
        for rule in rules:
            hits = [s for s in syms if rule(s)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                distinct = {s.qualname for s in hits}
                if len(distinct) == 1:  # overloads or a declaration pair: take the first
                    return hits[0]
                raise UnknownSymbolError(f"{self.doc.name}: {name!r} is ambiguous: {', '.join(sorted(distinct))}")
        names = [s.qualname for s in syms]
        shown = ", ".join(names[:30]) + (f", … ({len(names)} in all)" if len(names) > 30 else "")
        raise UnknownSymbolError(f"{self.doc.name}: no symbol {name!r}; symbols: {shown}")

    # -- names --------------------------------------------------------------------------------------

    def identifiers(self, first_line: int, last_line: int) -> list[str]:
        """Identifier names used in a line range (for definitions near the cursor); in markup, the
        names its event handlers, directives and `{{ }}` use."""
        if self.tree is None or self.spec is None:
            text = "\n".join(self.doc.line(i) for i in range(first_line, last_line + 1))
            return list(dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)))
        out: dict[str, None] = {}
        for spec, root in self.roots():
            if spec.markup:
                from demi.assistant.web_syntax import markup_words

                out.update(dict.fromkeys(markup_words(root, first_line - 1, last_line - 1)))
            else:
                out.update(dict.fromkeys(_identifiers(root, first_line - 1, last_line - 1)))
        return list(out)


def _identifiers(root: Any, lo: int, hi: int) -> list[str]:
    out: dict[str, None] = {}
    cursor = root.walk()
    while True:  # skip whole subtrees outside the range instead of visiting every node
        n = cursor.node
        inside = not (n.end_point[0] < lo or n.start_point[0] > hi)
        if inside and n.type in ("identifier", "type_identifier", "field_identifier", "property_identifier"):
            out[text_of(n)] = None
        if inside and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return list(out)


def _imports(root: Any, spec: LangSpec) -> list[str]:
    """Import statements outside function bodies, one line each, in source order."""
    if spec.markup:
        from demi.assistant.web_syntax import markup_imports

        return markup_imports(root)
    funcs = {t for t, k in spec.definitions.items() if k in ("function", "method", "constructor")}
    js = spec.name in ("javascript", "typescript", "tsx")
    out: dict[str, None] = {}
    stack = [(c, 0) for c in reversed(root.named_children)]
    while stack:  # statements only: imports sit at most a few blocks deep (if, try, namespace)
        node, depth = stack.pop()
        if node.type in spec.imports:
            out[one_line(text_of(node), 200)] = None
        elif js and node.type in ("lexical_declaration", "variable_declaration") and b"require(" in node.text:
            out[one_line(text_of(node), 200)] = None
        elif node.type not in funcs and node.type not in _LEAFY and depth < 4 and node.named_child_count:
            stack.extend((c, depth + 1) for c in reversed(node.named_children))
    return list(out)


def collect_symbols(root: Any, spec: LangSpec) -> list[Symbol]:
    """The symbols under `root` in `spec`'s language, in source order."""
    if spec.name in WEB:
        from demi.assistant import web_syntax

        collect = {"css": web_syntax.css_symbols, "mdx": web_syntax.mdx_symbols}.get(spec.name, web_syntax.html_symbols)
        return collect(root, spec)
    return _collect_definitions(root, spec)


def _collect_definitions(root: Any, spec: LangSpec) -> list[Symbol]:
    """Definitions in source order (pre-order), without recursion: deeply nested expressions
    (a 5,000-term sum, a huge literal) must not hit Python's recursion limit."""
    out: list[Symbol] = []
    stack: list[tuple[Any, Symbol | None, int]] = [(c, None, 0) for c in reversed(root.named_children)]
    while stack:
        child, parent, depth = stack.pop()
        if child.type in _LEAFY:
            continue
        target, outer = child, child
        while target.type in spec.wrappers:  # decorators, export, template<...>
            inner = (
                target.child_by_field_name("definition")
                or target.child_by_field_name("declaration")
                or next(
                    (
                        c
                        for c in reversed(target.named_children)
                        if c.type in spec.definitions or c.type in spec.wrappers
                    ),
                    None,
                )
            )
            if inner is None:
                break
            target = inner
        kind = spec.definitions.get(target.type)
        name = definition_name(target, spec) if kind else None
        if not (kind and name):
            below = child if outer is child else target
            stack.extend((c, parent, depth) for c in reversed(below.named_children))
            continue
        if target.type == "type_spec":
            inner_type = target.child_by_field_name("type")
            kind = {"struct_type": "struct", "interface_type": "interface"}.get(
                inner_type.type if inner_type is not None else "", "type"
            )
            if (
                target.parent is not None
                and target.parent.type == "type_declaration"
                and len(target.parent.named_children) == 1
            ):
                outer = target.parent
        if kind == "function" and parent is not None and parent.kind in _METHOD_HOSTS:
            kind = "method"
        qual = name.replace("::", ".")
        recv = _receiver_type(target) if target.type == "method_declaration" else None
        if recv:
            qual = f"{recv}.{qual}"
        elif parent is not None:
            qual = f"{parent.qualname}.{qual}"
        sym = Symbol(
            name.split("::")[-1],
            qual,
            kind,
            outer.start_point[0] + 1,
            outer.end_point[0] + 1,
            signature_of(target, outer),
            depth,
            target,
            outer,
            spec,
        )
        out.append(sym)
        stack.extend((c, sym, depth + 1) for c in reversed(target.named_children))
    return out


def parse(doc: Document) -> Syntax:
    return Syntax(doc)
