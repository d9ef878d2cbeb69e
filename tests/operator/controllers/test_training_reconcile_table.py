"""The KerasTrainingJob reconcile, one row per branch, called directly against a fake API (helpers.fake_api).

Each row gives what the watches show (the resource, its Job as the index trims it, its pods), what already
exists in the cluster, and which API call fails; and what the reconcile must do: the writes it makes, the
phase and conditions it reports, the Events, the requeue. The builders and the status functions are the
real ones; only the API is fake. No TensorFlow, no process: part of the fast tier.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest

from helpers.fake_api import FakeApi
from helpers.jobs import tiny_job
from keras_operator.builders.training_manifests import build_job, build_worker_service, progress_endpoint
from keras_operator.controllers import training_reconciler
from keras_operator.runtime import kube
from keras_operator.runtime.settings import Settings

UID = "ktj-uid"
OLD_UID = "ktj-uid-of-a-deleted-run"
SETTINGS = Settings()
LONG_AGO = "2020-01-01T00:00:00Z"
MODEL_URI = f"pvc://models/tiny/runs/{UID}/model.keras"


# --- factories ---


def resource(generation: int = 1, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A KerasTrainingJob as its index holds it; `spec` overrides as helpers.jobs.tiny_job takes them."""
    doc = tiny_job("tiny", **{"output": {"uri": "pvc://models/tiny"}, **spec})
    doc["metadata"].update(namespace="default", uid=UID, generation=generation, resourceVersion="7")
    doc["status"] = copy.deepcopy(status or {})
    return doc


def condition(type_: str, status: bool, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason, "message": reason}


@dataclass
class Job:
    """The Job that exists: built by the real builder from `spec` (the resource's own when None)."""

    status: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None
    suspend: bool | None = None  # as built when None
    owner: str | None = UID  # the uid owning it; None: no owner at all
    in_view: bool = True  # False: it exists, but the watches have not shown it


def built_job(body: dict[str, Any], job: Job) -> dict[str, Any]:
    source = resource(**job.spec) if job.spec is not None else body
    made = build_job(
        source,
        training_reconciler.validate(source),
        SETTINGS.image_for(training_reconciler.validate(source).backend),
        progress_endpoint(SETTINGS),
    )
    made["metadata"]["uid"] = "job-uid"
    refs = made["metadata"].get("ownerReferences") or []
    made["metadata"]["ownerReferences"] = [{**r, "uid": job.owner} for r in refs] if job.owner else []
    if job.suspend is not None:
        made["spec"]["suspend"] = job.suspend
    made["status"] = copy.deepcopy(job.status)
    return made


def indexed(job: dict[str, Any]) -> dict[str, Any]:
    """The Job as the handlers' index keeps it (handlers/training_handlers.py training_jobs)."""
    meta = job["metadata"]
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels", "annotations")}
        | {"ownerReferences": meta.get("ownerReferences") or []},
        "spec": {"suspend": bool(job["spec"].get("suspend"))},
        "status": copy.deepcopy(job["status"]),
    }


def pod(phase: str, terminated: dict[str, Any] | None = None) -> dict[str, Any]:
    """A pod of the Job (worker 0), as the pods' index keeps it."""
    trainer: dict[str, Any] = {"name": "trainer", "state": {"terminated": terminated} if terminated else {}}
    return {
        "metadata": {
            "name": "tiny-train-abcde",
            "uid": "pod-uid",
            "creationTimestamp": LONG_AGO,
            "annotations": {},
            "ownerReferences": [{"uid": "job-uid"}],
        },
        "status": {"phase": phase, "containerStatuses": [trainer]},
    }


def other_owner(kind: str, name: str, uid: str | None) -> dict[str, Any]:
    """An object of `name` owned by the KerasTrainingJob `tiny` of another uid (a deleted run), or by nothing."""
    refs = (
        [{"apiVersion": "kerasoperator.dev/v1alpha1", "kind": "KerasTrainingJob", "name": "tiny", "uid": uid}]
        if uid
        else []
    )
    api = "batch/v1" if kind == "Job" else "v1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "ownerReferences": refs}, "spec": {}}


