"""Static facts of the web languages: an HTML element, a CSS rule, an MDX section, a React component.

Each is read from the syntax tree, so `demi explain` can show it as certain: an element's tag,
id, classes, attributes, children and the line of its closing tag; a rule's selectors with their
specificity, its declarations and the at-rules around it; a component's props (from its
destructured parameter and its TypeScript props type), the hooks it calls and what it renders.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from demi.assistant.embedded import region_lines
from demi.assistant.facts import Facts, member_label
from demi.assistant.languages import LangSpec
from demi.assistant.markup import VOID
from demi.assistant.syntax import Symbol, Syntax, function_value, one_line, text_of, walk
from demi.assistant.web_syntax import at_rule_head, element, selectors_of


def _members(syntax: Syntax, sym: Symbol) -> list[str]:
    """The symbols one level inside `sym` (child elements, nested rules, a script's functions)."""
    return [
        f"{member_label(s)} (lines {s.start_line}-{s.end_line})"
        for s in syntax.symbols()
        if s.depth == sym.depth + 1
        and sym.outer.start_byte <= s.outer.start_byte
        and s.outer.end_byte <= sym.outer.end_byte
    ][:40]


def web_symbol_facts(syntax: Syntax, sym: Symbol, spec: LangSpec) -> Facts:
    f = Facts(sym.kind, sym.qualname, sym.start_line, sym.end_line, sym.signature, language=spec.name)
    f.members = _members(syntax, sym)
    if sym.kind == "element":
        f.details = element_details(syntax, sym)
    elif sym.kind == "section":
        f.details = {"heading": sym.signature}
    else:
        f.details = css_details(sym.node)
    f.docstring = _comment_before(sym.node, spec)
    if syntax.spec is not None and spec is not syntax.spec:
        f.details["embedded_in"] = f"{syntax.spec.name} (a {spec.name} region)"
    return f


def _comment_before(node: Any, spec: LangSpec) -> str | None:
    prev = node.prev_named_sibling
    if prev is None or prev.type not in spec.comments or prev.end_point[0] < node.start_point[0] - 1:
        return None
    text = text_of(prev).strip()
    for a, b in (("<!--", "-->"), ("/*", "*/")):
        if text.startswith(a):
            text = text[len(a) :].removesuffix(b)
    return " ".join(text.split()) or None


# -- HTML ---------------------------------------------------------------------------------------


def element_details(syntax: Syntax, sym: Symbol) -> dict[str, Any]:
    el = element(sym.node)
    if el is None:
        return {}
    out: dict[str, Any] = {"tag": el.tag}
    if el.id:
        out["id"] = el.id
    if el.classes:
        out["classes"] = el.classes
    out["attributes"] = [k if v is None else f'{k}="{v}"' for k, v in el.attributes]
    counts: dict[str, int] = {}
    text: list[str] = []
    for child in sym.node.named_children:
        kid = element(child)
        if kid is not None:
            counts[kid.label] = counts.get(kid.label, 0) + 1
        elif child.type == "text":
            text.append(text_of(child))
    if counts or not (el.self_closing or el.tag.lower() in VOID or sym.node.type != "element"):
        out["children"] = [k if n == 1 else f"{k} ×{n}" for k, n in counts.items()]
    words = " ".join(" ".join(text).split())
    if words:
        out["text"] = one_line(words, 100)
    if el.end_tag is not None:
        out["closing_tag"] = f"line {el.end_tag.start_point[0] + 1}"
    elif el.self_closing:
        out["closing_tag"] = "none: self-closing"
    elif el.tag.lower() in VOID:
        out["closing_tag"] = "none: a void element"
    else:
        out["closing_tag"] = "none: closed implicitly by what follows it"
    for region, _ in syntax.embedded:
        if region.host is not None and region.host.id == sym.node.id:
            first, last = region_lines(syntax.source, region)
            out["content"] = f"{region.spec.name}, lines {first}-{last}"
    return out


# -- CSS ----------------------------------------------------------------------------------------

Spec3 = tuple[int, int, int]
_ZERO: Spec3 = (0, 0, 0)
_FORGIVING = {"is", "not", "has", "matches", "any", "-webkit-any", "-moz-any"}
_LEGACY_ELEMENTS = {"before", "after", "first-line", "first-letter"}
_NAME_PARTS = {"class_name", "id_name", "attribute_name", "arguments", "string_value", "plain_value", "identifier"}


def _add(*specs: Spec3) -> Spec3:
    return (sum(s[0] for s in specs), sum(s[1] for s in specs), sum(s[2] for s in specs))


def _base(node: Any, nest: Spec3) -> Spec3:
    """The compound part before a simple selector's own marker: `a` in `a.primary`."""
    out = _ZERO
    for child in node.children:
        if not child.is_named:
            break
        if child.type not in _NAME_PARTS:
            out = _add(out, specificity(child, nest))
    return out


def specificity(node: Any, nest: Spec3 = _ZERO) -> Spec3:
    """Selectors Level 4 specificity (ids, classes/attributes/pseudo-classes, types/pseudo-elements);
    `nest`: what `&` stands for (the most specific selector of the rule it is nested in)."""
    t = node.type
    if t == "id_selector":
        return _add((1, 0, 0), _base(node, nest))
    if t in ("class_selector", "attribute_selector"):
        return _add((0, 1, 0), _base(node, nest))
    if t == "pseudo_element_selector":
        return _add((0, 0, 1), _base(node, nest))
    if t == "pseudo_class_selector":
        name = next((text_of(c) for c in node.named_children if c.type == "class_name"), "").lower()
        args = next((c for c in node.named_children if c.type == "arguments"), None)
        if name == "where":
            own = _ZERO
        elif name in _FORGIVING and args is not None:
            own = max((specificity(a, nest) for a in args.named_children), default=_ZERO)
        elif name in _LEGACY_ELEMENTS:
            own = (0, 0, 1)
        else:
            own = (0, 1, 0)
        return _add(own, _base(node, nest))
    if t == "tag_name":
        return (0, 0, 1)
    if t == "nesting_selector":
        return nest
    if t in ("universal_selector", "comment"):
        return _ZERO
    return _add(_ZERO, *(specificity(c, nest) for c in node.named_children))


def _selector_nodes(rule: Any) -> list[Any]:
    sel = next((c for c in rule.named_children if c.type == "selectors"), None)
    return [c for c in sel.named_children if c.type != "comment"] if sel is not None else []


def _outer_rules(node: Any) -> Iterator[Any]:
    """The rules and at-rules around `node`, innermost first."""
    p = node.parent
    while p is not None:
        if p.type in ("rule_set", "media_statement", "supports_statement", "at_rule", "keyframes_statement"):
            yield p
        p = p.parent


def _nest(rule: Any) -> Spec3:
    parent = next((p for p in _outer_rules(rule) if p.type == "rule_set"), None)
    if parent is None:
        return _ZERO
    outer = _nest(parent)
    return max((specificity(s, outer) for s in _selector_nodes(parent)), default=_ZERO)


def css_details(node: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    block = next((c for c in node.named_children if c.type in ("block", "keyframe_block_list")), None)
    if node.type == "rule_set":
        nest = _nest(node)
        sels = selectors_of(node)
        out["selectors"] = sels
        out["specificity"] = [
            f"{s}: ({a},{b},{c})" for s, (a, b, c) in zip(sels, (specificity(n, nest) for n in _selector_nodes(node)))
        ]
    else:
        out["prelude"] = at_rule_head(node)
    if block is not None and node.type == "keyframes_statement":
        out["steps"] = [one_line(text_of(k.named_children[0]), 40) for k in block.named_children if k.named_children]
    elif block is not None:
        out["properties"] = [
            one_line(text_of(d).rstrip(";"), 120) for d in block.named_children if d.type == "declaration"
        ]
    context = []
    for outer in _outer_rules(node):
        if outer.type == "rule_set":
            context.append("nested in " + ", ".join(selectors_of(outer)))
        else:
            context.append(at_rule_head(outer))
    if context:
        out["context"] = list(reversed(context))
    return out


# -- React components ---------------------------------------------------------------------------

_JSX = ("jsx_element", "jsx_self_closing_element")
_FUNCTIONS = ("function_declaration", "function_expression", "arrow_function", "function", "method_definition")
_HOOK = re.compile(r"(?:React\.)?(use[A-Z0-9]\w*|use)$")


def _root(node: Any) -> Any:
    while node.parent is not None:
        node = node.parent
    return node


def _jsx_name(node: Any) -> str:
    opening = node if node.type == "jsx_self_closing_element" else node.child_by_field_name("open_tag")
    name = opening.child_by_field_name("name") if opening is not None else None
    return text_of(name) if name is not None else ""


def _own_nodes(fn: Any) -> Iterator[Any]:
    """The nodes of a function's body outside the functions defined in it."""
    body = fn.child_by_field_name("body")
    if body is None:
        return
    stack = [body]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(c for c in reversed(n.named_children) if c.type not in _FUNCTIONS)


def _type_members(type_node: Any, root: Any, seen: int = 0) -> list[tuple[str, str | None, bool]]:
    """(name, type, optional) of each property of a props type: an object type, a named type or
    interface of the same file (followed), `A & B`, `React.FC<Props>`'s argument."""
    if type_node is None or seen > 4:
        return []
    t = type_node.type
    if t == "type_annotation":
        return _type_members(type_node.named_children[0] if type_node.named_children else None, root, seen)
    if t in ("object_type", "interface_body"):
        out = []
        for prop in type_node.named_children:
            if prop.type != "property_signature":
                continue
            ty = prop.child_by_field_name("type")
            optional = any(c.type == "?" for c in prop.children)
            out.append(
                (
                    text_of(prop.child_by_field_name("name")),
                    one_line(text_of(ty).lstrip(":").strip(), 60) if ty else None,
                    optional,
                )
            )
        return out
    if t == "intersection_type":
        return [m for c in type_node.named_children for m in _type_members(c, root, seen + 1)]
    if t == "generic_type":
        args = next((c for c in type_node.named_children if c.type == "type_arguments"), None)
        return _type_members(
            args.named_children[0] if args is not None and args.named_children else None, root, seen + 1
        )
    if t == "type_identifier":
        want = text_of(type_node)
        for n in walk(root):
            if (
                n.type in ("type_alias_declaration", "interface_declaration")
                and text_of(n.child_by_field_name("name")) == want
            ):
                body = n.child_by_field_name("value") or n.child_by_field_name("body")
                return _type_members(body, root, seen + 1)
    return []


def _destructured(pattern: Any) -> list[tuple[str, str | None]]:
    """(prop, default) of each name in an object pattern: `{ a, b = 2, c: alias, ...rest }`."""
    out: list[tuple[str, str | None]] = []
    for part in pattern.named_children:
        if part.type == "shorthand_property_identifier_pattern":
            out.append((text_of(part), None))
        elif part.type == "object_assignment_pattern":
            out.append(
                (text_of(part.child_by_field_name("left")), one_line(text_of(part.child_by_field_name("right")), 40))
            )
        elif part.type == "pair_pattern":
            value = part.child_by_field_name("value")
            default = (
                value.child_by_field_name("right") if value is not None and value.type == "assignment_pattern" else None
            )
            out.append((text_of(part.child_by_field_name("key")), one_line(text_of(default), 40) if default else None))
        elif part.type == "rest_pattern":
            out.append(("..." + text_of(part).lstrip("."), None))
    return out


def _props(fn: Any, declarator: Any) -> list[str]:
    params = fn.child_by_field_name("parameters")
    first = (
        params.named_children[0]
        if params is not None and params.named_children
        else fn.child_by_field_name("parameter")
    )
    if first is None:
        return []
    pattern, type_node = first, None
    if first.type in ("required_parameter", "optional_parameter"):
        pattern, type_node = first.child_by_field_name("pattern"), first.child_by_field_name("type")
    if pattern is not None and pattern.type == "assignment_pattern":  # ({ a } = {}) =>
        pattern = pattern.child_by_field_name("left")
    if type_node is None and declarator is not None and declarator.type == "variable_declarator":
        type_node = declarator.child_by_field_name("type")  # const C: React.FC<Props> = ...
    typed = _type_members(type_node, _root(fn))
    names: dict[str, list[Any]] = {n: [ty, opt, None] for n, ty, opt in typed}
    if pattern is not None and pattern.type == "object_pattern":
        for name, default in _destructured(pattern):
            names.setdefault(name, [None, False, None])[2] = default
    elif pattern is not None and pattern.type == "identifier":  # props.title in the body
        holder = text_of(pattern)
        for n in _own_nodes(fn):
            if n.type == "member_expression" and text_of(n.child_by_field_name("object")) == holder:
                names.setdefault(text_of(n.child_by_field_name("property")), [None, False, None])
    return [
        name + ("?" if opt else "") + (f": {ty}" if ty else "") + (f" = {default}" if default else "")
        for name, (ty, opt, default) in names.items()
    ]


def _rendered(fn: Any) -> list[str]:
    """The elements a component returns: the top JSX element of each `return` (both sides of a
    `cond ? <A/> : <B/>` or `cond && <A/>`), or of an arrow function's expression body."""
    exprs = []
    body = fn.child_by_field_name("body")
    if body is not None and body.type != "statement_block":
        exprs.append(body)
    exprs += [c for n in _own_nodes(fn) if n.type == "return_statement" for c in n.named_children[:1]]
    out: dict[str, None] = {}
    for expr in exprs:
        stack = [expr]
        while stack:
            n = stack.pop()
            if n.type in _JSX:
                out[f"<{_jsx_name(n)}>"] = None
            elif n.type not in _FUNCTIONS:
                stack.extend(reversed(n.named_children))
    return list(out)


def component_details(sym: Symbol, spec: LangSpec) -> dict[str, Any]:
    """A React function component's props, hooks and rendered elements; {} for other functions
    (a component is a capitalized function whose body holds JSX)."""
    node = sym.node
    fn = function_value(node, spec) if node.type == "variable_declarator" else node
    if fn is None or fn.type not in _FUNCTIONS or not sym.name[:1].isupper():
        return {}
    body = fn.child_by_field_name("body")
    if body is None or not any(n.type in _JSX for n in walk(body)):
        return {}
    hooks: dict[str, None] = {}
    used: dict[str, None] = {}
    for n in walk(body):
        if n.type == "call_expression":
            m = _HOOK.match(text_of(n.child_by_field_name("function")))
            if m:
                hooks[m.group(1)] = None
        elif n.type in _JSX:
            name = _jsx_name(n)
            if name[:1].isupper():
                used[name] = None
    return {
        "component": "React function component",
        "props": _props(fn, node),
        "hooks": list(hooks),
        "renders": _rendered(fn),
        "components_used": list(used),
    }
