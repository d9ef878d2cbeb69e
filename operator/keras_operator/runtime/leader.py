"""Leader election on a coordination.k8s.io/v1 Lease, so several operator replicas can run and only
one acts: kopf's peering freezes replicas of equal priority instead of electing one.

The leader renews the Lease every `duration / 3`; a replica takes it over only when its renewTime
is older than `duration`. Writes carry the Lease's resourceVersion, so two replicas racing for it
cannot both win (the loser gets 409). A leader that cannot renew in time stops acting.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass
from typing import Any

import kubernetes
import structlog
from kubernetes.client.exceptions import ApiException

log = structlog.get_logger("keras_operator.runtime.leader")


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Elector:
    api: kubernetes.client.ApiClient
    namespace: str
    name: str
    identity: str
    duration: float = 15.0

    def _coordination(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.api)

    def _lease(self, holder_transitions: int = 0, resource_version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        now = _micro(_now())
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": holder_transitions,
            },
        }

    def try_acquire(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        api = self._coordination()
        try:
            current = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                api.create_namespaced_lease(self.namespace, self._lease())
                log.info("leader_elected", identity=self.identity, lease=self.name)
                return True
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False  # another replica created it first
                raise
        spec = current.spec
        if spec.holder_identity == self.identity:
            return self.renew()
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or (_now() - renewed).total_seconds() > (spec.lease_duration_seconds or 0)
        if not expired:
            return False
        takeover = self._lease((spec.lease_transitions or 0) + 1, current.metadata.resource_version)
        if not self._patch(takeover):
            return False
        log.info("leader_elected", identity=self.identity, lease=self.name, took_over_from=spec.holder_identity)
        return True

    def renew(self) -> bool:
        try:
            current = self._coordination().read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            log.warning("lease_renewal_failed", status=exc.status, reason=exc.reason)
            return False
        if current.spec.holder_identity != self.identity:
            return False
        return self._patch(
            {"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": {"renewTime": _micro(_now())}}
        )

    def _patch(self, body: dict[str, Any]) -> bool:
        """A write conditioned on the resourceVersion read: False when another replica wrote first."""
        try:
            self._coordination().patch_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                log.warning("lease_write_failed", status=exc.status, reason=exc.reason)
            return False
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
            except Exception as exc:  # an unreachable API must not kill the waiting replica
                log.warning("lease_acquire_failed", error=str(exc))
            stop.wait(self.duration / 3)
        return False

    def keep(self, stop: threading.Event, lost: threading.Event) -> None:
        """Renew until `stop`; set `lost` when the Lease could not be renewed within its duration."""
        last_ok = time.monotonic()
        while not stop.wait(self.duration / 3):
            if self.renew():
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok > self.duration * 2 / 3:
                log.error("leadership_lost", identity=self.identity, lease=self.name)
                lost.set()
                return
