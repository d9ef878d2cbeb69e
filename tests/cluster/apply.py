"""Server-side apply and field ownership as the API server keeps them (structured-merge-diff), in pure
functions over plain objects and their schemas (cluster/schema.py).

A field is named by its path in the `fieldsV1` notation of `metadata.managedFields`: `f:name` a map's
field, `k:{"name":"x"}` the entry of a list-map with that key, `v:"x"` a set's value. Each manager owns a
set of paths, per operation (`Apply` for server-side apply, `Update` for create / update / patch):

- an apply merges its configuration into the object: maps recursively (`x-kubernetes-map-type: atomic`
  ones whole), `x-kubernetes-list-type: map` lists by their keys, sets by value, atomic lists (the
  default) whole; entries others added stay;
- it removes what the manager applied before and no longer applies, unless another manager owns it too;
- a field the configuration changes that another manager owns is a conflict (409), unless `force`, which
  takes the field over;
- any other write makes its manager the owner of every field it changed, taking them from the others.

Not emulated: conflicts are found on fields whose value changes (a list entry itself never conflicts);
`managedFields` a client writes are ignored (the emulator's record stands; the real server lets a client
clear or replace them); status writes are not tracked (no `subresource` entries); no per-version
managedFields conversion; an apply's configuration is not validated against the schema (unknown fields,
wrong types); managers of the same name with different operations are distinct, as on the real server,
but manager names are not truncated or validated.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from typing import Any

from cluster import schema

Path = tuple[str, ...]
Manager = tuple[str, str]  # (manager, operation)
Owners = dict[Manager, set[Path]]
MISSING: Any = object()
# Fields the server sets itself: never anybody's.
_SERVER_META = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)


class Conflicts(Exception):
    """An apply would change fields other managers own: [(manager, path)]."""

    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        self.conflicts = conflicts
        listed = "; ".join(f'conflict with "{manager}": {dotted(path)}' for manager, path in conflicts)
        noun = "conflict" if len(conflicts) == 1 else "conflicts"
        super().__init__(f"Apply failed with {len(conflicts)} {noun}: {listed}")


def dotted(path: Path) -> str:
    """A path as the API server writes it in a conflict message: `.spec.replicas`."""
    return "".join(f".{p[2:]}" if p.startswith("f:") else f"[{p[2:]}]" for p in path)


def owned_view(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The part of an object that managers own: no status, no server-set metadata, no apiVersion/kind."""
    view = {k: copy.deepcopy(v) for k, v in (obj or {}).items() if k not in ("status", "apiVersion", "kind")}
    meta = {k: v for k, v in (view.get("metadata") or {}).items() if k not in _SERVER_META}
    if meta:
        view["metadata"] = meta
    else:
        view.pop("metadata", None)
    return view


