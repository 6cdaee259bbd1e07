"""Python scopes read from the tree-sitter tree: which binding a name in a function refers to.

`rename.py` (and the static rewrites) must change a local's every binding and use and nothing
else: not a string or a comment, not an attribute of some object (`obj.x`), not a keyword
argument's name (`f(x=1)`), and not a name that a nested scope binds for itself (a nested
function's own `x`, a comprehension's loop variable). This module answers, for an identifier
node, which scope it belongs to, following Python's rules: function and lambda bodies,
comprehensions (their first iterable excepted) and class bodies are scopes; a class body is not
seen from the functions inside it; `global` and `nonlocal` send a name out; a walrus binds in the
nearest function; default values, annotations, decorators and a definition's own name belong to
the scope around the definition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from demi.assistant.syntax import text_of

FUNCTIONS = frozenset({"function_definition", "lambda"})
COMPREHENSIONS = frozenset(
    {"list_comprehension", "set_comprehension", "dictionary_comprehension", "generator_expression"}
)
SCOPES = FUNCTIONS | COMPREHENSIONS | {"class_definition"}
_PARAM_LISTS = frozenset({"parameters", "lambda_parameters"})
_TARGET_CONTAINERS = frozenset(
    {"pattern_list", "tuple_pattern", "list_pattern", "tuple", "list", "parenthesized_expression", "expression_list"}
)


def children_on_path(ancestor: Any, node: Any) -> Any | None:
    """The child of `ancestor` that holds `node` (None when `node` is `ancestor`)."""
    child = None
    while node is not None and node.id != ancestor.id:
        child, node = node, node.parent
    return child if node is not None else None


def field_of(node: Any) -> str | None:
    """The field name under which `node` sits in its parent (None for unnamed positions)."""
    parent = node.parent
    if parent is None:
        return None
    for i, c in enumerate(parent.children):
        if c.id == node.id:
            name: str | None = parent.field_name_for_child(i)
            return name
    return None


def is_parameter_name(node: Any) -> bool:
    """Whether identifier `node` is a parameter's own name (not its default or annotation)."""
    parent = node.parent
    if parent is None:
        return False
    if parent.type in _PARAM_LISTS:
        return True
    if parent.type in ("default_parameter", "typed_default_parameter"):
        return field_of(node) == "name"
    if parent.type == "typed_parameter":
        first = parent.named_children[0] if parent.named_children else None
        return first is not None and first.id == node.id
    if parent.type in ("list_splat_pattern", "dictionary_splat_pattern"):
        grand = parent.parent
        return grand is not None and (grand.type in _PARAM_LISTS or grand.type == "typed_parameter")
    return False


def is_name(node: Any) -> bool:
    """Whether identifier `node` names a variable (binding or use): not an attribute after a dot,
    not a keyword argument's name, not part of an import's module path."""
    if node.type != "identifier":
        return False
    parent = node.parent
    if parent is None:
        return True
    if parent.type == "attribute" and field_of(node) == "attribute":
        return False
    if parent.type == "keyword_argument" and field_of(node) == "name":
        return False
    if parent.type == "dotted_name":
        if _inside(parent, ("import_statement", "import_from_statement", "future_import_statement")):
            return False
        return parent.named_children[0].id == node.id  # `case Color.RED`: only `Color` is a name
    return not _inside(node, ("import_statement", "import_from_statement", "future_import_statement"))


def _inside(node: Any, types: tuple[str, ...]) -> bool:
    p = node.parent
    while p is not None:
        if p.type in types:
            return True
        if p.type in SCOPES or p.type == "module":
            return False
        p = p.parent
    return False


def in_inner_region(scope: Any, node: Any) -> bool:
    """Whether `node` (inside `scope`'s node) is evaluated in that scope, not in the one around it."""
    child = children_on_path(scope, node)
    if child is None:
        return False
    where = field_of(child)
    if scope.type in FUNCTIONS:
        if where == "body":
            return True
        return where == "parameters" and node.type == "identifier" and is_parameter_name(node)
    if scope.type == "class_definition":
        return where == "body"
    # a comprehension: all but its first `for` clause's iterable
    first = next((c for c in scope.named_children if c.type == "for_in_clause"), None)
    if first is not None and child.id == first.id:
        right = first.child_by_field_name("right")
        return not (right is not None and contains(right, node))
    return True


def scope_of(node: Any, stop: Any | None = None) -> Any | None:
    """The innermost scope node whose inner region holds `node` (None: the module, or above `stop`)."""
    p = node.parent
    while p is not None:
        if p.type in SCOPES and in_inner_region(p, node):
            return p
        if stop is not None and p.id == stop.id:
            return None
        p = p.parent
    return None


@dataclass
class ScopeNames:
    """The names a scope binds itself, and those it declares `global` or `nonlocal`."""

    bound: dict[str, list[Any]] = field(default_factory=dict)  # name -> its binding identifier nodes
    globals: set[str] = field(default_factory=set)
    nonlocals: set[str] = field(default_factory=set)
    imported: set[str] = field(default_factory=set)


def _targets(node: Any) -> Iterator[Any]:
    """The identifiers an assignment target binds (`a`, `a, (b, *c)`); never `x.y` or `x[i]`."""
    if node is None:
        return
    if node.type == "identifier":
        yield node
    elif node.type in _TARGET_CONTAINERS or node.type in ("list_splat_pattern", "as_pattern_target"):
        for c in node.named_children:
            yield from _targets(c)


