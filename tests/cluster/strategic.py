"""Strategic merge patch (`application/strategic-merge-patch+json`), as the API server applies it to built-in
kinds: what kubectl (`kubectl set env`, `kubectl patch`) and the Python client (any dict body given to a
`patch_*` call) send. Unlike a JSON merge patch, a list whose schema says `x-kubernetes-patch-strategy:
merge` is merged, not replaced: entries by `x-kubernetes-patch-merge-key` (containers and env vars by
name, ports by containerPort), lists of scalars by value.

Directives kept: `$patch: delete` on a list entry or a map, `$patch: replace`, `$deleteFromPrimitiveList/F`,
`$retainKeys`; `$setElementOrder/F` (the order kubectl wants) is accepted and ignored.
"""

from __future__ import annotations

import copy
from typing import Any

from cluster import schema


def _strategy(node: schema.Node | None) -> tuple[str, str | None]:
    """(patch strategy, merge key) of a field: the extensions sit on the field's own schema node."""
    return (node or {}).get("x-kubernetes-patch-strategy") or "", (node or {}).get("x-kubernetes-patch-merge-key")


def apply(original: Any, patch: Any, node: schema.Node | None) -> Any:
    """`original` with the strategic merge `patch` applied (a new object)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = dict(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            out[field] = [v for v in out.get(field) or [] if v not in value]
            continue
        child = schema.field(node, key)
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = apply(out[key], value, child)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list) and isinstance(out.get(key), list) and "merge" in _strategy(child)[0]:
            out[key] = _merge_list(out[key], value, child)
        else:
            out[key] = _strip(apply(None, value, child) if isinstance(value, dict) else copy.deepcopy(value))
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(original: list[Any], patch: list[Any], node: schema.Node | None) -> list[Any]:
    _, key = _strategy(node)
    item = schema.items(node)
    if key is None:  # a list of scalars: a union
        return list(original) + [copy.deepcopy(v) for v in patch if v not in original]
    out = list(original)
    for entry in patch:
        if not isinstance(entry, dict):
            continue
        index = next((i for i, e in enumerate(out) if isinstance(e, dict) and e.get(key) == entry.get(key)), None)
        if entry.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append(_strip(copy.deepcopy(entry)))
        else:
            out[index] = apply(out[index], entry, item)
    return out


def _strip(value: Any) -> Any:
    """A new value without directives (they never reach the stored object)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value
