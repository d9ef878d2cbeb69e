"""Server-side apply as the emulated API server does it: enough of the API server's semantics for the
operator's tests, in pure functions.

What is kept: each field manager's last applied configuration; an apply merges its configuration into
the object (maps recursively, lists of named items by `name`, other lists whole), removes the fields that
manager applied before and no longer applies, and corrects fields another writer changed (`force`). What
is simplified: ownership is by value (a field another writer has changed since the manager applied it is
theirs, and survives when the manager drops it), not recorded in `managedFields`.
"""

from __future__ import annotations

import copy
from typing import Any

MISSING = object()


def _named(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def merge(base: Any, config: Any) -> Any:
    """`config` applied over `base`."""
    if isinstance(base, dict) and isinstance(config, dict):
        out = dict(base)
        for key, value in config.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if _named(config) and (_named(base) or base == []):
        by_name = {item["name"]: item for item in base}
        merged = [merge(by_name[i["name"]], i) if i["name"] in by_name else copy.deepcopy(i) for i in config]
        applied = {i["name"] for i in config}
        return merged + [item for item in base if item["name"] not in applied]
    return copy.deepcopy(config)


def prune(obj: Any, before: Any, now: Any) -> Any:
    """`obj` without what the manager applied `before` and no longer applies `now` (unless another writer
    has changed the value since, which makes the field theirs)."""
    if isinstance(obj, dict) and isinstance(before, dict):
        out = dict(obj)
        for key, old in before.items():
            if key not in out:
                continue
            new = now.get(key, MISSING) if isinstance(now, dict) else MISSING
            if new is MISSING:
                if (isinstance(old, dict) and isinstance(out[key], dict)) or _named(old):
                    pruned = prune(out[key], old, {} if isinstance(old, dict) else [])
                    if pruned in ({}, []):
                        del out[key]
                    else:
                        out[key] = pruned
                elif out[key] == old:
                    del out[key]
            else:
                out[key] = prune(out[key], old, new)
        return out
    if _named(before) and isinstance(obj, list):
        now_items = {i["name"]: i for i in now} if _named(now) else {}
        old_items = {i["name"]: i for i in before}
        kept = []
        for item in obj:
            name = item.get("name") if isinstance(item, dict) else None
            if name in old_items and name not in now_items:
                rest = prune(item, old_items[name], {})
                if rest in ({}, {"name": name}):
                    continue
                kept.append(rest)
            elif name in old_items:
                kept.append(prune(item, old_items[name], now_items[name]))
            else:
                kept.append(item)
        return kept
    return obj


def apply(current: dict[str, Any] | None, before: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    """The object after `config` is applied by a manager whose previous configuration was `before`."""
    base = prune(copy.deepcopy(current or {}), before or {}, config)
    return merge(base, config)


def merge_patch(current: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) from `current` to `new`: removed keys are null, lists whole."""
    if not (isinstance(current, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in current if key not in new}
    for key, value in new.items():
        if key not in current:
            patch[key] = copy.deepcopy(value)
        elif current[key] != value:
            patch[key] = merge_patch(current[key], value)
    return patch