def _own_nodes(scope: Any) -> Iterator[Any]:
    """Every node evaluated in `scope` itself: nested scopes' own regions are skipped (their outer
    parts, such as a nested function's name, defaults and decorators, are `scope`'s)."""
    start = scope.children if scope.type == "module" else [c for c in scope.children if _region_child(scope, c)]
    stack = list(reversed(start))
    while stack:
        n = stack.pop()
        yield n
        if n.type in SCOPES:
            stack.extend(reversed([c for c in n.children if not _region_child(n, c)]))
        else:
            stack.extend(reversed(n.children))


def _region_child(scope: Any, child: Any) -> bool:
    """Whether the direct child `child` of `scope` is evaluated in the scope's own region (a
    function's parameter names are bound there too, but `scope_names` reads them separately)."""
    if scope.type in FUNCTIONS or scope.type == "class_definition":
        return field_of(child) == "body"
    first = next((c for c in scope.named_children if c.type == "for_in_clause"), None)
    return not (first is not None and child.id == first.id)


def contains(outer: Any, node: Any) -> bool:
    """Whether `node` is `outer` or lies under it."""
    while node is not None:
        if node.id == outer.id:
            return True
        node = node.parent
    return False


def scope_names(scope: Any) -> ScopeNames:
    """What `scope` (a function, lambda, class, comprehension or the module) binds and declares."""
    out = ScopeNames()

    def bind(ident: Any) -> None:
        out.bound.setdefault(text_of(ident), []).append(ident)

    if scope.type in FUNCTIONS:
        params = scope.child_by_field_name("parameters")
        if params is not None:
            for n in _walk(params):
                if n.type == "identifier" and is_parameter_name(n):
                    bind(n)
    if scope.type in COMPREHENSIONS:
        for clause in scope.named_children:
            if clause.type == "for_in_clause":
                for ident in _targets(clause.child_by_field_name("left")):
                    bind(ident)
    for n in _own_nodes(scope):
        t = n.type
        if t in ("assignment", "augmented_assignment"):
            for ident in _targets(n.child_by_field_name("left")):
                bind(ident)
        elif t == "for_statement":
            for ident in _targets(n.child_by_field_name("left")):
                bind(ident)
        elif t == "as_pattern_target":
            for ident in _targets(n):
                bind(ident)
        elif t in ("function_definition", "class_definition") and n.id != scope.id:
            name = n.child_by_field_name("name")
            if name is not None:
                bind(name)
        elif t == "delete_statement":
            for c in n.named_children:
                for ident in _targets(c):
                    bind(ident)
        elif t == "global_statement":
            out.globals.update(text_of(c) for c in n.named_children if c.type == "identifier")
        elif t == "nonlocal_statement":
            out.nonlocals.update(text_of(c) for c in n.named_children if c.type == "identifier")
        elif t in ("import_statement", "import_from_statement"):
            for name in _imported(n):
                out.imported.add(name)
                out.bound.setdefault(name, [])
        elif t == "case_pattern":
            for c in n.named_children:
                if c.type == "dotted_name" and len(c.named_children) == 1:
                    bind(c.named_children[0])
        elif t == "splat_pattern" and n.parent is not None and n.parent.type == "case_pattern":
            for c in n.named_children:
                if c.type == "identifier":
                    bind(c)
    if scope.type in FUNCTIONS or scope.type == "module":
        for n in _walrus_targets(scope):
            bind(n)
    return out


def _imported(node: Any) -> list[str]:
    out = []
    for c in node.children_by_field_name("name"):
        if c.type == "aliased_import":
            alias = c.child_by_field_name("alias")
            out.append(text_of(alias))
        elif c.type == "dotted_name":
            out.append(text_of(c.named_children[0]) if node.type == "import_statement" else text_of(c))
    return out


def _walrus_targets(scope: Any) -> Iterator[Any]:
    """`(x := ...)` binds x in the nearest function, even from inside a comprehension."""
    for n in _walk(scope):
        if n.type != "named_expression":
            continue
        owner = scope_of(n)
        while owner is not None and owner.type in COMPREHENSIONS:
            owner = scope_of(owner)
        if (owner.id if owner is not None else None) == (scope.id if scope.type != "module" else None):
            name = n.child_by_field_name("name")
            if name is not None:
                yield name


def _walk(node: Any) -> Iterator[Any]:
    cursor = node.walk()
    while True:
        yield cursor.node
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return


def resolves_to(ident: Any, owner: Any, cache: dict[int, ScopeNames] | None = None) -> bool:
    """Whether the name `ident` (an identifier inside `owner`'s node) refers to a binding of the
    scope `owner`: the innermost scope that binds it, walking out, is `owner`."""
    name = text_of(ident)
    cache = cache if cache is not None else {}
    scope = scope_of(ident)
    innermost = True
    while scope is not None:
        names = cache.get(scope.id)
        if names is None:
            names = cache[scope.id] = scope_names(scope)
        if scope.id == owner.id:
            return name in names.bound and name not in names.globals and name not in names.nonlocals
        if scope.type == "class_definition" and not innermost:
            scope = scope_of(scope)
            continue
        if name in names.globals:
            return False
        if name not in names.nonlocals and name in names.bound:
            return False
        innermost = False
        scope = scope_of(scope)
    return False


def names_in(node: Any) -> Iterator[Any]:
    """Every identifier under `node` that names a variable (see `is_name`)."""
    for n in _walk(node):
        if n.type == "identifier" and is_name(n):
            yield n


def walk_nodes(node: Any) -> Iterator[Any]:
    return _walk(node)
