"""kopf wiring for KerasModelService, the same loop as training's: watches feed indexes, every event
enqueues the resource's key, one worker per key reconciles and one writer writes the status.

Triggers: the resource, the Deployment it made, and a resync every sync_interval (readiness settles,
serving figures move and the KerasTrainingJob it serves from finishes without any event of these). No kopf
annotation, finalizer or diff-base is written on the resource.

What the operator learns lives in one `Serving` object per operator run, made by main.py and handed to the
handlers in kopf's memo (`memo["serving"]`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import kopf

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.model_service import KIND, PLURAL
from keras_operator.api.training_job import PLURAL as TRAINING_PLURAL
from keras_operator.api.wire import MODEL_SERVICE_LABEL, WATCHED_LABELS
from keras_operator.controllers import serving_reconciler
from keras_operator.controllers.vanished import Vanished
from keras_operator.handlers.status_writer import StatusWriter
from keras_operator.handlers.watched_objects import being_deleted, plain, watched_resource
from keras_operator.runtime.kube import Api
from keras_operator.runtime.metrics import Metrics
from keras_operator.runtime.settings import Settings
from keras_operator.runtime.workqueue import WorkQueue

RESOURCE = (GROUP, VERSION, PLURAL)
TRAINING = (GROUP, VERSION, TRAINING_PLURAL)
OWNED = MappingProxyType({**WATCHED_LABELS, MODEL_SERVICE_LABEL: kopf.PRESENT})

Key = tuple[str, str]  # (namespace, KerasModelService name)


@kopf.index(*RESOURCE)
async def serving_resources(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): watched_resource(body, KIND)}


def _training_ref(spec: Any, *path: str) -> str | None:
    """spec.PATH.model.trainingJobRef.name (PATH: "canary" for the canary's), None when absent or malformed."""
    for key in (*path, "model", "trainingJobRef", "name"):
        spec = spec.get(key) if isinstance(spec, Mapping) else None
    return spec if isinstance(spec, str) else None


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def serving_deployments(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {
        (namespace, labels[MODEL_SERVICE_LABEL]): {
            k: plain(body.get(k)) for k in ("apiVersion", "kind", "metadata", "spec", "status")
        }
    }


@dataclass
class Serving:
    """The kind in one operator run: its indexes, what the operator learnt (the status it last wrote, the
    canary analysis under way, ...), its work queue, and the settings, API client and metrics of the run."""

    settings: Settings
    api: Api
    metrics: Metrics
    indexes: tuple[kopf.Index, kopf.Index] | None = None
    status: StatusWriter = field(init=False)
    scraped: dict[Key, float] = field(default_factory=dict)  # when each service's pods were last scraped
    windows: dict[Key, serving_reconciler.Window] = field(default_factory=dict)  # canary analysis under way
    no_hpa: dict[Key, str] = field(default_factory=dict)  # the uid of each service known to have no HPA
    vanished: Vanished = field(default_factory=Vanished)  # deleted while a watch re-listed: still indexed
    queue: WorkQueue = field(init=False)
    _resync: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.status = StatusWriter(RESOURCE, KIND, serving_reconciler.ACTION_REASONS, self.api, self.metrics)
        self.queue = WorkQueue(self.reconcile)

    async def view(self, key: Key) -> serving_reconciler.ObservedService | None:
        assert self.indexes is not None
        resources, deployments = self.indexes
        resource = next(iter(resources.get(key, [])), None)
        if resource is None or being_deleted(resource):
            return None
        resource = self.status.current(key, resource)
        uid = resource["metadata"]["uid"]
        owned = {
            d["metadata"]["name"]: d
            for d in deployments.get(key, [])
            if any(r.get("uid") == uid for r in d["metadata"].get("ownerReferences") or [])
        }
        # The KerasTrainingJobs it serves are read, not watched: a second handler on every training's every
        # event (each epoch of thousands of trainings) would cost more than one GET per service per resync.
        spec = resource.get("spec")
        ref, canary_ref = _training_ref(spec), _training_ref(spec, "canary")
        return serving_reconciler.ObservedService(
            resource=resource,
            deployment=owned.get(key[1]),
            training_job=await self.api.get_custom(TRAINING, key[0], ref) if ref else None,
            canary_deployment=owned.get(serving_reconciler.canary_name(key[1])),
            canary_training_job=await self.api.get_custom(TRAINING, key[0], canary_ref) if canary_ref else None,
            window=self.windows.get(key),
            hpa_absent=self.no_hpa.get(key) == uid,  # by uid: one deleted and made again starts unknown
        )

    def services(self) -> list[Key]:
        if self.indexes is None:
            return []
        return list(self.indexes[0])

    def forget(self, key: Key) -> None:
        self.status.forget(key)
        self.scraped.pop(key, None)
        self.windows.pop(key, None)
        self.no_hpa.pop(key, None)

    async def reconcile(self, key: Hashable) -> None:
        with self.metrics.run_of(KIND, "reconcile"):
            await self._reconcile(key)

    async def _reconcile(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        view = await self.vanished.serving_view(RESOURCE, await self.view(key), self.api)
        if view is None:  # deleted: its Deployment, Service and HPA go with it (owner references)
            self.forget(key)
            return
        now = time.monotonic()
        scrape = now - self.scraped.get(key, 0.0) >= self.settings.sync_interval
        self.no_hpa.pop(key, None)  # until this reconcile succeeds: one that fails half-way may have made an HPA
        outcome = await serving_reconciler.reconcile(view, self.settings, self.api, scrape=scrape)
        if view.hpa_absent:
            self.no_hpa[key] = view.resource["metadata"]["uid"]
        if scrape:
            self.scraped[key] = now
        await self.status.write(key, view.resource, outcome)
        # The analysis window moves on only once the status written from it is stored: after a failed write
        # (a 503, a 409), the retry closes the same window again and comes to the same decision.
        if view.window is None:
            self.windows.pop(key, None)
        else:
            self.windows[key] = view.window
        if outcome.requeue_after is not None:  # a decision stored: carry it out
            self.queue.enqueue(key, outcome.requeue_after)

    async def resync(self) -> None:
        """Every sync_interval, every service once more: readiness and serving figures change without events."""
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            for key in self.services():
                self.queue.enqueue(key)

    def start(self) -> None:
        """At kopf's startup (main.py): the resync loop."""
        self._resync = asyncio.get_running_loop().create_task(self.resync(), name="serving-resync")

    async def close(self) -> None:
        """At kopf's cleanup (main.py): the loop ends, and so does the work under way."""
        if self._resync is not None:
            self._resync.cancel()
            await asyncio.gather(self._resync, return_exceptions=True)
            self._resync = None
        await self.queue.close()


def of(memo: kopf.Memo) -> Serving:
    """The serving kind of this operator run (main.py puts it in kopf's memo)."""
    return cast(Serving, memo["serving"])


def _bound(memo: kopf.Memo, kwargs: dict[str, Any]) -> Serving:
    serving = of(memo)
    serving.indexes = (kwargs["serving_resources"], kwargs["serving_deployments"])
    return serving


@kopf.on.event(*RESOURCE)
async def service_changed(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    serving = _bound(memo, kwargs)
    if serving.status.own_echo((namespace, name), body):
        return  # our own status write coming back: nothing to reconcile
    serving.queue.enqueue((namespace, name))


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
async def deployment_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _bound(memo, kwargs).queue.enqueue((namespace, labels[MODEL_SERVICE_LABEL]))