RUNNING = {"active": 1, "startTime": LONG_AGO}
COMPLETE = {
    "succeeded": 1,
    "startTime": LONG_AGO,
    "completionTime": LONG_AGO,
    "conditions": [condition("SuccessCriteriaMet", True, "CompletionsReached"), condition("Complete", True, "Done")],
}
FAILED = {
    "failed": 4,
    "startTime": LONG_AGO,
    "conditions": [
        condition("FailureTarget", True, "BackoffLimitExceeded"),
        condition("Failed", True, "BackoffLimitExceeded"),
    ],
}
WAS_RUNNING = {
    "jobName": "tiny-train",
    "phase": "Running",
    "observedGeneration": 1,
    "conditions": [condition("Running", True, "Training")],
}
WAS_SUCCEEDED = {
    "jobName": "tiny-train",
    "phase": "Succeeded",
    "observedGeneration": 1,
    "modelUri": MODEL_URI,
    "completionTime": LONG_AGO,
}


# --- the table ---


@dataclass
class Row:
    spec: dict[str, Any] = field(default_factory=dict)
    generation: int = 1
    status: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    existing: list[dict[str, Any]] = field(default_factory=list)
    fail: tuple[str, BaseException, str | None] | None = None  # (call, error, kind)
    # what must happen
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # FakeApi.changes, exactly
    tried: list[tuple[str, str, str]] = field(default_factory=list)  # calls made (that changed nothing)
    phase: str | None = None
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, reason)
    events: list[str] = field(default_factory=list)  # reasons, in order
    requeue: Callable[[float | None], bool] = lambda r: r is None
    returns_job: bool | None = None  # whether the reconcile hands back a Job
    raises: type[BaseException] | None = None
    check: Callable[[dict[str, Any], FakeApi], None] | None = None


def _model_uri_named(status: dict[str, Any], _: FakeApi) -> None:
    assert status["modelUri"] == MODEL_URI


def _job_is_suspended(_: dict[str, Any], api: FakeApi) -> None:
    job = api.stored("Job", "tiny-train")
    assert job is not None
    assert job["spec"]["suspend"] is True


def _job_is_resumed(_: dict[str, Any], api: FakeApi) -> None:
    job = api.stored("Job", "tiny-train")
    assert job is not None
    assert job["spec"]["suspend"] is False


def _no_failed_condition(status: dict[str, Any], _: FakeApi) -> None:
    assert "Failed" not in {c["type"] for c in status["conditions"]}, status["conditions"]


def _headless_service_made(_: dict[str, Any], api: FakeApi) -> None:
    service = api.stored("Service", "tiny-workers")
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"


CREATE_JOB = ("created", "Job", "tiny-train")
APPLY_SERVICE = ("created", "Service", "tiny-workers")
TRY_JOB = ("create_or_adopt", "Job", "tiny-train")
TRY_SERVICE = ("apply", "Service", "tiny-workers")
TWO_WORKERS = {"distribution": {"workers": 2}, "backend": "jax"}


