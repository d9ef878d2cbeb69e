"""Objects whose deletion the operator's watches never saw.

kopf removes an index entry only when its watch shows the deletion. After a `410 Gone` the watch lists
again, and an object deleted in that gap is simply not in the list: its entry stays in the index for good.
A Job deleted then would leave its training Running forever (and a resume would PATCH a Job that is no
more, get 404 and back off forever); a KerasModelService deleted then would have its Service and Deployment
made again at every resync, owned by a uid that is gone.

So an entry is checked against the API server where acting on a ghost would do harm, and only there (a
GET per resync of every resource would cost more than the watches): before children are made for a
resource, and when a Job in the index shows running pods that no longer exist. A 404 from a child's PATCH
says the same. What is found gone is remembered by uid (a resource re-applied under the same name has
another) and from then on treated as deleted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

from keras_operator.controllers import serving_reconciler, training_reconciler
from keras_operator.runtime import kube
from keras_operator.runtime.kube import Api
from keras_operator.runtime.settings import Settings
from keras_operator.status.events import Outcome

RECHECK_AFTER = 60.0
"""Seconds a resource found to exist while it has no Deployment is trusted to: one waiting for its training
(for hours, maybe) costs one read a minute, not one per resync."""


def _uid(obj: dict[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


@dataclasses.dataclass
class Vanished:
    """The uids of objects known deleted although an index still holds them."""

    uids: set[str] = dataclasses.field(default_factory=set)
    confirmed: dict[str, float] = dataclasses.field(default_factory=dict)
    """uid -> when (time.monotonic) a resource without a Deployment was last found to exist."""
    clock: Callable[[], float] = time.monotonic

    def gone(self, obj: dict[str, Any] | None) -> bool:
        return obj is not None and _uid(obj) in self.uids

    def mark(self, obj: dict[str, Any]) -> None:
        uid = _uid(obj)
        if uid:
            self.uids.add(uid)

    def clear(self) -> None:
        self.uids.clear()
        self.confirmed.clear()

    async def exists(self, obj: dict[str, Any], read: Callable[[], Awaitable[dict[str, Any] | None]]) -> bool:
        """Whether `obj` (as an index holds it) still exists: the same name with the same uid."""
        if self.gone(obj):
            return False
        current = await read()
        if current is not None and _uid(current) == _uid(obj):
            return True
        self.mark(obj)
        return False

    # --- KerasModelService ---

    async def serving_view(
        self, resource: tuple[str, str, str], view: serving_reconciler.ObservedService | None, api: Api
    ) -> serving_reconciler.ObservedService | None:
        """The view, or None when its resource is gone. Checked only when the reconcile may make its
        Deployment (none in the index), and again once a Deployment it had is gone (the garbage collector
        removes a deleted resource's): never are children made for a uid found gone."""
        if view is None:
            return None
        uid, now = _uid(view.resource) or "", self.clock()
        if view.deployment is not None:
            self.confirmed.pop(uid, None)  # a Deployment that goes later is checked afresh
            return view
        if self.gone(view.resource):
            return None
        if now - self.confirmed.get(uid, -RECHECK_AFTER) < RECHECK_AFTER:
            return view
        meta = view.resource["metadata"]
        if not await self.exists(view.resource, lambda: api.find_custom(resource, meta["namespace"], meta["name"])):
            self.confirmed.pop(uid, None)
            return None
        # Entries of resources deleted while they had no Deployment would stay: dropped once stale.
        self.confirmed = {u: t for u, t in self.confirmed.items() if now - t < RECHECK_AFTER}
        self.confirmed[uid] = now
        return view

    # --- KerasTrainingJob ---

    async def training_view(
        self, view: training_reconciler.ObservedTraining, api: Api
    ) -> training_reconciler.ObservedTraining:
        """The view without its Job when that Job is gone. Checked when the index shows the Job with pods
        running while none of them exists any more (what a Job deleted, and its pods collected, looks like)."""
        job = view.job
        if job is None:
            return view
        if not self.gone(job):
            active = int(((job.get("status") or {}).get("active")) or 0)
            if view.pods or not active or await self.exists(job, lambda: api.get("Job", *_place(job))):
                return view
        return dataclasses.replace(view, job=None, pods=[])

    async def reconcile_training(
        self,
        view: training_reconciler.ObservedTraining,
        settings: Settings,
        api: Api,
        specs: training_reconciler.ParsedSpecs | None = None,
    ) -> tuple[Outcome, dict[str, Any] | None, training_reconciler.ObservedTraining]:
        """The training's reconcile on a view checked as above; a 404 from a PATCH of its Job means the Job
        is gone (not a failure to retry): the reconcile runs again without it. -> (outcome, Job, view)."""
        view = await self.training_view(view, api)
        try:
            outcome, job = await training_reconciler.reconcile(view, settings, api, specs)
        except kube.ApiError as exc:
            if exc.status != 404 or view.job is None:
                raise
            self.mark(view.job)
            view = dataclasses.replace(view, job=None, pods=[])
            outcome, job = await training_reconciler.reconcile(view, settings, api, specs)
        return outcome, job, view


def _place(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj["metadata"]
    return meta["namespace"], meta["name"]
