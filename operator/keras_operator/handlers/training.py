"""kopf wiring for KerasTrainingJob: watches, not timers.

Three kopf indexes mirror what the operator needs from the cluster (its KerasTrainingJobs, and the Jobs
and pods it made, each found by one label-selected watch); kopf fills them before any handler runs.
Every watch event, and every progress push from a trainer, enqueues the resource's key; the work
queue runs the controller on the indexed state and writes one status PATCH when something changed.
No per-resource timer, no GET, no kopf annotation or finalizer on the resource.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import kopf

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.report import EpochReport, last_epoch
from keras_operator.api.training import KIND, PLURAL, TRAINER_CONTAINER
from keras_operator.controllers import training as training_controller
from keras_operator.handlers.common import Current, plain, watched_resource
from keras_operator.handlers.status_writer import StatusWriter
from keras_operator.runtime import kube, metrics
from keras_operator.runtime.settings import Settings
from keras_operator.runtime.workqueue import WorkQueue

RESOURCE = (GROUP, VERSION, PLURAL)
OWNER_LABEL = training_controller.OWNER_LABEL
COMPLETION_INDEX = training_controller.COMPLETION_INDEX
OWNED = {**training_controller.WATCHED_LABELS, OWNER_LABEL: kopf.PRESENT}

Key = tuple[str, str]  # (namespace, KerasTrainingJob name)


# --- what the watches show, trimmed to what the controller reads (memory at thousands of resources) ---


@kopf.index(*RESOURCE)
def training_resources(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): watched_resource(body, KIND)}


@kopf.index("batch", "v1", "jobs", labels=OWNED)
def training_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    meta = body["metadata"]
    return {
        (namespace, labels[OWNER_LABEL]): {
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "annotations")}
            | {"ownerReferences": meta.get("ownerReferences") or []},
            "spec": {"suspend": bool((body.get("spec") or {}).get("suspend"))},
            "status": plain(body.get("status") or {}),
        }
    }


@kopf.index("", "v1", "pods", labels=OWNED)
def training_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    meta, status = body["metadata"], body.get("status") or {}
    return {
        (namespace, labels[OWNER_LABEL]): {
            "metadata": {k: meta.get(k) for k in ("name", "uid", "creationTimestamp")}
            | {"annotations": {k: v for k, v in (meta.get("annotations") or {}).items() if k == COMPLETION_INDEX}},
            # reason and message: why a pod failed with no container to tell (Evicted, ...), for status.workers.
            "status": {
                k: status.get(k)
                for k in ("phase", "reason", "message", "conditions", "containerStatuses")
                if status.get(k)
            },
        }
    }


@dataclass
class State:
    """The indexes (kopf hands them to handlers; the queue's workers and the progress endpoint read them
    here) and what the operator itself learnt: pushed reports, Jobs it made before their watch event,
    the status it last wrote."""

    indexes: tuple[kopf.Index, kopf.Index, kopf.Index] | None = None
    reports: dict[Key, EpochReport] = field(default_factory=dict)
    pushed: set[Key] = field(default_factory=set)  # trainings whose trainer reaches the endpoint
    silent_since: dict[Key, float] = field(default_factory=dict)  # first seen running without a push
    created: dict[Key, dict[str, Any]] = field(default_factory=dict)
    status: StatusWriter = field(
        default_factory=lambda: StatusWriter(RESOURCE, KIND, training_controller.ACTION_REASONS)
    )

    def bind(self, resources: kopf.Index, jobs: kopf.Index, pods: kopf.Index) -> None:
        self.indexes = (resources, jobs, pods)

    def view(self, key: Key) -> training_controller.View | None:
        assert self.indexes is not None
        resources, jobs, pods = self.indexes
        resource = next(iter(resources.get(key, [])), None)
        if resource is None:
            return None
        resource = self.status.current(key, resource)
        uid = resource["metadata"]["uid"]
        job = next((j for j in jobs.get(key, []) if _owned(j, uid)), None)
        if job is not None:
            self.created.pop(key, None)  # the watch has caught up with our own create
        else:
            job = self.created.get(key)
        return training_controller.View(
            resource=resource, job=job, pods=list(pods.get(key, [])), report=self.reports.get(key)
        )

    def clear(self) -> None:
        """A new start (in tests, a new operator in the same process) knows nothing of the last one's cluster."""
        self.indexes = None
        for store in (self.reports, self.silent_since, self.created):
            store.clear()
        self.pushed.clear()
        self.status.clear()

    def forget(self, key: Key) -> None:
        for store in (self.reports, self.silent_since, self.created):
            store.pop(key, None)
        self.pushed.discard(key)
        self.status.forget(key)

    def own_job(self, key: Key, body: kopf.Body) -> bool:
        """Whether this is the Job this operator has just created (the reconcile that did knows it)."""
        made = self.created.get(key)
        return made is not None and made["metadata"].get("uid") == body.get("metadata", {}).get("uid")

    def running(self) -> list[tuple[Key, str]]:
        """(key, pod name) of every training whose newest pod runs now."""
        if self.indexes is None:
            return []
        _, _, pods = self.indexes
        out = []
        for key in list(pods):
            newest = training_controller.newest(list(pods.get(key, [])))
            if newest is not None and (newest.get("status") or {}).get("phase") == "Running":
                out.append((key, newest["metadata"]["name"]))
        return out


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


