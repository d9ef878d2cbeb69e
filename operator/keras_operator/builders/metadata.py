"""Pieces every generated object shares: names, labels, owner references, the restricted security context."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from keras_operator.api.common import Resources
from keras_operator.api.wire import INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL

PVC_ROOT = "/mnt/pvc"


def labels(component: str, instance: str, owner_label: str) -> dict[str, str]:
    """The labels of an object made for the resource `instance`; `owner_label` names the resource."""
    return {
        NAME_LABEL: component,
        INSTANCE_LABEL: instance,
        MANAGED_BY_LABEL: MANAGED_BY,
        owner_label: instance,
    }


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(owner: dict[str, Any], name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(object_labels)}
    if owner["metadata"].get("namespace"):
        meta["namespace"] = owner["metadata"]["namespace"]
    if owner["metadata"].get("uid"):  # absent only in `kerasop render`, which has no API server
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def spec_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def pod_security_context() -> dict[str, Any]:
    """The pods' securityContext: a new dict each time (the user's podTemplate is merged into it)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The containers' securityContext: a new dict each time."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def resource_requirements(res: Resources) -> dict[str, Any]:
    """Requests equal limits: training is long and steady, and Guaranteed QoS keeps it from eviction."""
    amounts: dict[str, Any] = {}
    if res.cpu is not None:
        amounts["cpu"] = str(res.cpu)
    if res.memory is not None:
        amounts["memory"] = str(res.memory)
    if res.gpus:
        amounts[res.gpu_resource_name] = str(res.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}
