"""Python types that static analysis can read off a function: from literals, defaults and use.

`param_types(fn)` gives each parameter whose type the code shows, with the evidence: its default
(`factor=2` -> int), or how the body uses it (`range(n)` -> int, `name.startswith(...)` -> str,
`stock.items()` -> dict). `return_type(fn, params)` reads every `return`: literals, comparisons,
calls of builtins and of the file's own annotated functions, displays and comprehensions, a
parameter of known type, a local whose assignments (and appends) all agree. Anything it cannot
tell is None: the caller asks the model, or leaves the hint out. Evidence is returned as text so
the refactor can say which hint came from where.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from demi.assistant import pyscope
from demi.assistant.syntax import text_of

_STR_METHODS = {
    "startswith", "endswith", "lower", "upper", "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines",
    "encode", "replace", "format", "isdigit", "isalpha", "isalnum", "isspace", "isupper", "islower", "title",
    "casefold", "partition", "rpartition", "zfill", "center", "ljust", "rjust", "expandtabs", "removeprefix",
    "removesuffix", "capitalize", "swapcase", "isidentifier", "isdecimal", "isnumeric",
}  # fmt: skip
_DICT_METHODS = {"items", "keys", "values", "setdefault", "popitem", "get"}
_LIST_METHODS = {"append", "extend", "insert", "sort", "reverse"}
_BYTES_METHODS = {"decode"}
_CALL_TYPES = {
    **dict.fromkeys(("str", "repr", "format", "chr", "hex", "oct", "bin", "ascii"), "str"),
    **dict.fromkeys(("int", "len", "ord", "hash", "id"), "int"),
    **dict.fromkeys(("bool", "isinstance", "issubclass", "callable", "hasattr", "all", "any"), "bool"),
    "float": "float",
    "list": "list",
    "sorted": "list",
    "dict": "dict",
    "set": "set",
    "frozenset": "frozenset",
    "tuple": "tuple",
    "bytes": "bytes",
    "bytearray": "bytearray",
}
_STR_RESULT_METHODS = {
    "join",
    "format",
    "lower",
    "upper",
    "strip",
    "lstrip",
    "rstrip",
    "replace",
    "title",
    "capitalize",
}
_INT_OPS = {"%", "//", "<<", ">>", "&", "|", "^"}
_LITERALS = {"integer": "int", "float": "float", "true": "bool", "false": "bool", "none": "None"}
BUILTIN_TYPES = frozenset(
    {"int", "str", "float", "bool", "bytes", "bytearray", "list", "dict", "set", "frozenset", "tuple", "object",
     "complex", "type", "None", "range", "slice", "memoryview"}
)  # fmt: skip


@dataclass
class Inferred:
    type: str
    evidence: str  # why, for the notes: "its default `2`", "used in `range(n)`"


def literal_type(node: Any) -> str | None:
    """The type of a literal or display node, None when it is not one."""
    t = node.type
    if t in _LITERALS:
        return _LITERALS[t]
    if t in ("string", "concatenated_string"):
        head = text_of(node)[:3].lower()
        if "b" in head.split('"')[0].split("'")[0]:
            return "bytes"
        return "str"
    if t in ("list", "list_comprehension"):
        return "list"
    if t in ("dictionary", "dictionary_comprehension"):
        return "dict"
    if t in ("set", "set_comprehension"):
        return "set"
    if t == "tuple":
        return "tuple"
    if t == "unary_operator" and node.named_children and node.named_children[-1].type in ("integer", "float"):
        return _LITERALS[node.named_children[-1].type]
    return None


def _uses(fn: Any, name: str) -> list[Any]:
    cache: dict[int, pyscope.ScopeNames] = {}
    body = fn.child_by_field_name("body")
    if body is None:
        return []
    return [n for n in pyscope.names_in(body) if text_of(n) == name and pyscope.resolves_to(n, fn, cache)]


def _use_evidence(use: Any) -> tuple[str, str] | None:
    """(type, where) that one use of a parameter implies, or None."""
    p = use.parent
    if p is None:
        return None
    shown = p.parent if p.type == "argument_list" or p.parent is not None and p.parent.type == "argument_list" else p
    if shown.type == "argument_list" and shown.parent is not None:
        shown = shown.parent
    where = f"`{_short(shown)}`"
    if p.type == "attribute" and pyscope.field_of(use) == "object":
        method = text_of(p.child_by_field_name("attribute"))
        call = p.parent
        if call is None or call.type != "call" or pyscope.field_of(p) != "function":
            return None
        where = f"`{_short(call)}`"
        for methods, ty in (
            (_STR_METHODS, "str"),
            (_DICT_METHODS, "dict"),
            (_LIST_METHODS, "list"),
            (_BYTES_METHODS, "bytes"),
        ):
            if method in methods:
                return ty, where
        return None
    if p.type == "argument_list" and p.parent is not None and p.parent.type == "call":
        if text_of(p.parent.child_by_field_name("function")) == "range":
            return "int", where
        return None
    if p.type == "binary_operator":
        op = text_of(p.child_by_field_name("operator"))
        other = p.child_by_field_name("right" if pyscope.field_of(use) == "left" else "left")
        lit = literal_type(other) if other is not None else None
        if op in _INT_OPS and lit == "int":
            return "int", where
        if op in ("+", "-", "*") and lit in ("int", "float"):
            return lit, where
        if op == "+" and lit == "str":
            return "str", where
        return None
    if p.type == "comparison_operator":
        others = [c for c in p.named_children if c.id != use.id]
        ops = {text_of(c) for c in p.children if not c.is_named}
        if len(others) == 1 and not ops & {"in", "not in", "is", "is not"}:
            lit = literal_type(others[0])
            if lit in ("int", "float", "str", "bytes"):
                return lit, where
        return None
    return None


def _short(node: Any) -> str:
    text = " ".join(text_of(node).split())
    return text if len(text) <= 40 else text[:39] + "…"


def param_types(fn: Any, skip_first: bool) -> dict[str, Inferred]:
    """What the code shows of each parameter's type (annotated ones are left out)."""
    params = fn.child_by_field_name("parameters")
    out: dict[str, Inferred] = {}
    if params is None:
        return out
    named = [c for c in params.named_children if c.type not in ("comment", "keyword_separator", "positional_separator")]
    for i, p in enumerate(named):
        if i == 0 and skip_first:
            continue
        if p.type in ("typed_parameter", "typed_default_parameter", "list_splat_pattern", "dictionary_splat_pattern"):
            continue
        name_node = p if p.type == "identifier" else p.child_by_field_name("name")
        if name_node is None:
            continue
        name = text_of(name_node)
        default = p.child_by_field_name("value") if p.type == "default_parameter" else None
        if default is not None:
            lit = literal_type(default)
            if lit is not None and lit != "None":
                out[name] = Inferred(lit, f"its default `{_short(default)}`")
                continue
        seen: dict[str, str] = {}
        for use in _uses(fn, name):
            found = _use_evidence(use)
            if found is not None:
                seen.setdefault(found[0], found[1])
        if {"int", "float"} <= set(seen) and len(seen) == 2:
            seen = {"float": seen["float"]}
        if len(seen) == 1:
            ty, where = next(iter(seen.items()))
            optional = default is not None and text_of(default) == "None"
            out[name] = Inferred(
                f"{ty} | None" if optional else ty, f"used in {where}" + (", default `None`" if optional else "")
            )
    return out


