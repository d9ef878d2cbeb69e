"""Random invalid KerasTrainingJobs and KerasModelServices, reproducible from a seed: what a CRD's schema
would have refused (an old CRD, a CRD installed without its schema), as the operator may still see it.

Each document is a valid one broken in one to three ways: a value of the wrong JSON type at some level,
a required field removed, an unknown field (keys with control characters, right-to-left marks, emoji,
300 characters), a number out of range (negative, zero, beyond int64), nesting hundreds of levels deep,
an enum or patterned string made of odd code points, or a metadata.name the operator's objects cannot
carry. Every break is one the operator's API refuses, whatever else the document says.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

API_VERSION = "kerasoperator.dev/v1alpha1"

TRAINING: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "KerasTrainingJob",
    "metadata": {"name": "x"},
    "spec": {
        "model": {"inputShape": [8], "layers": [{"type": "Dense", "units": 3, "activation": "softmax"}]},
        "data": {"train": {"synthetic": {"samples": 64, "inputShape": [8], "classes": 3}}, "validationSplit": 0.25},
        "training": {"epochs": 1, "batchSize": 32, "seed": 1},
        "output": {"uri": "pvc://models/x", "formats": ["keras"]},
        "resources": {"gpus": 0, "cpu": "1"},
        "runPolicy": {"backoffLimit": 1},
        "distribution": {"workers": 1},
        "backend": "tensorflow",
    },
}

SERVING: dict[str, Any] = {
    "apiVersion": API_VERSION,
    "kind": "KerasModelService",
    "metadata": {"name": "x"},
    "spec": {
        "model": {"uri": "pvc://models/x.keras"},
        "modelName": "x",
        "backend": "tensorflow",
        "replicas": 1,
        "resources": {"gpus": 0},
        "server": {"port": 8080},
    },
}

# Where each document may be broken, and the JSON type the API wants there. Only fields of strict objects:
# a layer's arguments, model.config and application.args take any key and value, and so are left alone.
TYPES: dict[str, dict[str, str]] = {
    "KerasTrainingJob": {
        "spec": "object",
        "spec.model": "object",
        "spec.model.inputShape": "list",
        "spec.model.layers": "list",
        "spec.model.layers.0": "object",
        "spec.model.layers.0.type": "string",
        "spec.data": "object",
        "spec.data.train": "object",
        "spec.data.train.synthetic": "object",
        "spec.data.train.synthetic.samples": "integer",
        "spec.data.train.synthetic.classes": "integer",
        "spec.data.validationSplit": "number",
        "spec.training": "object",
        "spec.training.epochs": "integer",
        "spec.training.batchSize": "integer",
        "spec.training.seed": "integer",
        "spec.output": "object",
        "spec.output.uri": "string",
        "spec.output.formats": "list",
        "spec.resources": "object",
        "spec.resources.gpus": "integer",
        "spec.runPolicy": "object",
        "spec.runPolicy.backoffLimit": "integer",
        "spec.distribution": "object",
        "spec.distribution.workers": "integer",
        "spec.backend": "string",
    },
    "KerasModelService": {
        "spec": "object",
        "spec.model": "object",
        "spec.model.uri": "string",
        "spec.modelName": "string",
        "spec.backend": "string",
        "spec.replicas": "integer",
        "spec.resources": "object",
        "spec.resources.gpus": "integer",
        "spec.server": "object",
        "spec.server.port": "integer",
    },
}
REQUIRED = {
    "KerasTrainingJob": ["spec", "spec.model", "spec.data", "spec.training", "spec.training.epochs"],
    "KerasModelService": ["spec", "spec.model", "spec.model.uri"],
}
# Integer fields with their lower bound.
MINIMUM = {
    "spec.data.train.synthetic.samples": 1,
    "spec.data.train.synthetic.classes": 0,
    "spec.training.epochs": 1,
    "spec.training.batchSize": 1,
    "spec.training.seed": 0,
    "spec.resources.gpus": 0,
    "spec.runPolicy.backoffLimit": 0,
    "spec.distribution.workers": 1,
    "spec.replicas": 0,
    "spec.server.port": 1,
}
# Strings that take only some values: an enum, or a pattern.
CHOSEN = ["spec.backend", "spec.modelName"]
ODD_TEXT = [
    "\x00",
    "tensorflow\x00",
    "\u202etensorflow",
    "🦀",
    "ťënšőřƒłőŵ",
    "\ufeff",
    " ",
    "name with spaces",
    "a" * 5000,
]
ODD_KEYS = ["\x00\x07", "ключ", "🦀", "\u202ekey", "k" * 300, "$ref", "__proto__", "", " ", "spec"]


@dataclass
class Invalid:
    doc: dict[str, Any]
    breaks: list[str]
    """How it was broken: "KIND path" for each change, e.g. "wrong-type spec.training.epochs"."""


def _parent(doc: dict[str, Any], path: str) -> tuple[Any, str | int]:
    node: Any = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, int(last) if isinstance(node, list) else last


def _exists(doc: dict[str, Any], path: str) -> bool:
    node: Any = doc
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _value(doc: dict[str, Any], path: str) -> Any:
    parent, key = _parent(doc, path)
    return parent[key]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    parent, key = _parent(doc, path)
    parent[key] = value


def _deep(rng: random.Random, depth: int) -> Any:
    value: Any = rng.choice([1, "x", None])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def _wrong(rng: random.Random, wanted: str) -> Any:
    """A value no field of type `wanted` takes, even with lax coercion."""
    choices: dict[str, list[Any]] = {
        "object": ["x", 7, 1.5, [1, 2], True, "🦀" * 3, 1e308],
        "list": ["abc", 3, {"a": 1}, True, 2.5],
        "string": [5, 1.5, ["a"], {"a": "b"}, True, 1e308],
        "integer": ["12x", 1.5, [], {}, "\x00", "🦀", {"value": 3}, [3]],
        "number": ["fast", [], {}, "\x00", [0.5]],
    }
    return copy.deepcopy(rng.choice(choices[wanted]))


def _out_of_range(rng: random.Random, minimum: int) -> Any:
    # JSON carries an integer of any size; the API's are 64-bit at most.
    return rng.choice([minimum - 1, minimum - 10**6, -(10**30), 10**30, 2**63, 2**64 + 1, 10**400])


Break = Callable[[random.Random, dict[str, Any], str], str | None]


def wrong_type(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    path = rng.choice([p for p in TYPES[kind] if _exists(doc, p)] or [None])
    if path is None:
        return None
    _set(doc, path, _wrong(rng, TYPES[kind][path]))
    return f"wrong-type {path}"


def missing(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    path = rng.choice([p for p in REQUIRED[kind] if _exists(doc, p)] or [None])
    if path is None:
        return None
    parent, key = _parent(doc, path)
    if rng.random() < 0.3:
        parent[key] = None  # null is no value either
    else:
        del parent[key]
    return f"missing {path}"


def unknown(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    # Not a layer: its arguments are open (any key is a keyword of the layer's constructor).
    objects = [p for p, t in TYPES[kind].items() if t == "object" and p != "spec.model.layers.0" and _exists(doc, p)]
    objects = [p for p in objects if isinstance(_value(doc, p), dict)]
    if not objects:
        return None
    path = rng.choice(objects)
    node = _value(doc, path)
    name = rng.choice([k for k in ODD_KEYS if k not in node] or ["zzz"])
    node[name] = rng.choice([1, "v", None, [1], {"b": 2}, _deep(rng, 20)])
    return f"unknown {path}"


def out_of_range(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    paths = [p for p in MINIMUM if p in TYPES[kind] and _exists(doc, p)]
    if not paths:
        return None
    path = rng.choice(paths)
    _set(doc, path, _out_of_range(rng, MINIMUM[path]))
    return f"out-of-range {path}"


def deeply_nested(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    path = rng.choice([p for p in TYPES[kind] if p != "spec" and _exists(doc, p)] or [None])
    if path is None:
        return None
    _set(doc, path, _deep(rng, rng.randint(50, 400)))
    return f"deep {path}"


def odd_text(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    paths = [p for p in CHOSEN if p in TYPES[kind] and _exists(doc, p)]
    if not paths:
        return None
    path = rng.choice(paths)
    _set(doc, path, rng.choice(ODD_TEXT))
    return f"odd-text {path}"


def long_name(rng: random.Random, doc: dict[str, Any], kind: str) -> str | None:
    """A name the API server takes for any custom resource (a DNS subdomain) but the CRD's rule refuses:
    longer than 53 characters, or with dots; the Jobs, Services and labels made from it could not exist."""
    base = doc["metadata"]["name"]
    if rng.random() < 0.5:
        doc["metadata"]["name"] = (base + "-" + "n" * 253)[: rng.randint(54, 253)].rstrip("-")
    else:
        doc["metadata"]["name"] = f"{base}.dotted"
    return "metadata metadata.name"


BREAKS: list[Break] = [wrong_type, wrong_type, missing, unknown, out_of_range, deeply_nested, odd_text, long_name]


def invalid_resources(seed: int, count: int, prefix: str = "bad") -> Iterator[Invalid]:
    """`count` broken documents, alternating kinds, named PREFIX-KIND-INDEX (before any metadata break)."""
    rng = random.Random(seed)
    for index in range(count):
        kind = "KerasTrainingJob" if index % 2 == 0 else "KerasModelService"
        doc = copy.deepcopy(TRAINING if kind == "KerasTrainingJob" else SERVING)
        doc["metadata"]["name"] = f"{prefix}-{'ktj' if kind == 'KerasTrainingJob' else 'kms'}-{index:03d}"
        breaks: list[str] = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            done = rng.choice(BREAKS)(rng, doc, kind)
            if done is not None:
                breaks.append(done)
        if not breaks:
            breaks.append(missing(rng, doc, kind) or "")
        yield Invalid(doc, breaks)


def names_a_break(message: str, breaks: list[str]) -> bool:
    """Whether the message starts with a field (spec.a.b[0]: ..., spec: ..., metadata.name: ...) and names one
    that was broken: its first field under spec (spec.training for spec.training.epochs), or spec itself."""
    if not message.startswith(("spec.", "spec:", "metadata.", "metadata:")):
        return False
    paths = [b.split(" ", 1)[1].split(".") for b in breaks]
    return any((path[1] if len(path) > 1 else path[0]) in message for path in paths)
