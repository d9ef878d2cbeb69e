"""KerasTrainingJob status from what can be observed: the Job, its newest pod, the trainer's last report.

Pure functions: the handlers gather the objects, these decide phase, conditions and message.
The same `from_result` gives `kerasop run` the status a cluster would show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_operator.api.report import EpochReport, TrainingResult, parse_termination_message
from keras_operator.api.training import TENSORBOARD_DIR
from keras_operator.status import conditions

TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Observation:
    job: dict[str, Any] | None
    pod: dict[str, Any] | None = None
    report: EpochReport | None = None
    """The trainer's latest epoch: pushed to the operator, or read from the pod's log as a fallback."""


def invalid(message: str, previous: dict[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    return conditions.invalid_status(
        message, previous, generation, now, conditions.condition("Failed", True, "InvalidSpec", message)
    )


def _final_progress(result: TrainingResult, previous: dict[str, Any]) -> dict[str, Any]:
    progress = EpochReport(epoch=result.epoch, epochs=result.epochs, metrics={}, seconds=0).progress()
    throughput = (previous.get("progress") or {}).get("samplesPerSecond")
    if throughput is not None:
        progress["samplesPerSecond"] = throughput  # the last epoch's: still the figure worth knowing
    return progress


def from_result(result: TrainingResult, previous: dict[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    """The status for a finished training, from the trainer's own result."""
    status = {
        "phase": result.phase,
        "observedGeneration": generation,
        "progress": _final_progress(result, previous),
        "metrics": result.metrics if result.metrics is not None else previous.get("metrics"),
        "modelUri": result.model_uri,
        "devices": result.devices or previous.get("devices"),
        "message": result.message,
    }
    if result.phase == "Succeeded":
        updates = [
            conditions.condition("Running", False, "Completed", result.message),
            conditions.condition("Succeeded", True, "Completed", result.message),
        ]
    else:
        updates = [
            conditions.condition("Running", False, result.reason, result.message),
            conditions.condition("Failed", True, result.reason, result.message),
        ]
    status["conditions"] = conditions.merge(
        previous.get("conditions"), [conditions.condition("Valid", True, "SpecValid"), *updates], generation, now
    )
    return {k: v for k, v in status.items() if v is not None}


def tensorboard_uri(output_uri: str | None, enabled: bool) -> str | None:
    """Where the TensorBoard logs go (spec.output.tensorboard), under the output the training writes to."""
    return f"{output_uri.rstrip('/')}/{TENSORBOARD_DIR}" if enabled and output_uri else None


