"""Whether an object as the API server holds it still says everything the operator applied: the drift
check that decides whether a server-side apply is needed again (runtime/kube.py, `Api.apply`)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from keras_operator.runtime import quantity

# Lists Kubernetes merges by key (x-kubernetes-list-type: map): another manager's entries (an env var
# `kubectl set env` added, an injected sidecar) stay in them, so only the entries the operator sets are
# compared, each with the entry of the same key. Every other list is atomic: compared whole.
_LIST_MAP_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "containers": ("name",),
        "initContainers": ("name",),
        "ephemeralContainers": ("name",),
        "env": ("name",),
        "volumes": ("name",),
        "volumeMounts": ("mountPath",),
        "volumeDevices": ("devicePath",),
        "imagePullSecrets": ("name",),
        "resourceClaims": ("name",),
        "schedulingGates": ("name",),
        "hostAliases": ("ip",),
        "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
        "resizePolicy": ("resourceName",),
        "ownerReferences": ("uid",),
    }
)
# A key field the server defaults when it is left out.
_KEY_DEFAULTS: Mapping[str, str] = MappingProxyType({"protocol": "TCP"})


def _list_keys(field: str, wanted: list[Any]) -> tuple[str, ...] | None:
    if field == "ports":  # a container's ports, or a Service's
        entries = [e for e in wanted if isinstance(e, dict)]
        return ("containerPort", "protocol") if any("containerPort" in e for e in entries) else ("port", "protocol")
    return _LIST_MAP_KEYS.get(field)


def _is_quantity(path: tuple[str, ...]) -> bool:
    """Whether the field at `path` is typed resource.Quantity in the objects the operator writes."""
    if len(path) >= 3 and path[-2] in ("requests", "limits") and path[-3] == "resources":
        return True
    if path[-1:] == ("sizeLimit",):  # an emptyDir's
        return True
    return len(path) >= 2 and path[-2] == "target" and path[-1] in ("averageValue", "value")  # an HPA metric's


def _key_of(entry: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    entry = entry if isinstance(entry, dict) else {}
    return tuple(entry.get(k, _KEY_DEFAULTS.get(k)) for k in keys)


def covers(actual: Any, wanted: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether `actual` holds every field `wanted` sets, with the same value: quantities by amount (the
    server stores them canonically), list-map entries by key (entries others added do not count), fields
    the API server defaulted or other controllers added ignored."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and covers(actual[k], v, (*path, k)) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        if not isinstance(actual, list):
            return False
        keys = _list_keys(path[-1], wanted) if path else None
        if keys is not None:
            by_key: dict[tuple[Any, ...], list[Any]] = {}
            for entry in actual:
                by_key.setdefault(_key_of(entry, keys), []).append(entry)
            return all(any(covers(a, w, path) for a in by_key.get(_key_of(w, keys), [])) for w in wanted)
        return len(actual) == len(wanted) and all(covers(a, w, path) for a, w in zip(actual, wanted, strict=True))
    if path and _is_quantity(path) and quantity.equal(actual, wanted):
        return True
    return bool(actual == wanted)
