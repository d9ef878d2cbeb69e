"""The one writer of a kind's status: each reconcile's whole status, written as a merge patch that
clears what no longer applies, conditioned on the resourceVersion the status was computed from.

The condition matters: a status computed from an older object (a spec edited meanwhile) is refused with
409 instead of stamping the new generation as observed, and the queue runs the reconcile again on the
object as it is now.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import kopf
import structlog

from keras_operator.controllers.outcome import status_patch
from keras_operator.runtime import kube
from keras_operator.runtime.kube import Api
from keras_operator.runtime.metrics import Metrics
from keras_operator.status.events import Outcome

log = structlog.get_logger("keras_operator.status")

Key = tuple[str, str]  # (namespace, name)
CONFLICT_DELAY = 0.5


@dataclass
class StatusWriter:
    resource: tuple[str, str, str]  # (group, version, plural)
    kind: str
    action_reasons: frozenset[str]
    """Events that say what the operator did: posted whenever they happen. The others say how the status
    changed, and are posted only when it did (a level-triggered reconcile runs on every event)."""
    api: Api
    metrics: Metrics
    written: dict[Key, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    """(the resourceVersion the last status write made, the status written): until the watch shows that
    write, a status equal to it is not written again, and the watch event of the write brings nothing new."""
    _posting: set[asyncio.Task[None]] = field(default_factory=set)
    unseen: dict[Key, tuple[str, int | None]] = field(default_factory=dict)
    """(resourceVersion, generation) of a write the watch has not shown yet: until it does, the watched copy
    holds an older status, and a reconcile starts from the written one (watch events come in order)."""

    def current(self, key: Key, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource as the last write left it, when the watch has not caught up with that write."""
        if key not in self.unseen:
            return resource
        version, generation = self.unseen[key]
        meta = resource["metadata"]
        # The watch has shown our write, or something later: a generation only grows (kopf may coalesce
        # a burst of events and never show the one of our write).
        if version == meta.get("resourceVersion") or (meta.get("generation") or 0) > (generation or 0):
            del self.unseen[key]
            return resource
        return {**resource, "metadata": {**meta, "resourceVersion": version}, "status": self.written[key][1]}

    def own_echo(self, key: Key, body: kopf.Body) -> bool:
        """Whether this watch event is the operator's own last status write coming back."""
        rv = body.get("metadata", {}).get("resourceVersion")
        return rv is not None and self.written.get(key, (None, None))[0] == rv

    def forget(self, key: Key) -> None:
        self.written.pop(key, None)
        self.unseen.pop(key, None)

    def clear(self) -> None:
        self.written.clear()
        self.unseen.clear()

    async def write(self, key: Key, resource: dict[str, Any], outcome: Outcome) -> bool:
        """One status PATCH with what changed (none when nothing did), then the Events. -> whether it wrote."""
        current = resource.get("status") or {}
        changed = status_patch(current, outcome.status)
        if changed and key in self.unseen and self.written[key][1] == outcome.status:
            changed = {}  # what the last write said already: the watch has not shown it yet
        # Once the watch has shown our write, the watched status is the truth: one that differs was edited
        # by someone else since, and is written over.
        meta = resource["metadata"]
        for kind, reason, message in outcome.events:
            if reason in self.action_reasons:  # done already, whatever becomes of the status write
                self._post(resource, kind, reason, message)
        if changed:
            try:
                version = await self.api.patch_status(
                    self.resource, meta["namespace"], meta["name"], changed, meta.get("resourceVersion")
                )
            except kube.Conflict as exc:
                # Someone changed the resource since it was read (a spec edit, or a watch that has
                # passed our last write, so its copy is the newer one): evaluate it again as it is now.
                self.unseen.pop(key, None)
                message = f"{self.kind} changed while reconciling: {exc}"
                raise kopf.TemporaryError(message, delay=CONFLICT_DELAY) from exc
            self.written[key] = (version, outcome.status)
            if version is not None:
                self.unseen[key] = (version, meta.get("generation"))
            phase = outcome.status.get("phase")
            moved = bool(phase) and phase != current.get("phase")
            if moved:
                self.metrics.transition(self.kind, phase)
            # A phase change at info; progress within a phase (every epoch of every training) at debug.
            (log.info if moved else log.debug)(
                "status",
                kind=self.kind,
                namespace=meta["namespace"],
                name=meta["name"],
                phase=phase,
                message=outcome.status.get("message"),
            )
        for kind, reason, message in outcome.events:
            if changed and reason not in self.action_reasons:
                self._post(resource, kind, reason, message)
        return bool(changed)

    def _post(self, resource: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Post an Event beside the reconcile, not in its way: the next resource's work does not wait on
        it (at fleet scale, one more API round trip per transition)."""
        task = asyncio.get_running_loop().create_task(self.api.post_event(resource, kind, reason, message))
        self._posting.add(task)  # a reference, until it is done
        task.add_done_callback(self._posting.discard)

    async def flush(self) -> None:
        """Wait for the Events posted so far (tests; a clean shutdown)."""
        while self._posting:
            await asyncio.gather(*self._posting, return_exceptions=True)