# -- return types --------------------------------------------------------------------------------------


def _union(types: Iterable[str | None]) -> str | None:
    seen: list[str] = []
    for t in types:
        if t is None:
            return None
        for part in t.split(" | "):
            if part not in seen:
                seen.append(part)
    if not seen:
        return None
    if "int" in seen and "float" in seen:
        seen.remove("int")
    if "None" in seen and len(seen) > 1:
        seen.remove("None")
        seen.append("None")
    return " | ".join(seen)


class ReturnReader:
    """Reads the type of a function's returned values (see the module's docstring)."""

    def __init__(self, fn: Any, params: dict[str, str], module_returns: dict[str, str]):
        self.fn = fn
        self.params = params  # parameter -> type (annotated or inferred)
        self.module_returns = module_returns  # the file's functions with a return annotation
        self.names = pyscope.scope_names(fn)
        self._busy: set[str] = set()

    def returns(self) -> tuple[str | None, str]:
        """(the return type, the evidence), or (None, why not)."""
        values: list[Any] = []
        bare = False
        for n in pyscope.walk_nodes(self.fn):
            owner = _owner(n) if n.type in ("yield", "return_statement") else None
            if owner is None or owner.id != self.fn.id:
                continue
            if n.type == "yield":
                return None, "a generator"
            if n.type == "return_statement":
                v = next((c for c in n.named_children if c.type != "comment"), None)
                if v is None:
                    bare = True
                else:
                    values.append(v)
        if not values:
            return "None", "no `return` with a value"
        types = [self.type_of(v) for v in values] + (["None"] if bare else [])
        found = _union(types)
        if found is None:
            unknown = next(v for v, t in zip(values, types) if t is None)
            return None, f"`return {_short(unknown)}`"
        shown = ", ".join(f"`{_short(v)}`" for v in values[:3])
        return found, f"returns {shown}"

    def type_of(self, node: Any, depth: int = 0) -> str | None:
        if depth > 6:
            return None
        lit = literal_type(node)
        t = node.type
        if t == "list" and node.named_children:
            inner = _union(self.type_of(c, depth + 1) for c in node.named_children)
            return f"list[{inner}]" if inner and " | " not in inner else "list"
        if t == "tuple" and node.named_children and len(node.named_children) <= 4:
            parts = [self.type_of(c, depth + 1) for c in node.named_children]
            return f"tuple[{', '.join(parts)}]" if all(p is not None for p in parts) else "tuple"  # type: ignore[arg-type]
        if lit is not None:
            return lit
        if t in ("comparison_operator", "not_operator"):
            return "bool"
        if t == "boolean_operator":
            left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
            sides = {self.type_of(left, depth + 1), self.type_of(right, depth + 1)}
            return "bool" if sides == {"bool"} else None
        if t == "parenthesized_expression" and node.named_children:
            return self.type_of(node.named_children[0], depth + 1)
        if t == "conditional_expression" and len(node.named_children) == 3:
            a, _, b = node.named_children
            return _union([self.type_of(a, depth + 1), self.type_of(b, depth + 1)])
        if t == "binary_operator":
            return self._binary(node, depth)
        if t == "call":
            return self._call(node, depth)
        if t == "identifier":
            return self._name(text_of(node), depth)
        return None

    def _binary(self, node: Any, depth: int) -> str | None:
        op = text_of(node.child_by_field_name("operator"))
        left = self.type_of(node.child_by_field_name("left"), depth + 1)
        right = self.type_of(node.child_by_field_name("right"), depth + 1)
        if op == "%" and left == "str":
            return "str"
        if left is None or right is None:
            return None
        numbers = {"int", "float"}
        if left in numbers and right in numbers:
            if op == "/":
                return "float"
            return "float" if "float" in (left, right) else "int"
        if op == "+" and left == right and left in ("str", "bytes", "list", "tuple"):
            return left
        return None

    def _call(self, node: Any, depth: int) -> str | None:
        fn = node.child_by_field_name("function")
        if fn is None:
            return None
        if fn.type == "identifier":
            name = text_of(fn)
            if name in _CALL_TYPES and name not in self.names.bound and name not in self.params:
                return _CALL_TYPES[name]
            return self.module_returns.get(name)
        if fn.type == "attribute":
            obj, method = fn.child_by_field_name("object"), text_of(fn.child_by_field_name("attribute"))
            receiver = self.type_of(obj, depth + 1) if obj is not None else None
            if method == "join" and receiver == "str":
                return "str"
            if receiver == "str" and method in _STR_RESULT_METHODS | {"split", "splitlines"}:
                return "list[str]" if method in ("split", "splitlines") else "str"
            if method == "copy" and receiver in ("list", "dict", "set"):
                return receiver
        return None

    def _name(self, name: str, depth: int) -> str | None:
        if name in self.params:
            return self.params[name]
        if name not in self.names.bound or name in self._busy:
            return None
        self._busy.add(name)
        try:
            return self._local(name, depth)
        finally:
            self._busy.discard(name)

    def _local(self, name: str, depth: int) -> str | None:
        """A local's type: every assignment agrees (for `x = []`, every `x.append(v)` too)."""
        assigned: list[str | None] = []
        for ident in self.names.bound.get(name, []):
            parent = ident.parent
            if parent is None or parent.type != "assignment" or pyscope.field_of(ident) != "left":
                return None  # a loop variable, an augmented assignment, a tuple target...
            right = parent.child_by_field_name("right")
            if right is None:
                return None
            assigned.append(self.type_of(right, depth + 1))
        found = _union(assigned)
        if found in ("list", "set"):
            adder = "append" if found == "list" else "add"
            added = [self._added(c, depth) for c in pyscope.walk_nodes(self.fn) if _adds(c, name, adder)]
            element = _union(added) if added else None
            if element and " | " not in element:
                return f"{found}[{element}]"
        return found

    def _added(self, call: Any, depth: int) -> str | None:
        args = call.child_by_field_name("arguments")
        real = [a for a in args.named_children if a.type != "comment"] if args is not None else []
        return self.type_of(real[0], depth + 1) if len(real) == 1 else None


