"""Bounds on what a user's document may cost us, enforced before any model validation.

A resource reaches the operator from the API server (bounded there: 3 MiB requests, int64 numbers)
and the CLI from a file (bounded by nothing): both pass `check_tree` before pydantic sees them, so
that an object nested thousands of levels deep, a number JSON cannot carry, or a value YAML alone
can express fails as InvalidResource naming where, never as a RecursionError or a TypeError.

Files are read with `load_yaml`: YAML anchors and aliases are legitimate (kubectl applies them, and
users share layer arguments with them), so they are allowed, but counted while the document is
composed, before anything is built: at most MAX_ALIASES aliases, and at most MAX_NODES values once
every alias is expanded. An alias bomb (each level ten aliases of the last) thus fails after a few
hundred events instead of building billions of references, and what it would expand to is priced in
advance. Nesting is bounded there too, as PyYAML's composer recurses once per level.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

MAX_DOCUMENT_BYTES = 1024 * 1024
"""A file, and each document of it once aliases are expanded (as JSON: what kubectl would send)."""
MAX_DEPTH = 100
"""Levels of nesting below a document's root: a Keras functional config needs about 15, a model
nesting models a few more each; the API server takes far deeper objects, pydantic and json do not."""
MAX_ALIASES = 100
MAX_NODES = 200_000
"""Values in a file or object, aliases expanded: more than a 1 MiB document of short values holds."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1


class TooLarge(ValueError):
    """A document beyond one of the bounds; str() says where (a field path, or line and column)."""


def where(path: tuple[str | int, ...]) -> str:
    """A field path for messages, cut short when an attack made it long."""
    text = ""
    for part in path:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)[1:-1]  # a key with a newline must not break the one-line message
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text if len(text) <= 120 else text[:117] + "..."


def check_tree(obj: Any, prefix: tuple[str | int, ...] = ()) -> None:
    """TooLarge (naming the field) unless `obj` is plain JSON data within the bounds: mappings with
    string keys, lists, strings, booleans, null, int64 integers and finite floats, at most MAX_DEPTH
    levels and MAX_NODES values. Iterative: it must not itself overflow the stack it protects."""
    stack: list[tuple[Any, tuple[str | int, ...], int]] = [(obj, prefix, 0)]
    count = 0
    while stack:
        value, path, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise TooLarge(f"{where(prefix) or '<root>'}: more than {MAX_NODES} values")
        if isinstance(value, dict):
            if depth >= MAX_DEPTH:
                raise TooLarge(f"{where(path)}: nested more than {MAX_DEPTH} levels deep")
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TooLarge(f"{where(path) or '<root>'}: key {key!r} is not a string")
                stack.append((item, (*path, key), depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_DEPTH:
                raise TooLarge(f"{where(path)}: nested more than {MAX_DEPTH} levels deep")
            stack.extend((item, (*path, i), depth + 1) for i, item in enumerate(value))
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise TooLarge(f"{where(path)}: {_short(value)} does not fit in a 64-bit integer")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise TooLarge(f"{where(path)}: {value} is not a finite number")
        else:
            raise TooLarge(
                f"{where(path)}: a {type(value).__name__} value has no JSON form (YAML tags such as !!binary "
                "or !!set are not Kubernetes data)"
            )


def _short(number: int) -> str:
    text = str(number) if number.bit_length() < 4000 else "a huge number"  # str() of huge ints is slow
    return text if len(text) <= 30 else f"{text[:12]}...({len(text)} digits)"


def json_size(obj: Any) -> int:
    """Bytes of `obj` as compact JSON (check_tree first: it bounds the nesting json.dumps recurses on)."""
    return len(json.dumps(obj, separators=(",", ":")).encode())


# Kubernetes reads YAML into JSON, where a date is just a string: PyYAML's timestamps (and the datetime
# objects json cannot write) are not resolved here.
_RESOLVERS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts depth, aliases and the expanded size while composing (see the module)."""

    yaml_implicit_resolvers = _RESOLVERS

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values below it, aliases expanded

    def _refuse(self, problem: str) -> TooLarge:
        mark = self.peek_event().start_mark
        return TooLarge(f"line {mark.line + 1}, column {mark.column + 1}: {problem}")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise self._refuse(f"more than {MAX_ALIASES} YAML aliases")
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1))
            return node
        if self._depth >= MAX_DEPTH and not self.check_event(yaml.ScalarEvent):
            raise self._refuse(f"nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        before = self._nodes
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._count(1)
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, nodes: int) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise self._refuse(f"more than {MAX_NODES} values once YAML aliases are expanded")


def load_yaml(text: str) -> list[Any]:
    """The documents of a YAML stream, within the bounds. Raises TooLarge or yaml.YAMLError."""
    loader = _BoundedLoader(text)
    try:
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()
