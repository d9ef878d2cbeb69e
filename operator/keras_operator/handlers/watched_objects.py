"""What the handlers of every kind share: the trimmed copy of a watched resource that their indexes keep."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import kopf

from keras_operator.api.common import GROUP, VERSION


def plain(value: Any) -> Any:
    """A deep copy as plain dicts: kopf's bodies are views of the event it may reuse."""
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else copy.deepcopy(value)


def being_deleted(resource: dict[str, Any]) -> bool:
    """A resource the API server keeps only until its children are gone (a foreground deletion, or a
    finalizer of someone else's): nothing is made for it any more, or the collector and the operator would
    take turns forever."""
    return bool(resource["metadata"].get("deletionTimestamp"))


def watched_resource(body: kopf.Body, kind: str) -> dict[str, Any]:
    """What a controller reads of one of our resources, trimmed (memory at thousands of resources). The spec
    is copied whatever was written: a garbage spec is the controller's to reject (Valid=False)."""
    meta = body["metadata"]
    status = body.get("status")
    return {
        "apiVersion": body.get("apiVersion") or f"{GROUP}/{VERSION}",
        "kind": body.get("kind") or kind,
        "metadata": {
            k: meta.get(k) for k in ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
        },
        "spec": plain(body.get("spec")),
        "status": plain(status) if isinstance(status, Mapping) else {},
    }
