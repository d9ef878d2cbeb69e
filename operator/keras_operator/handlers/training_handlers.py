"""kopf wiring for KerasTrainingJob: watches, not timers.

Three kopf indexes mirror what the operator needs from the cluster (its KerasTrainingJobs, and the Jobs
and pods it made, each found by one label-selected watch); kopf fills them before any handler runs.
Every watch event, and every progress push from a trainer, enqueues the resource's key; the work
queue runs the controller on the indexed state and writes one status PATCH when something changed.
No per-resource timer, no GET, no kopf annotation or finalizer on the resource.

What the operator learns lives in one `Training` object per operator run, made by main.py and handed to
the handlers in kopf's memo (`memo["training"]`): no module-level state, so each run starts from nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import kopf

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.report import EpochReport, last_epoch
from keras_operator.api.training_job import KIND, PLURAL
from keras_operator.api.wire import COMPLETION_INDEX_ANNOTATION, TRAINER_CONTAINER, TRAINING_JOB_LABEL, WATCHED_LABELS
from keras_operator.controllers import training_reconciler
from keras_operator.controllers.vanished import Vanished
from keras_operator.handlers.status_writer import StatusWriter
from keras_operator.handlers.watched_objects import being_deleted, plain, watched_resource
from keras_operator.runtime.kube import Api
from keras_operator.runtime.metrics import Metrics
from keras_operator.runtime.settings import Settings
from keras_operator.runtime.workqueue import WorkQueue

RESOURCE = (GROUP, VERSION, PLURAL)
OWNED = MappingProxyType({**WATCHED_LABELS, TRAINING_JOB_LABEL: kopf.PRESENT})

Key = tuple[str, str]  # (namespace, KerasTrainingJob name)


# --- what the watches show, trimmed to what the controller reads (memory at thousands of resources) ---


def _completion_index(meta: dict[str, Any]) -> dict[str, str]:
    """A pod's completion-index annotation alone (the worker's rank in an Indexed Job)."""
    annotations = meta.get("annotations") or {}
    return {k: v for k, v in annotations.items() if k == COMPLETION_INDEX_ANNOTATION}


# The indexes are `async def`, though they await nothing: kopf runs a plain `def` handler in its thread pool,
# a hop per watch event that cost more than the trimming itself (bench/README.md, the operator's profile).
@kopf.index(*RESOURCE)
async def training_resources(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): watched_resource(body, KIND)}


@kopf.index(*RESOURCE)
async def training_dependents(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Key, str] | None:
    """Which trainings start from which (spec.model.trainingJobRef): a training's status change reconciles
    the trainings waiting for it, with no timer and no GET."""
    ref = training_ref(spec)
    return {(namespace, ref): name} if ref else None


def training_ref(spec: Any) -> str | None:
    """spec.model.trainingJobRef.name, or None. An invalid spec's fields may be of any type (the reconcile
    reports it Valid=False), and kopf's Spec view raises TypeError on a field under a string or a list."""
    try:
        ref = spec["model"]["trainingJobRef"]["name"]
    except (KeyError, TypeError, IndexError):
        return None
    return ref if isinstance(ref, str) else None


@kopf.index("batch", "v1", "jobs", labels=OWNED)
async def training_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    meta = body["metadata"]
    return {
        (namespace, labels[TRAINING_JOB_LABEL]): {
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "annotations")}
            | {"ownerReferences": meta.get("ownerReferences") or []},
            "spec": {"suspend": bool((body.get("spec") or {}).get("suspend"))},
            "status": plain(body.get("status") or {}),
        }
    }


@kopf.index("", "v1", "pods", labels=OWNED)
async def training_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    meta, status = body["metadata"], body.get("status") or {}
    return {
        (namespace, labels[TRAINING_JOB_LABEL]): {
            "metadata": {k: meta.get(k) for k in ("name", "uid", "creationTimestamp", "deletionTimestamp")}
            | {
                "annotations": {
                    k: v for k, v in (meta.get("annotations") or {}).items() if k == COMPLETION_INDEX_ANNOTATION
                }
            }
            # Labels anyone may set; the owner (the Job, by uid) is what makes a pod the training's.
            | {"ownerReferences": [{"uid": ref.get("uid")} for ref in meta.get("ownerReferences") or []]},
            # reason and message: why a pod failed with no container to tell (Evicted, ...), for status.workers.
            "status": {
                k: status.get(k)
                for k in ("phase", "reason", "message", "conditions", "containerStatuses")
                if status.get(k)
            },
        }
    }


