"""The web languages: HTML, CSS, Vue single-file components, MDX, and React components in JSX/TSX.

Golden cases through the real assistant functions: the regions each file embeds, the outline
(symbols and their qualified names), the static facts `demi explain` shows (an element's
attributes and closing tag, a rule's specificity, a component's props and hooks), FIM context
and post-processing (tags closed once, CSS braces balanced, a block cut where it ends), and at
the end `explain` and `complete` run on a tiny real model.
"""

from __future__ import annotations

import pytest

from demi.assistant.context import fim_context, used_definitions
from demi.assistant.document import Document
from demi.assistant.embedded import focus, regions
from demi.assistant.explain import render_facts
from demi.assistant.facts import detail_items
from demi.assistant.languages import LANGUAGES, by_name, language_for
from demi.assistant.markup import open_tags, scan_tags, unmatched_closers
from demi.assistant.postprocess import BlockWatcher, close_tags, decide_mode, postprocess
from demi.assistant.prompts import facts_lines
from demi.assistant.syntax import UnknownSymbolError, parse
from demi.assistant.target import resolve_target

HTML, CSS, VUE, MDX, JS, TSX = (LANGUAGES[n] for n in ("html", "css", "vue", "mdx", "javascript", "tsx"))

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <title>Shop</title>
  <link rel="stylesheet" href="site.css">
  <style>
    .card { padding: 4px; }
    @media (max-width: 600px) {
      .card, #cart > li.item:hover { display: none !important; }
    }
  </style>
</head>
<body>
  <!-- The list of products -->
  <main id="products" class="grid wide">
    <ul class="menu">
      <li><a href="/">Home</a></li>
      <li>Cart <b>2</b></li>
    </ul>
    <img src="logo.png" alt="logo">
    <button onclick="addToCart(1)" disabled>Add</button>
  </main>
  <script type="module">
    import { api } from "./api.js";
    function addToCart(id) {
      return api.post("/cart", { id });
    }
  </script>
  <script type="application/ld+json">{"@type": "Store"}</script>
</body>
</html>
"""

STYLES = """@import url("base.css");
/* Buttons */
.btn, #main > a.primary:hover::before { color: red; margin: 0 auto !important; }
@media (max-width: 600px) {
  nav ul li[data-x] { display: none; }
}
.card {
  padding: 1rem;
  &:hover { color: blue; }
}
@keyframes spin { from { transform: rotate(0); } to { transform: rotate(1turn); } }
"""

SFC = """<template>
  <div class="counter">
    <button @click="increment">+</button>
    <span>{{ count }}</span>
    <MyBadge :value="count" />
  </div>
</template>

<script setup lang="ts">
import { ref } from "vue";
const count = ref(0);
function increment(): void {
  count.value++;
}
</script>

<style scoped>
.counter { display: flex; }
</style>
"""

DOCS = """import { Chart } from "./chart";
export const meta = { title: "Charts" };

# Charts

Some *text*.

<Chart data={[1, 2]}>
  hello

  world
</Chart>

## Usage

```ts
function total(xs: number[]): number { return xs.length; }
```
"""

COMPONENTS = """import { useState, memo } from "react";

type ButtonProps = { label: string; onClick?: () => void; size?: "s" | "m" };

/** A button with a badge. */
export function Button({ label, onClick, size = "m" }: ButtonProps) {
  const [n, setN] = useState(0);
  return (
    <button className={size} onClick={onClick}>
      {label} <Badge count={n} />
    </button>
  );
}

const Card = (props: { title: string }) => <div>{props.title}</div>;

interface ListProps { items: string[]; onPick?: (s: string) => void }

export const List = memo(function List({ items, ...rest }: ListProps & { title: string }) {
  const ref = React.useRef(null);
  if (!items.length) return null;
  return items.length > 3 ? <ul>{items.map((i) => <Item key={i} text={i} />)}</ul> : <>{rest.title}</>;
});

