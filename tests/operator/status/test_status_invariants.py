"""Property test: the KerasTrainingJob status never contradicts itself, whatever the Job and pod go through.

Random sequences of observations (Job states, the Job's newest pod with or without sidecars and with
valid, garbage or over-long termination messages, pushed epoch reports going up, resent or late) are
driven through `observe` one after another, each step's status being the next step's `previous`, as the
controller does. The Job part of a sequence follows what Kubernetes allows: once the Job is Complete or
Failed it stays so (the controller stops calling `observe` when it is gone after a terminal phase).

Invariants checked after every step:

1. The phase is one of Pending, Queued, Running, Succeeded, Failed (the CRD's enum).
2. For each of Queued, Running, Succeeded and Failed, the condition of that name is True if and only if
   the phase is that one; Valid is True; Created is True if and only if the Job exists.
3. A terminal phase (Succeeded, Failed) never changes, not even to the other terminal phase.
4. progress.epoch never decreases, and once shown progress stays shown; percent stays within 0..100.
5. observedGeneration is the generation passed, on the status and on every condition.
6. Condition types are unique; every condition has status "True", "False" or "Unknown", a CamelCase
   reason, and a lastTransitionTime that changes exactly when its status changes.
7. With spec.output.checkpoints off, no message (the status's or a condition's) claims a resume.
8. When the Job has succeeded and the trainer container's termination message is its result, the
   status shows that result's modelUri, whichever position the trainer has among the containers; once
   shown, the modelUri stays (the pod may be gone when the operator looks again).
9. No field of the status is null (a null would be written to the API server as such).
10. A suspended Job is Queued, its pods stopping or not; a Kueue-queued one that was Running before
    (its Running condition exists) is Queued with reason Preempted, one that never ran is not.
11. With several workers, status.workers counts them: total is spec.distribution.workers, ready within
    0..total; once a worker failure is shown, one stays shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_operator.api.report import TERMINATION_MESSAGE_LIMIT, EpochReport, TrainingResult
from keras_operator.api.wire import TRAINER_CONTAINER as CONTAINER
from keras_operator.status.training_status import Observation, observe

PHASES = ("Pending", "Queued", "Running", "Succeeded", "Failed")
PHASE_CONDITIONS = ("Queued", "Running", "Succeeded", "Failed")
CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
JOB_NAME = "digits-train"
MODEL_URI = "s3://bucket/digits/model.keras"

# evicted: Kueue suspended the Job again (its pods possibly still stopping).
JOB_STATES = ("absent", "new", "active", "suspended", "queued", "evicted", "retrying", "complete", "failed")
FAILURE_REASONS = ("BackoffLimitExceeded", "PodFailurePolicy", "DeadlineExceeded")
POD_PHASES = (None, "Pending", "Running", "Succeeded", "Failed")
MESSAGES = ("none", "result", "garbage", "too_long")
SIDECARS = ("none", "before", "after")
REPORTS = ("keep", "next", "resend", "late", "lost")


@dataclass(frozen=True)
class Step:
    job: str
    job_final: bool  # Complete / Failed beside SuccessCriteriaMet / FailureTarget, or only the latter
    failure_reason: str
    failed_pods: int
    pod: str | None
    message: str
    sidecar: str
    sidecar_terminated: bool
    report: str
    epoch_jump: int
    generation_bump: bool
    peer: str | None  # worker 1's new pod, with two workers (None: no new pod this step)


steps = st.builds(
    Step,
    job=st.sampled_from(JOB_STATES),
    job_final=st.booleans(),
    failure_reason=st.sampled_from(FAILURE_REASONS),
    failed_pods=st.integers(0, 3),
    pod=st.sampled_from(POD_PHASES),
    message=st.sampled_from(MESSAGES),
    sidecar=st.sampled_from(SIDECARS),
    sidecar_terminated=st.booleans(),
    report=st.sampled_from(REPORTS),
    epoch_jump=st.integers(1, 3),
    generation_bump=st.booleans(),
    peer=st.sampled_from((None, "Pending", "Running", "Failed", "Evicted")),
)


def timestamp(i: int) -> str:
    return f"2026-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z"


def make_job(step: Step, terminal: tuple[str, str] | None, i: int) -> dict[str, Any] | None:
    kind = terminal[0] if terminal else step.job
    if kind == "absent":
        return None
    meta: dict[str, Any] = {"name": JOB_NAME, "labels": {}}
    spec: dict[str, Any] = {"suspend": False}
    status: dict[str, Any] = {}
    if kind != "new":
        status["startTime"] = timestamp(0)
    if kind == "active":
        status["active"] = 1
    elif kind in ("suspended", "queued", "evicted"):
        spec["suspend"] = True
        if kind in ("queued", "evicted"):
            meta["labels"]["kueue.x-k8s.io/queue-name"] = "team-a"
        if kind == "evicted":
            status["active"] = step.failed_pods % 2
            status.pop("startTime")  # Kueue clears it
        status["conditions"] = [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]
    elif kind == "retrying":
        status.update(failed=step.failed_pods + 1, active=step.failed_pods % 2)
    elif kind == "complete":
        types = ("SuccessCriteriaMet", "Complete") if step.job_final else ("SuccessCriteriaMet",)
        status.update(succeeded=1, completionTime=timestamp(i))
        status["conditions"] = [{"type": t, "status": "True", "reason": "CompletionsReached"} for t in types]
    elif kind == "failed":
        types = ("FailureTarget", "Failed") if step.job_final else ("FailureTarget",)
        reason = terminal[1] if terminal else step.failure_reason
        status.update(failed=step.failed_pods + 1)
        status["conditions"] = [
            {"type": t, "status": "True", "reason": reason, "message": f"{reason} happened", "lastTransitionTime": "t"}
            for t in types
        ]
    return {"metadata": meta, "spec": spec, "status": status}


def termination_message(step: Step, exit_code: int, epoch: int, epochs: int) -> str | None:
    if step.message == "none":
        return None
    if step.message == "garbage":
        return "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n"
    result = TrainingResult(
        phase="Succeeded" if exit_code == 0 else "Failed",
        reason="Completed" if exit_code == 0 else "TrainingError",
        message="training finished" if exit_code == 0 else "loss became NaN",
        epoch=epoch,
        epochs=epochs,
        metrics={"loss": 0.1},
        model_uri=MODEL_URI if exit_code == 0 else None,
    )
    if step.message == "result":
        return result.to_termination_message()
    # What the kubelet keeps of a message over its limit: the start of it, no longer JSON.
    return json.dumps({**result.dump(), "message": "x" * 2 * TERMINATION_MESSAGE_LIMIT})[:TERMINATION_MESSAGE_LIMIT]


def make_pod(step: Step, i: int, epoch: int, epochs: int) -> dict[str, Any] | None:
    if step.pod is None:
        return None
    exit_code = 0 if step.pod == "Succeeded" else 137
    if step.pod == "Pending":
        trainer_state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
    elif step.pod == "Running" and not (step.sidecar != "none" and step.sidecar_terminated):
        trainer_state = {"running": {"startedAt": timestamp(i)}}
    else:  # ended; with a sidecar still up the pod itself can still be Running
        message = termination_message(step, exit_code, epoch, epochs)
        trainer_state = {"terminated": {"exitCode": exit_code, **({"message": message} if message else {})}}
    statuses = [{"name": CONTAINER, "state": trainer_state}]
    if step.sidecar != "none":
        state = (
            {"terminated": {"exitCode": 0, "message": "envoy: shutting down"}}
            if step.pod in ("Succeeded", "Failed")
            else {"running": {}}
        )
        sidecar = {"name": "istio-proxy", "state": state}
        statuses = [sidecar, *statuses] if step.sidecar == "before" else [*statuses, sidecar]
    return {
        "metadata": {
            "name": f"{JOB_NAME}-0-{i}",
            "creationTimestamp": timestamp(i),
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "status": {"phase": step.pod, "containerStatuses": statuses, "conditions": []},
    }


def make_peer(step: Step, i: int) -> dict[str, Any] | None:
    """Worker 1's new pod: running, or failed by itself (OOM) or as a whole (evicted, no container state)."""
    if step.peer is None:
        return None
    status: dict[str, Any] = {"phase": "Failed" if step.peer == "Evicted" else step.peer, "conditions": []}
    if step.peer == "Running":
        status["containerStatuses"] = [{"name": CONTAINER, "state": {"running": {}}}]
    elif step.peer == "Failed":
        ended = {"exitCode": 137, "reason": "OOMKilled", "message": "Killed", "finishedAt": timestamp(i)}
        status["containerStatuses"] = [{"name": CONTAINER, "state": {"terminated": ended}}]
    elif step.peer == "Evicted":
        status.update(reason="Evicted", message="The node was low on resource: memory.")
    return {
        "metadata": {
            "name": f"{JOB_NAME}-1-{i}",
            "creationTimestamp": timestamp(i - 1),
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "status": status,
    }


def trainer_result(pod: dict[str, Any] | None) -> TrainingResult | None:
    for cs in (pod or {}).get("status", {}).get("containerStatuses", []):
        if cs["name"] == CONTAINER:
            text = (cs["state"].get("terminated") or {}).get("message")
            try:
                return TrainingResult.model_validate_json(text) if text else None
            except ValueError:
                return None
    return None


def no_nulls(value: Any, path: str = "status") -> None:
    assert value is not None, f"{path} is null"
    if isinstance(value, dict):
        for key, item in value.items():
            no_nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            no_nulls(item, f"{path}[{n}]")


def check(
    status: dict[str, Any],
    previous: dict[str, Any],
    generation: int,
    now: str,
    checkpoints: bool,
    job: dict[str, Any] | None,
    pod: dict[str, Any] | None,
    workers: int,
) -> None:
    phase = status["phase"]
    assert phase in PHASES
    by_type = {c["type"]: c for c in status["conditions"]}
    assert len(by_type) == len(status["conditions"]), "a condition type appears twice"
    for type_ in PHASE_CONDITIONS:
        is_true = by_type.get(type_, {}).get("status") == "True"
        assert is_true == (phase == type_), f"phase {phase} with {type_}={by_type.get(type_, {}).get('status')}"
    assert by_type["Valid"]["status"] == "True"
    assert by_type["Created"]["status"] == ("True" if job is not None else "False")

    if previous.get("phase") in ("Succeeded", "Failed"):
        assert phase == previous["phase"], f"terminal {previous['phase']} became {phase}"

    old_progress, new_progress = previous.get("progress"), status.get("progress")
    if old_progress:
        assert new_progress, "progress disappeared"
        assert new_progress["epoch"] >= old_progress["epoch"], f"epoch {old_progress['epoch']} -> {new_progress}"
    if new_progress and "percent" in new_progress:
        assert 0 <= new_progress["percent"] <= 100

    assert status["observedGeneration"] == generation
    old_conditions = {c["type"]: c for c in previous.get("conditions") or []}
    for c in status["conditions"]:
        assert c["status"] in ("True", "False", "Unknown")
        assert CAMEL_CASE.match(c["reason"]), f"reason {c['reason']!r} of {c['type']}"
        assert c["observedGeneration"] == generation
        old = old_conditions.get(c["type"])
        if old is not None and old["status"] == c["status"]:
            assert c["lastTransitionTime"] == old["lastTransitionTime"], f"{c['type']} moved without a change"
        else:
            assert c["lastTransitionTime"] == now, f"{c['type']} changed status but kept its transition time"

    if not checkpoints:
        for message in [status.get("message", ""), *(c.get("message", "") for c in status["conditions"])]:
            assert "resum" not in message.lower(), f"claims a resume with checkpoints off: {message!r}"

    result = trainer_result(pod)
    if phase == "Succeeded" and result is not None and result.phase == "Succeeded":
        assert status.get("modelUri") == MODEL_URI, "the trainer's result was not read"
    if previous.get("modelUri"):
        assert status.get("modelUri") == previous["modelUri"], "the modelUri shown was lost"

    no_nulls(status)

    if job is not None and job["spec"]["suspend"] and previous.get("phase") not in ("Succeeded", "Failed"):
        assert phase == "Queued", f"a suspended Job shown {phase}"
        ran = any(c["type"] == "Running" for c in previous.get("conditions") or [])
        preempted = ran and "kueue.x-k8s.io/queue-name" in job["metadata"]["labels"]
        assert (by_type["Queued"]["reason"] == "Preempted") == preempted, by_type["Queued"]

    if workers > 1 and job is not None:
        shown = status["workers"]
        assert shown["total"] == workers
        assert 0 <= shown["ready"] <= workers
        if (previous.get("workers") or {}).get("lastFailure"):
            assert shown.get("lastFailure"), "the worker failure shown was lost"
    else:
        assert "workers" not in status


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    sequence=st.lists(steps, min_size=1, max_size=12),
    epochs=st.integers(1, 20),
    checkpoints=st.booleans(),
    workers=st.sampled_from((1, 2)),
)
def test_the_status_never_contradicts_itself(
    sequence: list[Step], epochs: int, checkpoints: bool, workers: int
) -> None:
    previous: dict[str, Any] = {}
    peers: list[dict[str, Any]] = []  # worker 1's pods so far: failed ones stay beside their replacement
    generation, epoch = 1, 0
    report: EpochReport | None = None
    terminal: tuple[str, str] | None = None
    for i, step in enumerate(sequence, start=1):
        generation += step.generation_bump
        now = timestamp(i)
        if step.report == "next" and epoch < epochs:
            epoch = min(epochs, epoch + step.epoch_jump)
            report = EpochReport(epoch=epoch, epochs=epochs, metrics={"loss": 1 / (epoch + 1)}, seconds=2.0)
        elif step.report == "late" and epoch > 1:
            report = EpochReport(epoch=epoch - 1, epochs=epochs, metrics={"loss": 1.0})  # a log read after a push
        elif step.report == "lost":
            report = None  # the operator restarted: pushes it got are gone
        elif step.report == "resend" and report is not None:
            report = report.model_copy()
        job = make_job(step, terminal, i)
        pod = make_pod(step, i, epoch, epochs)
        peer = make_peer(step, i) if workers > 1 else None
        peers += [peer] if peer is not None else []
        pods = tuple(p for p in (pod, *peers) if p is not None)
        status = observe(
            Observation(job, pod, report, pods), previous, generation, now, epochs, checkpoints, workers=workers
        )
        check(status, previous, generation, now, checkpoints, job, pod, workers)
        if terminal is None and step.job in ("complete", "failed"):
            terminal = (step.job, step.failure_reason)
        previous = status