STATE = State()


@metrics.instrumented(KIND, "reconcile")
async def _reconcile(key: Hashable) -> None:
    assert isinstance(key, tuple)
    view = STATE.view(key)
    if view is None:  # deleted: its Job and pods go with it (owner references)
        STATE.forget(key)
        return
    outcome, job = await training_controller.reconcile(view, Current.settings)
    if job is not None and view.job is None:
        STATE.created[key] = job
    await STATE.status.write(key, view.resource, outcome)
    if outcome.requeue_after is not None:
        QUEUE.enqueue(key, outcome.requeue_after)


QUEUE = WorkQueue(_reconcile)


# --- triggers ---


def _enqueue(key: Key, training_resources: kopf.Index, training_jobs: kopf.Index, training_pods: kopf.Index) -> None:
    STATE.bind(training_resources, training_jobs, training_pods)
    QUEUE.enqueue(key)


@kopf.on.event(*RESOURCE)
async def resource_changed(namespace: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
    if STATE.status.own_echo((namespace, name), body):
        return  # our own status write coming back: the index has it, nothing to reconcile
    _enqueue((namespace, name), kwargs["training_resources"], kwargs["training_jobs"], kwargs["training_pods"])


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
async def job_changed(namespace: str, labels: kopf.Labels, body: kopf.Body, type: str, **kwargs: Any) -> None:
    key = (namespace, labels[OWNER_LABEL])
    if type == "ADDED" and STATE.own_job(key, body):
        STATE.created.pop(key, None)  # the index has it now (and no reconcile may come to drop it)
        return  # the Job the last reconcile created: it knew the Job
    _enqueue(key, kwargs["training_resources"], kwargs["training_jobs"], kwargs["training_pods"])


@kopf.on.event("", "v1", "pods", labels=OWNED)
async def pod_changed(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
    _enqueue(
        (namespace, labels[OWNER_LABEL]), kwargs["training_resources"], kwargs["training_jobs"], kwargs["training_pods"]
    )


def report_pushed(key: Key, report: EpochReport, newer_only: bool = False) -> None:
    """A trainer's push (already authenticated): keep the newest epoch (a resent one replaces its twin,
    `newer_only` does not), refresh the status."""
    STATE.pushed.add(key)
    old = STATE.reports.get(key)
    if old is None or report.epoch > old.epoch or (report.epoch == old.epoch and not newer_only):
        STATE.reports[key] = report
        QUEUE.enqueue(key)


# --- the fallback: pod logs, only for trainings whose trainer has not been heard from ---


async def read_logs_of_silent_trainings() -> None:
    """When a trainer cannot reach the progress endpoint (no endpoint configured, a NetworkPolicy, an
    old trainer image), its epochs still reach the status from its log: one log read every sync_interval
    for each training running for progress_fallback_after seconds without a push; none for the others."""
    while True:
        await asyncio.sleep(Current.settings.sync_interval)
        now = time.monotonic()
        for key, pod in STATE.running():
            if (
                key in STATE.pushed
                or now - STATE.silent_since.setdefault(key, now) < Current.settings.progress_fallback_after
            ):
                continue
            report = last_epoch(await kube.pod_log_tail(key[0], pod, TRAINER_CONTAINER) or "")
            old = STATE.reports.get(key)
            if report is not None and (old is None or report.epoch > old.epoch):
                STATE.reports[key] = report
                QUEUE.enqueue(key)


@kopf.on.startup()
async def start_log_fallback(**_: Any) -> None:
    Current.settings = Settings.from_env()
    STATE.clear()
    QUEUE.reset()
    asyncio.get_running_loop().create_task(read_logs_of_silent_trainings(), name="progress-log-fallback")


@kopf.on.cleanup()
async def stop_queue(**_: Any) -> None:
    await QUEUE.close()