def observe(
    obs: Observation, previous: dict[str, Any], generation: int | None, now: str, epochs: int
) -> dict[str, Any]:
    """The full status for the current state of the Job."""
    job = obs.job
    if job is None:
        message = "creating the training Job"
        return _status(
            previous,
            generation,
            now,
            "Pending",
            message,
            [conditions.condition("Created", False, "JobNotCreated", message)],
        )

    job_status = job.get("status") or {}
    job_conditions = job_status.get("conditions") or []
    created = conditions.condition("Created", True, "JobCreated", f"Job {job['metadata']['name']} created")
    base: dict[str, Any] = {"jobName": job["metadata"]["name"]}
    if job_status.get("startTime"):
        base["startTime"] = job_status["startTime"]

    result = _termination_result(obs.pod)
    if conditions.is_true(job_conditions, "Complete") or conditions.is_true(job_conditions, "SuccessCriteriaMet"):
        result = (
            result
            if result and result.phase == "Succeeded"
            else TrainingResult(phase="Succeeded", message="training finished", epochs=epochs)
        )
        status = from_result(result, previous, generation, now)
        status["conditions"] = conditions.merge(status["conditions"], [created], generation, now)
        return {**base, **status, "completionTime": job_status.get("completionTime") or now}

    failed = conditions.get(job_conditions, "Failed") or conditions.get(job_conditions, "FailureTarget")
    if failed is not None and failed.get("status") == "True":
        if result is None or result.phase != "Failed":
            detail = _raw_termination_message(obs.pod) or failed.get("message") or failed.get("reason", "")
            result = TrainingResult(
                phase="Failed",
                reason="TrainingError",
                message=f"{failed.get('reason', 'Failed')}: {detail}".strip(),
                epochs=epochs,
            )
        progress = _progress(obs, previous)
        if progress and not result.epoch:
            result.epoch = progress[0]["epoch"]
        status = from_result(result, previous, generation, now)
        status["conditions"] = conditions.merge(status["conditions"], [created], generation, now)
        return {**base, **status, "completionTime": failed.get("lastTransitionTime") or now}

    if job.get("spec", {}).get("suspend") and not job_status.get("active"):
        queue = (job["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        message = (
            f"waiting for Kueue to admit the Job (queue {queue})"
            if queue
            else "the Job is suspended (spec.runPolicy.suspend)"
        )
        return {
            **base,
            **_status(
                previous,
                generation,
                now,
                "Queued",
                message,
                [created, conditions.condition("Queued", True, "Suspended", message)],
            ),
        }

    queued_done = (
        [conditions.condition("Queued", False, "Admitted")]
        if conditions.get(previous.get("conditions"), "Queued")
        else []
    )
    pod_phase = (obs.pod or {}).get("status", {}).get("phase")
    if pod_phase != "Running":
        message = _pending_message(obs.pod)
        return {**base, **_status(previous, generation, now, "Pending", message, [created, *queued_done])}

    progress = _progress(obs, previous)
    restarts = job_status.get("failed") or 0
    message = f"epoch {progress[0]['epoch']}/{progress[0]['epochs']}" if progress else "training started"
    reason = "Training"
    if restarts:
        message += f" (attempt {restarts + 1}, resumed from the last checkpoint)"
        reason = "Restarted"
    status = _status(
        previous,
        generation,
        now,
        "Running",
        message,
        [created, *queued_done, conditions.condition("Running", True, reason, message)],
    )
    if progress:
        status["progress"], status["metrics"] = progress
    if obs.report is not None and obs.report.devices:
        status["devices"] = obs.report.devices
    return {**base, **status}


def _status(
    previous: dict[str, Any],
    generation: int | None,
    now: str,
    phase: str,
    message: str,
    updates: list[dict[str, Any]],
) -> dict[str, Any]:
    status = {
        "phase": phase,
        "observedGeneration": generation,
        "message": message,
        "conditions": conditions.merge(
            previous.get("conditions"), [conditions.condition("Valid", True, "SpecValid"), *updates], generation, now
        ),
    }
    for kept in ("progress", "metrics", "devices"):  # no report right now must not erase them
        if previous.get(kept):
            status[kept] = previous[kept]
    return status


def _progress(obs: Observation, previous: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]] | None:
    old = previous.get("progress") or {}
    # A report older than what the status shows (a late retry, a log read after a push) changes nothing.
    if obs.report is not None and obs.report.epoch >= int(old.get("epoch") or 0):
        return obs.report.progress(), obs.report.metrics
    if old:
        return old, previous.get("metrics") or {}
    return None


def _container_state(pod: dict[str, Any] | None) -> dict[str, Any]:
    for cs in (pod or {}).get("status", {}).get("containerStatuses") or []:
        return cs.get("state") or {}
    return {}


def _raw_termination_message(pod: dict[str, Any] | None) -> str | None:
    terminated = _container_state(pod).get("terminated") or {}
    text = (terminated.get("message") or "").strip()
    return text.splitlines()[-1] if text else None


def _termination_result(pod: dict[str, Any] | None) -> TrainingResult | None:
    terminated = _container_state(pod).get("terminated") or {}
    return parse_termination_message(terminated.get("message"))


def _pending_message(pod: dict[str, Any] | None) -> str:
    if pod is None:
        return "waiting for the Job to start a pod"
    waiting = _container_state(pod).get("waiting") or {}
    if waiting.get("reason"):
        return f"pod {pod['metadata']['name']}: {waiting['reason']} {waiting.get('message', '')}".strip()
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"pod {pod['metadata']['name']} not scheduled: {cond.get('message', cond.get('reason', ''))}"
    return f"pod {pod['metadata']['name']} is starting"
