"""An in-memory stand-in for `keras_operator.runtime.kube.Api`, for calling a controller's reconcile directly.

The controllers reach the API server only through the `Api` object the run hands them (an argument of each
reconcile). A `FakeApi` is passed in its place: the calls land in a dict of objects, every call is recorded
(`calls`), and a call can be told to raise (`fail`) what the real one raises: `kube.Rejected`,
`kube.Conflict`, `kopf.TemporaryError`, or the `kube.ApiError` 404 that `patch` lets through.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from keras_operator.runtime import kube

Key = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True)
class Call:
    """One call the controller made: which function, on which object, with what."""

    call: str
    kind: str
    namespace: str
    name: str
    body: dict[str, Any] | None = None


@dataclass
class _Failure:
    call: str
    error: BaseException
    kind: str | None
    times: int | None  # None: every time


@dataclass
class FakeApi:
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    changes: list[tuple[str, str, str]] = field(default_factory=list)
    """(created | updated | patched | deleted, kind, name) of every write that changed the cluster, in order."""
    metrics: dict[str, str | None] = field(default_factory=dict)
    """/metrics text of each pod (by name) for `pod_proxy_get`; a pod not named answers None."""
    failures: list[_Failure] = field(default_factory=list)
    _uids: itertools.count = field(default_factory=lambda: itertools.count(1))

    # --- set up ---

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An object that exists before the reconcile (a copy is stored; a uid is given when it has none)."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"fake-uid-{next(self._uids)}")
        self.objects[(stored["kind"], meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    def fail(self, call: str, error: BaseException, kind: str | None = None, times: int | None = None) -> None:
        """Make `call` (e.g. "create_or_adopt") raise `error`, for objects of `kind` only when given, the
        first `times` calls only when given."""
        self.failures.append(_Failure(call, error, kind, times))

    # --- what the test reads ---

    def called(self, *calls: str) -> list[tuple[str, str, str]]:
        """(call, kind, name) of every call made (changing something or not), or of `calls` only."""
        return [(c.call, c.kind, c.name) for c in self.calls if not calls or c.call in calls]

    def stored(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    # --- the calls ---

    def _record(self, call: str, kind: str, namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
        self.calls.append(Call(call, kind, namespace, name, copy.deepcopy(body)))
        for failure in self.failures:
            if failure.call == call and failure.kind in (None, kind) and failure.times != 0:
                if failure.times is not None:
                    failure.times -= 1
                raise failure.error

    def _store(self, obj: dict[str, Any], existing: dict[str, Any] | None) -> dict[str, Any]:
        self.changes.append(("created" if existing is None else "updated", obj["kind"], obj["metadata"]["name"]))
        stored = copy.deepcopy(obj)
        meta = stored["metadata"]
        meta["uid"] = (existing or {}).get("metadata", {}).get("uid") or f"fake-uid-{next(self._uids)}"
        meta["generation"] = int((existing or {}).get("metadata", {}).get("generation") or 0) + 1
        if existing is not None and "status" in existing:
            stored["status"] = copy.deepcopy(existing["status"])
        self.objects[(stored["kind"], meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    async def create_or_adopt(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        meta = obj["metadata"]
        self._record("create_or_adopt", obj["kind"], meta["namespace"], meta["name"], obj)
        existing = self.objects.get((obj["kind"], meta["namespace"], meta["name"]))
        if existing is not None:
            return copy.deepcopy(existing), False
        return self._store(obj, None), True

    async def apply(
        self, obj: dict[str, Any], hash_annotation: str, owner_uid: str | None, current: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """As `Api.apply`: never touches an object `owner_uid` does not own; applies only on a new hash."""
        meta = obj["metadata"]
        self._record("apply", obj["kind"], meta["namespace"], meta["name"], obj)
        existing = self.objects.get((obj["kind"], meta["namespace"], meta["name"]))
        if current is None:
            current = existing
        if current is not None and not kube.owned(current, owner_uid):
            return None, None
        want = (meta.get("annotations") or {}).get(hash_annotation)
        have = ((current or {}).get("metadata", {}).get("annotations") or {}).get(hash_annotation)
        if current is not None and want == have:
            return copy.deepcopy(current), None
        return self._store(obj, existing), "created" if current is None else "updated"

    async def patch(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._record("patch", kind, namespace, name, body)
        existing = self.objects.get((kind, namespace, name))
        if existing is None:
            raise kube.ApiError(404, "Not Found")
        _merge(existing, body)
        self.changes.append(("patched", kind, name))
        return copy.deepcopy(existing)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._record("get", kind, namespace, name)
        return self.stored(kind, name, namespace)

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self._record("delete", kind, namespace, name)
        if self.objects.pop((kind, namespace, name), None) is None:
            return False
        self.changes.append(("deleted", kind, name))
        return True

    async def delete_owned(self, kind: str, namespace: str, name: str, owner_uid: str | None) -> bool:
        self._record("delete_owned", kind, namespace, name)
        existing = self.objects.get((kind, namespace, name))
        if existing is None or not kube.owned(existing, owner_uid):
            return False
        del self.objects[(kind, namespace, name)]
        self.changes.append(("deleted", kind, name))
        return True

    async def get_custom(self, resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        kind = _KINDS.get(resource[2], resource[2])
        self._record("get_custom", kind, namespace, name)
        return self.stored(kind, name, namespace)

    async def find_custom(self, resource: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
        kind = _KINDS.get(resource[2], resource[2])
        self._record("find_custom", kind, namespace, name)
        return self.stored(kind, name, namespace)

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._record("list_pods", "Pod", namespace, selector)
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in self.objects.items()
            if kind == "Pod"
            and ns == namespace
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    async def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str | None:
        self._record("pod_proxy_get", "Pod", namespace, pod)
        return self.metrics.get(pod)


_KINDS = {"kerastrainingjobs": "KerasTrainingJob", "kerasmodelservices": "KerasModelService"}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386: a JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