ROWS = [
    pytest.param(
        Row(
            spec={"output": {}},
            phase="Failed",
            conditions={"Valid": ("False", "InvalidSpec"), "Failed": ("True", "InvalidSpec")},
            events=["InvalidSpec"],
            returns_job=False,
        ),
        id="invalid-spec-reported-nothing-created",
    ),
    pytest.param(
        Row(
            spec={"output": {}},
            generation=2,
            status=WAS_RUNNING,
            job=Job(status=RUNNING, spec={}),
            phase="Running",
            conditions={"SpecApplied": ("False", "ImmutableWhileRunning")},
            events=["SpecChangeIgnored"],
            returns_job=True,
        ),
        id="invalid-edit-while-running-leaves-the-job",
    ),
    pytest.param(
        Row(
            writes=[CREATE_JOB],
            phase="Pending",
            conditions={"Created": ("True", "JobCreated"), "SpecApplied": ("True", "JobMatchesSpec")},
            events=["Created"],
            returns_job=True,
        ),
        id="first-reconcile-creates-the-job",
    ),
    pytest.param(
        Row(
            job=Job(status=RUNNING, in_view=False),
            tried=[TRY_JOB],
            phase="Pending",
            conditions={"Created": ("True", "JobCreated")},
            returns_job=True,
        ),
        id="own-job-not-yet-watched-adopted-not-recreated",
    ),
    pytest.param(
        Row(
            spec=TWO_WORKERS,
            writes=[APPLY_SERVICE, CREATE_JOB],
            phase="Pending",
            events=["Created", "Created"],
            returns_job=True,
            check=_headless_service_made,
        ),
        id="multi-worker-creates-the-service-then-the-job",
    ),
    pytest.param(
        Row(
            status={"phase": "Failed", "observedGeneration": 1, "conditions": [condition("Failed", True, "Forbidden")]},
            phase="Failed",
            returns_job=False,
        ),
        id="refused-at-this-generation-not-asked-again",
    ),
    pytest.param(
        Row(
            generation=2,
            status={
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [condition("Valid", False, "InvalidSpec"), condition("Failed", True, "InvalidSpec")],
            },
            writes=[CREATE_JOB],
            phase="Pending",
            conditions={"Valid": ("True", "SpecValid")},
            events=["Created", "Pending"],
            returns_job=True,
            check=_no_failed_condition,
        ),
        id="fixed-spec-drops-the-old-failure-and-creates",
    ),
    pytest.param(
        Row(
            status={"phase": "Pending", "jobName": "tiny-train", "observedGeneration": 1},
            job=Job(status={}),
            pods=[pod("Pending")],
            phase="Pending",
            conditions={"Created": ("True", "JobCreated")},
            returns_job=True,
        ),
        id="job-pod-pending",
    ),
    pytest.param(
        Row(
            status={"phase": "Pending", "jobName": "tiny-train", "observedGeneration": 1},
            job=Job(status=RUNNING),
            pods=[pod("Running")],
            phase="Running",
            conditions={"Running": ("True", "Training"), "SpecApplied": ("True", "JobMatchesSpec")},
            events=["Running"],
            returns_job=True,
        ),
        id="job-running",
    ),
    pytest.param(
        Row(
            status=WAS_RUNNING,
            job=Job(status={**RUNNING, "failed": 1}),
            pods=[pod("Failed", {"exitCode": 1, "message": "out of memory"})],
            phase="Pending",
            conditions={"Running": ("False", "Retrying")},
            events=["Pending"],
            returns_job=True,
        ),
        id="pod-failed-job-retries",
    ),
    pytest.param(
        Row(
            status=WAS_RUNNING,
            job=Job(status=COMPLETE),
            phase="Succeeded",
            conditions={"Succeeded": ("True", "Completed"), "Running": ("False", "Completed")},
            events=["Succeeded"],
            returns_job=True,
            check=_model_uri_named,
        ),
        id="job-succeeded-names-the-model",
    ),
    pytest.param(
        Row(
            status=WAS_RUNNING,
            job=Job(status=FAILED),
            phase="Failed",
            conditions={"Failed": ("True", "TrainingError")},
            events=["Failed"],
            returns_job=True,
        ),
        id="job-failed",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"suspend": True}},
            status=WAS_RUNNING,
            job=Job(status=RUNNING, suspend=False),
            writes=[("patched", "Job", "tiny-train")],
            phase="Queued",
            conditions={"Queued": ("True", "Suspended")},
            events=["Suspended", "Queued"],
            returns_job=True,
            check=_job_is_suspended,
        ),
        id="suspend-set-suspends-the-job",
    ),
    pytest.param(
        Row(
            status={**WAS_RUNNING, "phase": "Queued"},
            job=Job(status={}, suspend=True),
            writes=[("patched", "Job", "tiny-train")],
            phase="Pending",
            events=["Resumed", "Pending"],
            returns_job=True,
            check=_job_is_resumed,
        ),
        id="suspend-cleared-resumes-the-job",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"queueName": "team-a"}},
            status={"jobName": "tiny-train", "phase": "Pending", "observedGeneration": 1},
            job=Job(status={}),
            phase="Queued",
            conditions={"Queued": ("True", "Suspended")},
            events=["Queued"],
            returns_job=True,
            check=lambda status, _: "waiting for Kueue" in status["message"],
        ),
        id="kueue-queued-job-left-suspended",
    ),
    pytest.param(
        Row(
            spec={"training": {"epochs": 5, "batchSize": 32, "seed": 1}},
            generation=2,
            status=WAS_RUNNING,
            job=Job(status=RUNNING, spec={}),
            pods=[pod("Running")],
            phase="Running",
            conditions={"SpecApplied": ("False", "ImmutableWhileRunning")},
            events=["SpecChangeIgnored"],
            returns_job=True,
        ),
        id="spec-edited-after-start-not-applied",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"ttlSecondsAfterFinished": 60}},
            status=WAS_RUNNING,
            job=Job(status=COMPLETE),
            phase="Succeeded",
            events=["Succeeded"],
            requeue=lambda r: r == 0.1,
            returns_job=True,
        ),
        id="ttl-result-stored-before-the-job-goes",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"ttlSecondsAfterFinished": 60}},
            status=WAS_SUCCEEDED,
            job=Job(status=COMPLETE),
            writes=[("deleted", "Job", "tiny-train")],
            phase="Succeeded",
            events=["Deleted"],
            returns_job=True,
        ),
        id="ttl-expired-deletes-the-job",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"ttlSecondsAfterFinished": 3600}},
            status=WAS_SUCCEEDED,
            job=Job(status={**COMPLETE, "completionTime": "2999-01-01T00:00:00Z"}),
            phase="Succeeded",
            requeue=lambda r: r is not None and r > 3600,
            returns_job=True,
        ),
        id="ttl-not-due-requeues",
    ),
    pytest.param(
        Row(status=WAS_SUCCEEDED, phase="Succeeded", returns_job=False, check=_model_uri_named),
        id="finished-and-job-removed-is-done",
    ),
    pytest.param(
        Row(
            status=WAS_RUNNING,
            phase="Failed",
            conditions={"Failed": ("True", "JobDeleted"), "Created": ("False", "JobDeleted")},
            events=["Failed"],
            returns_job=False,
        ),
        id="job-deleted-before-the-end-fails",
    ),
    pytest.param(
        Row(
            existing=[other_owner("Job", "tiny-train", OLD_UID)],
            tried=[TRY_JOB],
            phase="Pending",
            conditions={"Created": ("False", "WaitingForPreviousRun")},
            requeue=lambda r: r == training_reconciler.PREVIOUS_RUN_RETRY,
            returns_job=False,
        ),
        id="job-of-a-previous-run-waits",
    ),
    pytest.param(
        Row(
            spec=TWO_WORKERS,
            existing=[other_owner("Service", "tiny-workers", OLD_UID)],
            tried=[TRY_SERVICE],
            phase="Pending",
            conditions={"Created": ("False", "WaitingForPreviousRun")},
            requeue=lambda r: r == training_reconciler.PREVIOUS_RUN_RETRY,
            returns_job=False,
        ),
        id="service-of-a-previous-run-waits",
    ),
    pytest.param(
        Row(
            existing=[other_owner("Job", "tiny-train", None)],
            tried=[TRY_JOB],
            phase="Failed",
            conditions={"Valid": ("False", "NameConflict")},
            events=["NameConflict"],
            returns_job=False,
        ),
        id="job-name-taken-conflict",
    ),
    pytest.param(
        Row(
            spec=TWO_WORKERS,
            existing=[other_owner("Service", "tiny-workers", None)],
            tried=[TRY_SERVICE],
            phase="Failed",
            conditions={"Valid": ("False", "NameConflict")},
            events=["NameConflict"],
            returns_job=False,
        ),
        id="service-name-taken-conflict",
    ),
    pytest.param(
        Row(
            fail=("create_or_adopt", kube.Rejected("jobs is forbidden: exceeded quota", 403), "Job"),
            tried=[TRY_JOB],
            phase="Failed",
            conditions={"Valid": ("False", "Forbidden"), "Failed": ("True", "Forbidden")},
            events=["Forbidden"],
            returns_job=False,
        ),
        id="create-rejected-403-reported",
    ),
    pytest.param(
        Row(
            fail=("create_or_adopt", kube.Rejected("spec.template: Invalid value", 422), "Job"),
            tried=[TRY_JOB],
            phase="Failed",
            conditions={"Valid": ("False", "InvalidSpec")},
            events=["InvalidSpec"],
            returns_job=False,
            check=lambda status, _: "rejected the generated object" in status["message"],
        ),
        id="create-rejected-422-reported",
    ),
    pytest.param(
        Row(
            fail=("create_or_adopt", kopf.TemporaryError("Kubernetes API error 503", delay=5), "Job"),
            tried=[TRY_JOB],
            raises=kopf.TemporaryError,
        ),
        id="create-unavailable-retried",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"suspend": True}},
            status=WAS_RUNNING,
            job=Job(status=RUNNING, suspend=False),
            fail=("patch", kube.Conflict("the object has been modified"), "Job"),
            tried=[("patch", "Job", "tiny-train")],
            raises=kube.Conflict,
        ),
        id="suspend-conflict-retried",
    ),
    pytest.param(
        Row(
            spec={"runPolicy": {"suspend": True}},
            status=WAS_RUNNING,
            job=Job(status=RUNNING, suspend=False, in_view=True),
            fail=("patch", kube.ApiError(404, "Not Found"), "Job"),
            tried=[("patch", "Job", "tiny-train")],
            raises=kube.ApiError,
        ),
        id="suspend-of-a-vanished-job-404-raised",
    ),
]