function helper(x: number) { return x + 1; }
"""

JS_COMPONENT = """export default function Greeting(props) {
  return <p className="hi">Hello, {props.name}{props.punctuation}</p>;
}
"""


def doc(text: str, name: str) -> Document:
    return Document.from_text(text, name)


def outline(text: str, name: str) -> list[tuple[int, str, str, int, int, str]]:
    return [
        (s.depth, s.kind, s.qualname, s.start_line, s.end_line, s.lang.name) for s in parse(doc(text, name)).symbols()
    ]


def facts(text: str, name: str, symbol: str | None = None) -> dict:
    return resolve_target(doc(text, name), symbol).facts.as_dict()


# -- languages and regions ------------------------------------------------------------------------


def test_file_types_and_language_ids():
    assert [language_for(p).name for p in ("a.html", "b.HTM", "c.css", "App.vue", "post.mdx")] == [
        "html",
        "html",
        "css",
        "vue",
        "mdx",
    ]
    assert language_for("README.md") is None  # Markdown itself stays plain text
    assert by_name("typescriptreact").name == "tsx" and by_name("javascriptreact").name == "javascript"
    assert by_name("vue").name == "vue" and by_name(".css").name == "css"
    assert HTML.markup and VUE.markup and not CSS.markup and MDX.embeds and TSX.jsx and not CSS.embeds


def _regions(text: str, spec) -> list[tuple[str, str, str]]:
    source = text.encode()
    return [(r.kind, r.spec.name, source[r.start : r.end].decode().strip()) for r in regions(source, spec)]


def test_html_regions_script_and_style_but_not_json():
    found = _regions(PAGE, HTML)
    assert [(k, lang) for k, lang, _ in found] == [("style", "css"), ("script", "javascript")]
    assert found[1][2].startswith('import { api } from "./api.js";') and found[1][2].endswith("}")


def test_vue_regions_follow_lang():
    assert [(k, lang) for k, lang, _ in _regions(SFC, VUE)] == [("script", "typescript"), ("style", "css")]
    text = '<script lang="tsx">\nconst a = <b/>;\n</script>\n<style lang="scss">\n$x: 1;\n</style>\n'
    assert [(k, lang) for k, lang, _ in _regions(text, VUE)] == [("script", "tsx")]  # no SCSS grammar


def test_mdx_regions_esm_jsx_across_blank_lines_and_fences():
    assert _regions(DOCS, MDX) == [
        ("esm", "javascript", 'import { Chart } from "./chart";\nexport const meta = { title: "Charts" };'),
        ("jsx", "javascript", "<Chart data={[1, 2]}>\n  hello\n\n  world\n</Chart>"),
        ("fence", "typescript", "function total(xs: number[]): number { return xs.length; }"),
    ]


def test_focus_picks_the_language_at_the_cursor():
    spec, before, after = focus("<p>x</p>\n<style>\n.a {", "}\n</style>\n<p>y</p>", HTML)
    assert (spec.name, before, after) == ("css", "\n.a {", "}\n")
    spec, before, after = focus("<div>\n<script>\nlet a = 1", "", HTML)  # unclosed: being typed
    assert (spec.name, before) == ("javascript", "\nlet a = 1")
    assert focus("<p>", "</p>", HTML)[0] is HTML
    assert focus("# T\n\nSome ", "\n", MDX)[0] is None  # Markdown prose: plain-text rules
    assert focus("# T\n\n<Chart>\n  ", "\n</Chart>\n", MDX)[0] is JS


def test_embedded_trees_keep_the_files_positions():
    syntax = parse(doc(PAGE, "page.html"))
    (style, style_tree), (script, script_tree) = syntax.embedded
    fn = next(n for n in script_tree.root_node.named_children if n.type == "function_declaration")
    assert fn.start_point[0] + 1 == 25 and PAGE.split("\n")[24].strip().startswith("function addToCart")
    assert style_tree.root_node.named_children[0].start_point[0] + 1 == 7
    assert syntax.error_count() == 0 and syntax.language_at(PAGE.index("api.post")).name == "javascript"
    broken = parse(doc(PAGE.replace("return api.post", "return api.post((("), "page.html"))
    assert broken.error_count() > 0 and broken.first_error_line() == 26  # an error in a script counts


# -- outlines -------------------------------------------------------------------------------------


def test_html_outline_elements_and_embedded_symbols():
    assert outline(PAGE, "page.html") == [
        (0, "element", "style", 6, 11, "html"),
        (1, "rule", ".card", 7, 7, "css"),
        (1, "media", "@media (max-width: 600px)", 8, 10, "css"),
        (2, "rule", "@media (max-width: 600px) .card, #cart > li.item:hover", 9, 9, "css"),
        (0, "element", "main#products", 15, 22, "html"),
        (1, "element", "main#products > ul.menu", 16, 19, "html"),
        (2, "element", "main#products > ul.menu > li:nth-of-type(1)", 17, 17, "html"),
        (2, "element", "main#products > ul.menu > li:nth-of-type(2)", 18, 18, "html"),
        (1, "element", "main#products > button", 21, 21, "html"),
        (0, "element", "script:nth-of-type(1)", 23, 28, "html"),
        (1, "function", "addToCart", 25, 27, "javascript"),
        (0, "element", "script:nth-of-type(2)", 29, 29, "html"),
    ]


def test_css_outline_rules_at_rules_and_nesting():
    assert outline(STYLES, "s.css") == [
        (0, "rule", ".btn, #main > a.primary:hover::before", 3, 3, "css"),
        (0, "media", "@media (max-width: 600px)", 4, 6, "css"),
        (1, "rule", "@media (max-width: 600px) nav ul li[data-x]", 5, 5, "css"),
        (0, "rule", ".card", 7, 10, "css"),
        (1, "rule", ".card &:hover", 9, 9, "css"),
        (0, "keyframes", "@keyframes spin", 11, 11, "css"),
    ]


def test_vue_and_mdx_outlines():
    assert outline(SFC, "Counter.vue") == [
        (0, "element", "template", 1, 7, "vue"),
        (1, "element", "template > div.counter", 2, 6, "vue"),
        (2, "element", "template > div.counter > button", 3, 3, "vue"),
        (2, "element", "template > div.counter > MyBadge", 5, 5, "vue"),
        (0, "element", "script", 9, 15, "vue"),
        (1, "function", "increment", 12, 14, "typescript"),
        (0, "element", "style", 17, 19, "vue"),
        (1, "rule", ".counter", 18, 18, "css"),
    ]
    assert outline(DOCS, "charts.mdx") == [
        (0, "section", "Charts", 4, 18, "mdx"),
        (1, "section", "Charts > Usage", 14, 18, "mdx"),
        (2, "function", "total", 17, 17, "typescript"),
    ]


@pytest.mark.parametrize(
    "name, want",
    [
        ("#products", "main#products"),
        ("main", "main#products"),
        (".menu", "main#products > ul.menu"),
        ("main#products > ul.menu > li:nth-of-type(2)", "main#products > ul.menu > li:nth-of-type(2)"),
        ("addToCart", "addToCart"),
        (".card", ".card"),  # the top-level rule; the one in @media has a longer name
        ("#cart > li.item:hover", "@media (max-width: 600px) .card, #cart > li.item:hover"),
    ],
)
def test_find_by_id_class_selector_or_path(name, want):
    assert parse(doc(PAGE, "page.html")).find(name).qualname == want


def test_find_says_what_is_there_or_what_is_ambiguous():
    syntax = parse(doc(PAGE, "page.html"))
    with pytest.raises(UnknownSymbolError, match="ambiguous: script:nth-of-type"):
        syntax.find("script")
    with pytest.raises(UnknownSymbolError, match="no symbol '#nope'; symbols: style, .card"):
        syntax.find("#nope")
    assert parse(doc(STYLES, "s.css")).find("#main > a.primary:hover::before").kind == "rule"  # `::` kept


def test_lsp_explain_target_round_trips():
    """The language server names the symbol at the cursor by its qualified name: it must find it again."""
    for text, name in ((PAGE, "page.html"), (STYLES, "s.css"), (SFC, "Counter.vue"), (DOCS, "charts.mdx")):
        d = doc(text, name)
        syntax = parse(d)
        for sym in syntax.symbols():
            offset = d.line_start(sym.start_line) + len(d.line(sym.start_line)) - len(d.line(sym.start_line).lstrip())
            here = syntax.enclosing(offset)
            assert here is not None and syntax.find(here.qualname) is here


# -- facts ----------------------------------------------------------------------------------------


def test_html_element_facts():
    f = facts(PAGE, "page.html", "#products")
    assert (f["kind"], f["name"], f["start_line"], f["end_line"]) == ("element", "main#products", 15, 22)
    assert f["signature"] == '<main id="products" class="grid wide">'
    assert f["docstring"] == "The list of products"
    assert f["details"] == {
        "tag": "main",
        "id": "products",
        "classes": ["grid", "wide"],
        "attributes": ['id="products"', 'class="grid wide"'],
        "children": ["ul.menu", "img", "button"],
        "closing_tag": "line 22",
    }
    assert f["members"] == [
        'element <ul class="menu"> (lines 16-19)',
        'element <button onclick="addToCart(1)" disabled> (lines 21-21)',
    ]
    button = facts(PAGE, "page.html", "button")["details"]
    assert button["attributes"] == ['onclick="addToCart(1)"', "disabled"] and button["text"] == "Add"
    items = facts(PAGE, "page.html", "main#products > ul.menu")["details"]
    assert items["children"] == ["li ×2"]
    script = facts(PAGE, "page.html", "script:nth-of-type(1)")
    assert script["details"]["content"] == "javascript, lines 24-27" and "children" not in script["details"]
    assert script["members"] == ["function addToCart(id) (lines 25-27)"]


def test_html_file_facts_imports_and_regions():
    f = facts(PAGE, "page.html")
    assert f["imports"] == ['<link rel="stylesheet" href="site.css">', 'import { api } from "./api.js";']
    assert f["details"] == {"embedded": ["css (style) lines 7-10", "javascript (script) lines 24-27"]}


def test_closing_tags_of_void_self_closing_and_implied_elements():
    text = (
        "<section>\n  <img\n    src='a.png'>\n  <x-card\n    big />\n"
        "  <ul>\n    <li id='a'>one\n    <li>two\n  </ul>\n</section>\n"
    )
    d = doc(text, "x.html")
    assert resolve_target(d, "img").facts.details["closing_tag"] == "none: a void element"
    assert resolve_target(d, "x-card").facts.details["closing_tag"] == "none: self-closing"
    assert resolve_target(d, "#a").facts.details["closing_tag"] == "none: closed implicitly by what follows it"
    assert resolve_target(d, "section").facts.details["closing_tag"] == "line 10"


@pytest.mark.parametrize(
    "selector, specificity",
    [
        ("a", "0,0,1"),
        (".a", "0,1,0"),
        ("#a", "1,0,0"),
        ("a.b#c", "1,1,1"),
        ("ul li:hover", "0,1,2"),
        ("a::before", "0,0,2"),
        ("a:before", "0,0,2"),  # the legacy one-colon pseudo-element
        ("li:not(.x, #y)", "1,0,1"),  # :not counts its most specific argument
        (":is(h1, h2) > p", "0,0,2"),
        (":where(.a) p", "0,0,1"),  # :where counts nothing
        ('input[type="text"]', "0,1,1"),
        ("*", "0,0,0"),
        ("nav > a + b ~ i", "0,0,4"),
    ],
)
def test_css_specificity(selector, specificity):
    f = facts(selector + " { color: red; }\n", "s.css", selector)
    assert f["details"]["specificity"] == [f"{selector}: ({specificity})"]


def test_css_rule_facts():
    f = facts(STYLES, "s.css", "#main > a.primary:hover::before")
    assert f["docstring"] == "Buttons" and f["signature"] == ".btn, #main > a.primary:hover::before"
    assert f["details"] == {
        "selectors": [".btn", "#main > a.primary:hover::before"],
        "specificity": [".btn: (0,1,0)", "#main > a.primary:hover::before: (1,2,2)"],
        "properties": ["color: red", "margin: 0 auto !important"],
    }
    inner = facts(STYLES, "s.css", "nav ul li[data-x]")["details"]
    assert inner["context"] == ["@media (max-width: 600px)"] and inner["specificity"] == ["nav ul li[data-x]: (0,1,3)"]
    nested = facts(STYLES, "s.css", ".card &:hover")["details"]
    assert nested["specificity"] == ["&:hover: (0,2,0)"] and nested["context"] == ["nested in .card"]
    media = facts(STYLES, "s.css", "@media (max-width: 600px)")
    assert media["details"]["prelude"] == "@media (max-width: 600px)"
    assert media["members"] == ["rule nav ul li[data-x] (lines 5-5)"]
    assert facts(STYLES, "s.css", "@keyframes spin")["details"]["steps"] == ["from", "to"]
    assert facts(STYLES, "s.css")["imports"] == ['@import url("base.css");']


def test_react_component_facts_from_destructuring_and_props_type():
    f = facts(COMPONENTS, "ui.tsx", "Button")
    assert f["kind"] == "function" and f["docstring"] == "A button with a badge."
    assert f["details"] == {
        "component": "React function component",
        "props": ["label: string", "onClick?: () => void", 'size?: "s" | "m" = "m"'],
        "hooks": ["useState"],
        "renders": ["<button>"],
        "components_used": ["Badge"],
    }
    card = facts(COMPONENTS, "ui.tsx", "Card")["details"]
    assert card["props"] == ["title: string"] and card["renders"] == ["<div>"]
    memo = facts(COMPONENTS, "ui.tsx", "List")  # memo(function List(...)) is a component too
    assert memo["details"]["props"] == ["items: string[]", "onPick?: (s: string) => void", "title: string", "...rest"]
    assert memo["details"]["hooks"] == ["useRef"] and memo["details"]["renders"] == ["<ul>", "<>"]
    assert memo["details"]["components_used"] == ["Item"]
    assert "component" not in facts(COMPONENTS, "ui.tsx", "helper")["details"]  # no JSX: a plain function


def test_react_component_props_from_member_access_in_javascript():
    d = facts(JS_COMPONENT, "greeting.jsx", "Greeting")["details"]
    assert d["props"] == ["name", "punctuation"] and d["hooks"] == [] and d["renders"] == ["<p>"]


def test_embedded_function_facts_and_vue_template_context():
    f = facts(SFC, "Counter.vue", "increment")
    assert (f["language"], f["returns_annotation"], f["start_line"]) == ("typescript", "void", 12)
    assert f["details"] == {"embedded_in": "vue (a typescript region)"}
    syntax = parse(doc(SFC, "Counter.vue"))
    assert syntax.identifiers(3, 4) == ["increment", "count"]  # @click="increment", {{ count }}
    assert [s.qualname for s in used_definitions(syntax, 3, 4)] == ["increment"]


def test_rendered_facts_markdown_and_prompt_lines():
    target = resolve_target(doc(PAGE, "page.html"), "#products")
    md = render_facts(target)
    assert "- **Kind:** element, lines 15-22" in md
    assert "- **Classes:** `grid`, `wide`" in md
    assert "- **Closing tag:** line 22" in md
    assert "- **Children:** `ul.menu`, `img`, `button`" in md
    lines = facts_lines(target.facts)
    assert "closing tag: line 22" in lines and 'attributes: id="products"; class="grid wide"' in lines
    component = resolve_target(doc(COMPONENTS, "ui.tsx"), "Card")
    assert "- **Hooks:** none" in render_facts(component)
    assert ("Props", ["title: string"]) in detail_items(component.facts)


def test_range_facts_reach_into_scripts():
    f = resolve_target(doc(PAGE, "page.html"), lines=(24, 27)).facts
    assert f.calls == ["api.post"]
    assert f.members == ['element <script type="module"> (lines 23-28)', "function addToCart(id) (lines 25-27)"]


# -- FIM context ----------------------------------------------------------------------------------


def test_fim_context_notes_the_embedded_language_and_brings_script_definitions():
    body = "\n".join(f'    <p class="row-{i}">row {i}</p>' for i in range(60))
    text = SFC.replace("    <span>{{ count }}</span>\n", "    <span>{{ count }}</span>\n" + body + "\n")
    d = doc(text, "Counter.vue")
    offset = text.index("increment") + len("increment")
    ctx = fim_context(d, offset, lambda s: (len(s) + 3) // 4, 200, parse(d))
    assert ctx.suffix_cut and any("function increment" in t for _, t in ctx.other_files)
    script = fim_context(d, text.index("count.value"), lambda s: (len(s) + 3) // 4, 2000, parse(d))
    assert script.language == "typescript" and "the cursor is in vue's embedded typescript" in script.notes


# -- tags -----------------------------------------------------------------------------------------


def test_tag_scanner():
    text = '<!-- <x> --><a href="a>b">x</a><br><img src=x /><script>if (a<b) {}</script><p>'
    assert [(t.kind, t.name) for t in scan_tags(text)] == [
        ("open", "a"),
        ("close", "a"),
        ("self", "br"),
        ("self", "img"),
        ("open", "script"),
        ("close", "script"),
        ("open", "p"),
    ]
    jsx = "const a = useState<string>(x) < 2; const b = <A f={() => x > 1}><>hi</></A>"
    assert [(t.kind, t.name) for t in scan_tags(jsx, jsx=True)] == [
        ("open", "A"),
        ("open", ""),
        ("close", ""),
        ("close", "A"),
    ]
    assert [t.name for t in open_tags("<ul><li>a<li>b")] == ["ul", "li"]  # a sibling item ends the last
    assert [t.name for t in unmatched_closers("</b> more</p>\n<p>x</p></div>")] == ["b", "p", "div"]


# -- post-processing ------------------------------------------------------------------------------

WEB_GOLDEN = [
    # (name, prefix, raw, suffix, spec, expected)
    (
        "html: stop where the file closes the list",
        "<ul>\n  ",
        "<li>One</li>\n  <li>Two</li>\n</ul>\n<p>x</p>\n",
        "\n</ul>\n",
        HTML,
        "<li>One</li>\n  <li>Two</li>",
    ),
    (
        "html: close an element the model left open",
        "<body>\n  ",
        '<div class="card">\n    <h2>Title</h2>\n',
        "\n</body>\n",
        HTML,
        '<div class="card">\n    <h2>Title</h2>\n  </div>',
    ),
    ("html: an editor's auto-closed tag is not doubled", "<p>", "Hello world</p>\n", "</p>\n", HTML, "Hello world"),
    (
        "html: between tags the content is multi-line",
        "<div>",
        "\n  <p>Hi</p>\n</div>\n",
        "</div>\n",
        HTML,
        "\n  <p>Hi</p>\n",
    ),
    ("html: an inline element closed on its line", "<p>Some ", "<b>bold text\n", "\n", HTML, "<b>bold text</b>"),
    (
        "html: void elements never close",
        "<div>\n  ",
        '<img src="a.png" alt="x">\n',
        "\n</div>",
        HTML,
        '<img src="a.png" alt="x">',
    ),
    ("html: the element closes and the line ends", "<p>", "Hello</p>\n<p>More</p>\n", "", HTML, "Hello</p>"),
    (
        "html <style>: css block end",
        "<style>\n  .a {",
        "\n    color: red;\n  }\n  .b { x: y }\n</style>\n",
        "\n</style>\n",
        HTML,
        "\n    color: red;\n  }",
    ),
    (
        "html <style>: the rule closed",
        "<style>\n  .a {",
        "\n    color: red;\n",
        "\n</style>\n",
        HTML,
        "\n    color: red;\n  }",
    ),
    (
        "html <script>: javascript block end",
        "<script>\nfunction f(a) {\n  ",
        "return a + 1;\n}\n\nfunction g() {\n",
        "\n}\n</script>\n",
        HTML,
        "return a + 1;",
    ),
    (
        "css: stop before the file's brace",
        ".btn {\n  ",
        "color: red;\n  margin: 0;\n}\n\n.next {\n",
        "\n}\n",
        CSS,
        "color: red;\n  margin: 0;",
    ),
    (
        "css: a new rule's braces balanced",
        ".btn {",
        "\n  color: red;\n  padding: 0 4px;\n",
        "\n\n.b { x: y }\n",
        CSS,
        "\n  color: red;\n  padding: 0 4px;\n}",
    ),
    (
        "css: quotes in comments are not strings",
        "/* don't */\n.btn {",
        "\n  color: red;\n",
        "",
        CSS,
        "\n  color: red;\n}",
    ),
    ("css: a declaration is one line", ".btn { color: ", "red; }\n.x { y: z }\n", " }\n", CSS, "red;"),
    (
        "vue <template>: closed by the file",
        "<template>\n  <div>\n    ",
        "<span>{{ a }}</span>\n  </div>\n</template>\n",
        "\n  </div>\n</template>\n",
        VUE,
        "<span>{{ a }}</span>",
    ),
    (
        "vue <script lang=ts>",
        '<template><p/></template>\n<script setup lang="ts">\nfunction inc(n: number) {\n  ',
        "return n + 1\n}\n</script>\n",
        "\n}\n</script>\n",
        VUE,
        "return n + 1",
    ),
    (
        "tsx: JSX closed at its opener's indentation",
        "function A() {\n  return (\n    ",
        '<div className="a">\n      <p>hi</p>\n',
        "\n  );\n}\n",
        TSX,
        '<div className="a">\n      <p>hi</p>\n    </div>',
    ),
    (
        "tsx: the file closes the element",
        "function A() {\n  return (\n    <div>\n      ",
        "<p>hi</p>\n    </div>\n  );\n}\n",
        "\n    </div>\n  );\n}\n",
        TSX,
        "<p>hi</p>",
    ),
    (
        "tsx: a generic is not a tag",
        "function A() {\n  const [s, setS] = ",
        'useState<string>("")\n',
        "\n}\n",
        TSX,
        'useState<string>("")',
    ),
    ("jsx: an inline element", "const el = ", "<b>hi\n", "\n", JS, "<b>hi</b>"),
    ("mdx: a JSX block", "# T\n\n<Chart>\n  ", "<Bar x={1} />\n</Chart>\n\nmore", "\n</Chart>\n", MDX, "<Bar x={1} />"),
    ("mdx: prose is plain text", "# T\n\nSome ", "text here\nand more\n", "\n", MDX, "text here"),
]


@pytest.mark.parametrize(
    "prefix, raw, suffix, spec, expected", [c[1:] for c in WEB_GOLDEN], ids=[c[0] for c in WEB_GOLDEN]
)
def test_web_postprocess_golden(prefix, raw, suffix, spec, expected):
    assert postprocess(prefix, raw, suffix, spec).text == expected


@pytest.mark.parametrize(
    "prefix, suffix, spec, mode",
    [
        ("<div>", "</div>\n", HTML, "multi"),  # between an element's tags
        ("<p>Some ", "</p>\n", HTML, "single"),
        ("<br>", "</div>", HTML, "single"),  # a void element opens nothing
        ("<style>\n.a { color: ", ";\n}\n</style>", HTML, "single"),
        ("<style>\n.a {", "\n}\n</style>", HTML, "multi"),
        ("return <div>", "</div>;", TSX, "multi"),
    ],
)
def test_web_decide_mode(prefix, suffix, spec, mode):
    assert decide_mode(prefix, suffix, spec) == mode


def test_close_tags_leaves_what_the_suffix_closes():
    assert close_tags("<ul>\n  ", "<li>One", "</li>\n</ul>", HTML) == "<li>One"
    assert close_tags("<ul>\n  ", "<li><a href='#'>Home", "</li>\n</ul>", HTML) == "<li><a href='#'>Home</a>"
    assert close_tags("<ul>\n  ", "<li><a href='#'>Home", "\n</ul>", HTML) == "<li><a href='#'>Home</a></li>"
    assert close_tags("", "<div>", "", CSS) == "<div>"  # not markup


def test_block_watcher_stops_in_a_style_region():
    w = BlockWatcher("<style>\n.a {\n  ", "\n}\n</style>\n", HTML, "multi")
    assert not w.push("color: red;\n")
    assert w.push("}\n.b {\n")  # the rule closed: generation can stop


# -- a real model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_checkpoints):
    from demi.assistant.engines import open_engine

    return open_engine(str(tiny_checkpoints("qwen2", max_position_embeddings=1024)), context=1024)


def test_explain_an_html_element_with_a_model(engine):
    from demi.assistant.explain import explain

    result = explain(engine, doc(PAGE, "page.html"), symbol="#products", max_tokens=4, budget=512, lead="facts")
    assert result.symbol == "main#products" and result.lines == (15, 22)
    assert "- **Closing tag:** line 22" in result.markdown and result.facts.details["id"] == "products"


def test_complete_in_a_script_region_with_a_model(engine):
    from demi.assistant.complete import complete

    d = doc(PAGE, "page.html")
    result = complete(engine, d, PAGE.index('api.post("/cart"'), max_tokens=4)
    assert "the cursor is in html's embedded javascript" in result.notes
    assert (result.line, result.col) == (26, 14) and result.completion_tokens <= 4