# Every kind's metadata is ObjectMeta (a custom resource's schema leaves it open): finalizers are a set,
# ownerReferences a list-map by uid, labels and annotations maps.
_OBJECT_META = {"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


def _child(node: schema.Node | None, name: str, depth: int) -> schema.Node | None:
    if depth == 0 and name == "metadata":
        return _OBJECT_META
    return schema.field(node, name)


def _key(entry: Any, keys: tuple[str, ...], item: schema.Node | None) -> str:
    entry = entry if isinstance(entry, dict) else {}
    values = {k: entry[k] if entry.get(k) is not None else schema.key_default(item, k) for k in sorted(keys)}
    return "k:" + json.dumps(values, separators=(",", ":"), sort_keys=True)


def _value(entry: Any) -> str:
    return "v:" + json.dumps(entry, separators=(",", ":"), sort_keys=True)


def fields(obj: Any, node: schema.Node | None) -> tuple[set[Path], set[Path]]:
    """(every path `obj` sets, the list entries among them): what a manager that wrote `obj` owns."""
    members: set[Path] = set()
    entries: set[Path] = set()

    def walk(value: Any, node: schema.Node | None, path: Path) -> None:
        if isinstance(value, dict) and value and not schema.atomic_map(node):
            for k, v in value.items():
                walk(v, _child(node, k, len(path)), (*path, f"f:{k}"))
            return
        if isinstance(value, list) and value:
            kind, keys = schema.list_type(node)
            item = schema.items(node)
            if kind == "map":
                for entry in value:
                    at = (*path, _key(entry, keys, item))
                    members.add(at)
                    entries.add(at)
                    walk(entry, item, at)
                return
            if kind == "set":
                members.update((*path, _value(entry)) for entry in value)
                return
        members.add(path)  # a leaf: a scalar, an atomic list, an empty map

    walk(obj, node, ())
    return members, entries


def _step(value: Any, elem: str, node: schema.Node | None, depth: int) -> tuple[Any, schema.Node | None]:
    if elem.startswith("f:"):
        if not isinstance(value, dict):
            return MISSING, None
        return value.get(elem[2:], MISSING), _child(node, elem[2:], depth)
    if not isinstance(value, list):
        return MISSING, None
    item = schema.items(node)
    if elem.startswith("k:"):
        keys = tuple(json.loads(elem[2:]))
        for entry in value:
            if _key(entry, keys, item) == elem:
                return entry, item
        return MISSING, None
    wanted = json.loads(elem[2:])
    return (wanted if wanted in value else MISSING), item


def get(obj: Any, path: Path, node: schema.Node | None) -> Any:
    """The value at `path` (MISSING when absent)."""
    for depth, elem in enumerate(path):
        obj, node = _step(obj, elem, node, depth)
        if obj is MISSING:
            return MISSING
    return obj


def _remove(obj: Any, path: Path, node: schema.Node | None) -> None:
    parent = get(obj, path[:-1], node)
    elem = path[-1]
    if elem.startswith("f:") and isinstance(parent, dict):
        parent.pop(elem[2:], None)
    elif elem.startswith("v:") and isinstance(parent, list):
        wanted = json.loads(elem[2:])
        parent[:] = [v for v in parent if v != wanted]
    elif elem.startswith("k:") and isinstance(parent, list):
        target = get(obj, path, node)
        parent[:] = [v for v in parent if v is not target]


def merge(base: Any, config: Any, node: schema.Node | None, depth: int = 0) -> Any:
    """`config` applied over `base`, by the schema's map / list semantics."""
    if isinstance(base, dict) and isinstance(config, dict) and not schema.atomic_map(node):
        out = dict(base)
        for key, value in config.items():
            child = _child(node, key, depth)
            out[key] = merge(base[key], value, child, depth + 1) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(config, list):
        kind, keys = schema.list_type(node)
        item = schema.items(node)
        if kind == "map":
            out_list = list(base)
            for entry in config:
                at = _key(entry, keys, item)
                index = next((i for i, e in enumerate(out_list) if _key(e, keys, item) == at), None)
                if index is None:
                    out_list.append(copy.deepcopy(entry))
                else:
                    out_list[index] = merge(out_list[index], entry, item, depth + 1)
            return out_list
        if kind == "set":
            return list(base) + [copy.deepcopy(v) for v in config if v not in base]
    return copy.deepcopy(config)


def _owned_by_others(owners: Owners, me: Manager, path: Path) -> list[str]:
    return [m for m, paths in owners.items() if m != me and path in paths]


def _anyone_below(owners: Owners, me: Manager, path: Path) -> bool:
    n = len(path)
    return any(p[:n] == path for m, paths in owners.items() if m != me for p in paths)


def _is_key_field(path: Path) -> bool:
    """A list-map entry's key field: it goes with its entry, never alone."""
    return len(path) >= 2 and path[-2].startswith("k:") and path[-1][2:] in json.loads(path[-2][2:])


def prune(obj: dict[str, Any], removed: Iterable[Path], owners: Owners, me: Manager, node: schema.Node | None) -> None:
    """Remove, in place, the `removed` paths no other manager owns, and the maps and lists left empty."""
    for path in sorted(removed, key=len, reverse=True):
        if _owned_by_others(owners, me, path) or _is_key_field(path):
            continue
        if path[-1].startswith("k:") and _anyone_below(owners, me, path):
            continue  # another manager set fields of this entry: it stays, with theirs
        _remove(obj, path, node)
        for depth in range(len(path) - 1, 0, -1):
            parent = get(obj, path[:depth], node)
            if parent in ({}, []) and not any(path[:depth] in paths for paths in owners.values()):
                _remove(obj, path[:depth], node)
            else:
                break


def apply(
    current: dict[str, Any] | None,
    owners: Owners,
    manager: str,
    config: dict[str, Any],
    node: schema.Node | None,
    force: bool,
    finish: Callable[[dict[str, Any]], None],
) -> tuple[dict[str, Any], Owners]:
    """The object after `manager` applies `config`, and the managers' fields after it. `finish` fills the
    server's defaults and canonical forms in place. Raises Conflicts."""
    me: Manager = (manager, "Apply")
    new_fields, new_entries = fields(owned_view(config), node)
    before = owners.get(me, set())
    obj = copy.deepcopy(current or {})
    prune(obj, before - new_fields, owners, me, node)
    merged = merge(obj, config, node)
    finish(merged)
    conflicts = []
    for path in sorted(new_fields - new_entries):  # a list entry is a container: its fields conflict, not it
        others = _owned_by_others(owners, me, path)
        if others and get(current or {}, path, node) != get(merged, path, node):
            conflicts.extend((other, path) for other in others)
    if conflicts and not force:
        raise Conflicts([(m[0], p) for m, p in conflicts])
    after = {m: set(paths) for m, paths in owners.items()}
    for other, path in conflicts:
        after[other].discard(path)
    after[me] = new_fields
    return merged, {m: paths for m, paths in after.items() if paths}


def update(
    old: dict[str, Any] | None, new: dict[str, Any], owners: Owners, manager: str, node: schema.Node | None
) -> Owners:
    """The managers' fields after a create / update / patch by `manager` turned `old` into `new`: it owns
    what it changed (taken from the others); fields gone from the object are nobody's."""
    me: Manager = (manager, "Update")
    old_view, new_view = owned_view(old), owned_view(new)
    new_fields, entries = fields(new_view, node)
    old_fields, _ = fields(old_view, node)
    changed = {
        p
        for p in new_fields
        if (p in entries and p not in old_fields)
        or (p not in entries and get(old_view, p, node) != get(new_view, p, node))
    }
    present = {p[:n] for p in new_fields for n in range(1, len(p) + 1)}
    after: Owners = {}
    for m, paths in owners.items():
        kept = (paths & present) - changed
        if kept:
            after[m] = kept
    if changed:
        after[me] = after.get(me, set()) | changed
    return after


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """A set of paths as `managedFields[].fieldsV1`: nested, `.` marking a member that has members below."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for elem in path:
            node = node.setdefault(elem, {})
    for path in paths:
        node = tree
        for elem in path:
            node = node[elem]
        if node and "." not in node:
            node["."] = {}
    return tree


def managed_fields(owners: Owners, api_version: str, now: str, previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`metadata.managedFields` for `owners`, keeping an unchanged entry's time."""
    times = {(e.get("manager"), e.get("operation")): e for e in previous}
    out = []
    for (manager, operation), paths in sorted(owners.items()):
        tree = fields_v1(paths)
        old = times.get((manager, operation))
        out.append(
            {
                "manager": manager,
                "operation": operation,
                "apiVersion": api_version,
                "time": old["time"] if old and old.get("fieldsV1") == tree else now,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            }
        )
    return out


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