def _check(outcome_status: dict[str, Any], row: Row) -> None:
    if row.phase is not None:
        assert outcome_status.get("phase") == row.phase, outcome_status
    have = {c["type"]: (c["status"], c.get("reason")) for c in outcome_status.get("conditions") or []}
    for type_, want in row.conditions.items():
        assert have.get(type_) == want, f"{type_}: {have.get(type_)} != {want}; {outcome_status}"


@pytest.mark.parametrize("row", ROWS)
def test_training_reconcile(row: Row) -> None:
    api = FakeApi()
    body = resource(row.generation, row.status, **row.spec)
    job = None
    if row.job is not None:
        made = api.add(built_job(body, row.job))
        job = indexed(made) if row.job.in_view else None
    for obj in row.existing:
        api.add(obj)
    if row.fail is not None:
        api.fail(*row.fail)
    view = training_reconciler.ObservedTraining(resource=body, job=job, pods=row.pods)

    if row.raises is not None:
        with pytest.raises(row.raises):
            asyncio.run(training_reconciler.reconcile(view, SETTINGS, api))
        assert api.changes == row.writes
        assert set(row.tried) <= set(api.called()), api.called()
        return
    outcome, returned = asyncio.run(training_reconciler.reconcile(view, SETTINGS, api))

    assert api.changes == row.writes
    assert set(row.tried) <= set(api.called()), api.called()
    _check(outcome.status, row)
    assert [reason for _, reason, _ in outcome.events] == row.events, outcome.events
    assert row.requeue(outcome.requeue_after), outcome.requeue_after
    if row.returns_job is not None:
        assert (returned is not None) == row.returns_job
    if row.check is not None:
        assert row.check(outcome.status, api) is not False


def test_the_job_created_is_the_builders() -> None:
    """The fake stores what the reconcile sent: the builder's Job, owned by the resource (not a stub)."""
    api = FakeApi()
    body = resource()
    spec = training_reconciler.validate(body)
    asyncio.run(training_reconciler.reconcile(training_reconciler.ObservedTraining(resource=body), SETTINGS, api))
    stored = api.stored("Job", "tiny-train")
    assert stored is not None
    expected = build_job(body, spec, SETTINGS.image_for(spec.backend), progress_endpoint(SETTINGS))
    assert stored["spec"] == expected["spec"]
    assert [r["uid"] for r in stored["metadata"]["ownerReferences"]] == [UID]
    assert build_worker_service(body, spec) is None