@dataclass
class Training:
    """The kind in one operator run: the indexes (kopf hands them to handlers; the queue's workers and the
    progress endpoint read them here), what the operator itself learnt (pushed reports, Jobs it made before
    their watch event, the status it last wrote), its work queue, and the settings, API client and metrics
    of the run."""

    settings: Settings
    api: Api
    metrics: Metrics
    indexes: tuple[kopf.Index, kopf.Index, kopf.Index] | None = None
    # Each keyed by name but held for one resource uid: a resource deleted and re-applied under the same
    # name is another run, and nothing its predecessor's pods said applies to it.
    reports: dict[Key, tuple[str, EpochReport]] = field(default_factory=dict)  # (uid, the latest epoch)
    pushed: dict[Key, str] = field(default_factory=dict)  # uid of the run whose trainer reaches the endpoint
    silent_since: dict[Key, tuple[str, float]] = field(default_factory=dict)  # (uid, first seen silent)
    created: dict[Key, dict[str, Any]] = field(default_factory=dict)
    seen: dict[Key, str] = field(default_factory=dict)  # the uid the last reconcile of the name saw
    vanished: Vanished = field(default_factory=Vanished)  # Jobs deleted while a watch re-listed: still indexed
    specs: training_reconciler.ParsedSpecs = field(default_factory=training_reconciler.ParsedSpecs)
    status: StatusWriter = field(init=False)
    queue: WorkQueue = field(init=False)
    _fallback: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.status = StatusWriter(RESOURCE, KIND, training_reconciler.ACTION_REASONS, self.api, self.metrics)
        self.queue = WorkQueue(self.reconcile)

    @property
    def started(self) -> bool:
        return self.indexes is not None

    def bind(self, resources: kopf.Index, jobs: kopf.Index, pods: kopf.Index) -> None:
        self.indexes = (resources, jobs, pods)

    def view(self, key: Key) -> training_reconciler.ObservedTraining | None:
        assert self.indexes is not None
        resources, jobs, _ = self.indexes
        resource = next(iter(resources.get(key, [])), None)
        if resource is None or being_deleted(resource):
            return None
        uid = resource["metadata"]["uid"]
        if self.seen.get(key) != uid:
            # Re-applied under the same name before a reconcile saw the deletion: the status last written
            # was the old resource's, and must not stand in for the new one's.
            self.status.forget(key)
            self.seen[key] = uid
        resource = self.status.current(key, resource)
        job = next((j for j in jobs.get(key, []) if _owned(j, uid)), None)
        if job is not None:
            self.created.pop(key, None)  # the watch has caught up with our own create
        else:
            job = self._made(key, uid)
        ref = training_ref(resource.get("spec"))
        source = next(iter(resources.get((key[0], ref), [])), None) if ref else None
        if source is not None:  # with the status last written for it, which its watch may not show yet
            source = self.status.current((key[0], str(ref)), source)
        return training_reconciler.ObservedTraining(
            resource=resource, job=job, pods=self._pods(key, job), report=self.report_of(key, uid), source=source
        )

    def _made(self, key: Key, uid: str) -> dict[str, Any] | None:
        """The Job a reconcile of this very resource created, before its watch event."""
        made = self.created.get(key)
        return made if made is not None and _owned(made, uid) else None

    def _own_job(self, key: Key, uid: str) -> dict[str, Any] | None:
        assert self.indexes is not None
        _, jobs, _ = self.indexes
        return next((j for j in jobs.get(key, []) if _owned(j, uid)), None) or self._made(key, uid)

    def _pods(self, key: Key, job: dict[str, Any] | None) -> list[dict[str, Any]]:
        """The pods of the resource's own Job: a pod counts by its owner, never by its labels (anyone who
        may create pods can copy them, and a deleted run's pods keep them while they are collected)."""
        assert self.indexes is not None
        _, _, pods = self.indexes
        job_uid = (job or {}).get("metadata", {}).get("uid")
        return [p for p in pods.get(key, []) if _owned(p, job_uid)] if job_uid else []

    def report_of(self, key: Key, uid: str) -> EpochReport | None:
        held = self.reports.get(key)
        return held[1] if held is not None and held[0] == uid else None

    def reporters(self, key: Key) -> tuple[str | None, list[dict[str, Any]]]:
        """(the resource's uid, the pods that may report for it): those of its own Job."""
        assert self.indexes is not None
        resources, _, _ = self.indexes
        resource = next(iter(resources.get(key, [])), None)
        if resource is None:
            return None, []
        uid = resource["metadata"]["uid"]
        return uid, self._pods(key, self._own_job(key, uid))

    def forget(self, key: Key) -> None:
        for store in (self.reports, self.pushed, self.silent_since, self.created, self.seen):
            store.pop(key, None)
        self.status.forget(key)

    def own_job(self, key: Key, body: kopf.Body) -> bool:
        """Whether this is the Job this operator has just created (the reconcile that did knows it)."""
        made = self.created.get(key)
        return made is not None and made["metadata"].get("uid") == body.get("metadata", {}).get("uid")

    def running(self) -> list[tuple[Key, str, str]]:
        """(key, resource uid, pod name) of every training whose newest pod of its own Job runs now."""
        if self.indexes is None:
            return []
        _, _, pods = self.indexes
        out = []
        for key in list(pods):
            uid, own = self.reporters(key)
            newest = training_reconciler.newest(own)
            if uid is not None and newest is not None and (newest.get("status") or {}).get("phase") == "Running":
                out.append((key, uid, newest["metadata"]["name"]))
        return out

    async def reconcile(self, key: Hashable) -> None:
        with self.metrics.run_of(KIND, "reconcile"):
            await self._reconcile(key)

    async def _reconcile(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        view = self.view(key)
        if view is None:  # deleted: its Job and pods go with it (owner references)
            self.forget(key)
            return
        outcome, job, view = await self.vanished.reconcile_training(view, self.settings, self.api, self.specs)
        if job is not None and view.job is None:
            self.created[key] = job
        await self.status.write(key, view.resource, outcome)
        if outcome.requeue_after is not None:
            self.queue.enqueue(key, outcome.requeue_after)

    def enqueue(self, key: Key, resources: kopf.Index, jobs: kopf.Index, pods: kopf.Index) -> None:
        self.bind(resources, jobs, pods)
        self.queue.enqueue(key)

    def report_pushed(self, key: Key, uid: str, report: EpochReport, newer_only: bool = False) -> None:
        """A push from a pod of the run of resource `uid` (already authenticated and authorised): keep the
        newest epoch (a resent one replaces its twin, `newer_only` does not), refresh the status."""
        self.pushed[key] = uid
        old = self.report_of(key, uid)
        if old is None or report.epoch > old.epoch or (report.epoch == old.epoch and not newer_only):
            self.reports[key] = (uid, report)
            self.queue.enqueue(key)

    # --- the fallback: pod logs, only for trainings whose trainer has not been heard from ---

    async def read_logs_of_silent_trainings(self) -> None:
        """When a trainer cannot reach the progress endpoint (no endpoint configured, a NetworkPolicy, an
        old trainer image), its epochs still reach the status from its log: one log read every sync_interval
        for each training running for progress_fallback_after seconds without a push; none for the others."""
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            now = time.monotonic()
            for key, uid, pod in self.running():
                if self.silent_since.get(key, ("", 0.0))[0] != uid:
                    self.silent_since[key] = (uid, now)
                silent = now - self.silent_since[key][1]
                if self.pushed.get(key) == uid or silent < self.settings.progress_fallback_after:
                    continue
                report = last_epoch(await self.api.pod_log_tail(key[0], pod, TRAINER_CONTAINER) or "")
                old = self.report_of(key, uid)
                if report is not None and (old is None or report.epoch > old.epoch):
                    self.reports[key] = (uid, report)
                    self.queue.enqueue(key)

    def start(self) -> None:
        """At kopf's startup (main.py): the log fallback's loop."""
        loop = asyncio.get_running_loop()
        self._fallback = loop.create_task(self.read_logs_of_silent_trainings(), name="progress-log-fallback")

    async def close(self) -> None:
        """At kopf's cleanup (main.py): the loop ends (else kopf gives it 5 s before cancelling it, and the
        leader releases the Lease only after that), and so does the work under way."""
        if self._fallback is not None:
            self._fallback.cancel()
            await asyncio.gather(self._fallback, return_exceptions=True)
            self._fallback = None
        await self.queue.close()


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


# --- triggers ---


def of(memo: kopf.Memo) -> Training:
    """The training kind of this operator run (main.py puts it in kopf's memo)."""
    return cast(Training, memo["training"])


def _enqueue(key: Key, memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    of(memo).enqueue(key, kwargs["training_resources"], kwargs["training_jobs"], kwargs["training_pods"])


@kopf.on.event(*RESOURCE)
async def resource_changed(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    dependents: kopf.Index | None = kwargs.get("training_dependents")
    for dependent in (dependents or {}).get((namespace, name), []):
        # Our own status write is news to them (it may say Succeeded): before the echo is skipped.
        _enqueue((namespace, dependent), memo, kwargs)
    if of(memo).status.own_echo((namespace, name), body):
        return  # our own status write coming back: the index has it, nothing to reconcile
    _enqueue((namespace, name), memo, kwargs)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_changed(
    namespace: str, labels: kopf.Labels, body: kopf.Body, type: str, memo: kopf.Memo, **kwargs: Any
) -> None:
    key, training = (namespace, labels[TRAINING_JOB_LABEL]), of(memo)
    if type == "ADDED" and training.own_job(key, body):
        training.created.pop(key, None)  # the index has it now (and no reconcile may come to drop it)
        return  # the Job the last reconcile created: it knew the Job
    _enqueue(key, memo, kwargs)


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    _enqueue((namespace, labels[TRAINING_JOB_LABEL]), memo, kwargs)
