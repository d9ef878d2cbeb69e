"""The OpenAPI schemas the emulated API server reads its list semantics and Quantity fields from.

Built-in kinds: the official Kubernetes v1.32 schemas the `kubernetes_validate` package ships (offline);
our custom resources: the CRDs in crds/. A list's `x-kubernetes-list-type` says how server-side apply
merges it (`map` by `x-kubernetes-list-map-keys`, `set` by value, `atomic` whole: the default); a field
whose schema is resource.Quantity is stored in canonical form (built-in kinds only: the server stores a
custom resource as written).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import kubernetes_validate
import yaml

Node = dict[str, Any]
VERSION = "v1.32.0-local"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_ROOTS = {
    ("v1", "Pod"): "io.k8s.api.core.v1.Pod",
    ("v1", "Service"): "io.k8s.api.core.v1.Service",
    ("v1", "ConfigMap"): "io.k8s.api.core.v1.ConfigMap",
    ("apps/v1", "Deployment"): "io.k8s.api.apps.v1.Deployment",
    ("batch/v1", "Job"): "io.k8s.api.batch.v1.Job",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    ("coordination.k8s.io/v1", "Lease"): "io.k8s.api.coordination.v1.Lease",
    ("v1", "Event"): "io.k8s.api.core.v1.Event",
    ("v1", "Secret"): "io.k8s.api.core.v1.Secret",
    ("v1", "Namespace"): "io.k8s.api.core.v1.Namespace",
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): (
        "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration"
    ),
}
_ROOT_BY_PLURAL = {
    ("", "pods"): ("v1", "Pod"),
    ("", "services"): ("v1", "Service"),
    ("", "configmaps"): ("v1", "ConfigMap"),
    ("apps", "deployments"): ("apps/v1", "Deployment"),
    ("batch", "jobs"): ("batch/v1", "Job"),
    ("autoscaling", "horizontalpodautoscalers"): ("autoscaling/v2", "HorizontalPodAutoscaler"),
    # Built in too (a strategic merge patch is theirs to take, unlike a custom resource's): the Lease the
    # leader renews with the Python client's patch, Events, and what the tests install.
    ("coordination.k8s.io", "leases"): ("coordination.k8s.io/v1", "Lease"),
    ("", "events"): ("v1", "Event"),
    ("", "secrets"): ("v1", "Secret"),
    ("", "namespaces"): ("v1", "Namespace"),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ),
}
_CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds"


@functools.cache
def _definitions() -> dict[str, Node]:
    base = pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / VERSION
    return dict(json.loads((base / "_definitions.json").read_text())["$defs"])


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], Node]:
    found: dict[tuple[str, str], Node] = {}
    for path in sorted(_CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                found[(spec["group"], spec["names"]["plural"])] = version["schema"]["openAPIV3Schema"]
    return found


def root(group: str, plural: str) -> Node | None:
    """The schema of a resource's objects; None when the emulator knows none (every list is then atomic)."""
    builtin = _ROOT_BY_PLURAL.get((group, plural))
    if builtin is not None:
        return {"$ref": f"#/$defs/{_ROOTS[builtin]}"}
    return _crd_schemas().get((group, plural))


def builtin(group: str, plural: str) -> bool:
    return (group, plural) in _ROOT_BY_PLURAL


def resolve(node: Node | None) -> Node | None:
    while node is not None and "$ref" in node:
        node = _definitions().get(node["$ref"].rsplit("/", 1)[-1])
    return node


def is_quantity(node: Node | None) -> bool:
    return node is not None and node.get("$ref", "").endswith("/" + QUANTITY)


def field(node: Node | None, name: str) -> Node | None:
    """The schema of a map's field `name` (a struct's property, or a map's values)."""
    node = resolve(node)
    if node is None:
        return None
    props = node.get("properties") or {}
    if name in props:
        return props[name]
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def items(node: Node | None) -> Node | None:
    node = resolve(node)
    return None if node is None else node.get("items")


def list_type(node: Node | None) -> tuple[str, tuple[str, ...]]:
    """-> ("atomic" | "set" | "map", the map's key fields)."""
    node = resolve(node)
    kind = (node or {}).get("x-kubernetes-list-type") or "atomic"
    return kind, tuple((node or {}).get("x-kubernetes-list-map-keys") or ())


def atomic_map(node: Node | None) -> bool:
    """Whether a map is owned and replaced whole (`x-kubernetes-map-type: atomic`: a LabelSelector, an
    ObjectReference), not field by field."""
    raw = node or {}
    return (raw.get("x-kubernetes-map-type") or (resolve(node) or {}).get("x-kubernetes-map-type")) == "atomic"


def key_default(item: Node | None, key: str) -> Any:
    """A list-map key's value when an entry leaves it out: the server defaults it before keying
    (a port's protocol is TCP)."""
    prop = field(item, key)
    default = (resolve(prop) or {}).get("default")
    if default is None and key == "protocol":
        return "TCP"
    return default