def _adds(node: Any, name: str, adder: str) -> bool:
    if node.type != "call":
        return False
    fn = node.child_by_field_name("function")
    if fn is None or fn.type != "attribute":
        return False
    return text_of(fn.child_by_field_name("object")) == name and text_of(fn.child_by_field_name("attribute")) == adder


def _owner(node: Any) -> Any | None:
    """The function (or lambda) a node belongs to."""
    p = node.parent
    while p is not None and p.type not in ("function_definition", "lambda"):
        p = p.parent
    return p


def module_return_annotations(root: Any) -> dict[str, str]:
    """The file's top-level functions that declare a return type: name -> annotation."""
    out = {}
    for c in root.named_children:
        fn = c.child_by_field_name("definition") if c.type == "decorated_definition" else c
        if fn is not None and fn.type == "function_definition":
            ret = fn.child_by_field_name("return_type")
            if ret is not None:
                out[text_of(fn.child_by_field_name("name"))] = " ".join(text_of(ret).split())
    return out


def module_type_names(root: Any) -> set[str]:
    """Names a type hint may use in this file: builtins, the file's classes and imported names."""
    names = set(BUILTIN_TYPES)
    module = pyscope.scope_names(root)
    names.update(module.imported)
    for c in root.named_children:
        node = c.child_by_field_name("definition") if c.type == "decorated_definition" else c
        if node is not None and node.type == "class_definition":
            names.add(text_of(node.child_by_field_name("name")))
    return names
