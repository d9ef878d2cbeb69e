"""KerasTrainingJob status from what can be observed: the Job, its newest pod, the trainer's last report.

Pure functions: the handlers gather the objects, these decide phase, conditions and message.
The same `from_result` gives `kerasop run` the status a cluster would show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_operator.api.jobfile import run_prefix
from keras_operator.api.report import EpochReport, TrainingResult, parse_termination_message
from keras_operator.api.training import TENSORBOARD_DIR
from keras_operator.api.training import TRAINER_CONTAINER as CONTAINER
from keras_operator.status import conditions

TERMINAL = ("Succeeded", "Failed")
# Each phase but Pending has a condition of its own name, True exactly while the status is in that phase:
# a reader may trust either the phase or the conditions and never see them disagree.
PHASE_CONDITIONS = ("Queued", "Running", *TERMINAL)


@dataclass(frozen=True)
class Observation:
    job: dict[str, Any] | None
    pod: dict[str, Any] | None = None
    report: EpochReport | None = None
    """The trainer's latest epoch: pushed to the operator, or read from the pod's log as a fallback."""


def _phase_conditions(
    previous: list[dict[str, Any]] | None, phase: str, reason: str, message: str, stated: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """The phase conditions `stated` leaves out: the phase's own set True, any other one present set False
    (or restated, so that it carries the generation evaluated; its transition time stays)."""
    updates = []
    for type_ in PHASE_CONDITIONS:
        if type_ in stated:
            continue
        old = conditions.get(previous, type_)
        if type_ == phase:
            updates.append(conditions.condition(type_, True, reason, message))
        elif old is not None and old.get("status") == "False":
            updates.append(conditions.condition(type_, False, old.get("reason") or reason, old.get("message", "")))
        elif old is not None:
            updates.append(conditions.condition(type_, False, reason, message))
    return updates


def invalid(
    message: str, previous: dict[str, Any], generation: int | None, now: str, reason: str = "InvalidSpec"
) -> dict[str, Any]:
    """Failed, with `reason` (InvalidSpec, NameConflict, or why the API server refused the Job) on Valid
    and Failed."""
    status = conditions.invalid_status(
        message, previous, generation, now, conditions.condition("Failed", True, reason, message), reason
    )
    status["conditions"] = conditions.merge(
        status["conditions"],
        _phase_conditions(previous.get("conditions"), "Failed", reason, message, stated=("Failed",)),
        generation,
        now,
    )
    return status


def _final_progress(result: TrainingResult, previous: dict[str, Any]) -> dict[str, Any]:
    old = previous.get("progress") or {}
    # The result may say less than the epochs already shown (no result at all, a trainer that restarted
    # without checkpoints): progress shown is never taken back.
    epoch = max(result.epoch, int(old.get("epoch") or 0))
    epochs = result.epochs or int(old.get("epochs") or 0)
    progress = EpochReport(epoch=epoch, epochs=max(epochs, epoch), metrics={}, seconds=0).progress()
    throughput = old.get("samplesPerSecond")
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
    # Running is stated even when it never was True: `kerasop run` shows it for a training it watched run.
    running = conditions.condition("Running", False, result.reason, result.message)
    updates = _phase_conditions(previous.get("conditions"), result.phase, result.reason, result.message, ("Running",))
    status["conditions"] = conditions.merge(
        previous.get("conditions"),
        [conditions.condition("Valid", True, "SpecValid"), running, *updates],
        generation,
        now,
    )
    return {k: v for k, v in status.items() if v is not None}


def tensorboard_uri(output_uri: str | None, enabled: bool, run_id: str | None = None) -> str | None:
    """Where the TensorBoard logs go (spec.output.tensorboard): in the run's own folder of the output
    when `run_id` is given, else directly under `output_uri` (already a run's folder)."""
    if not enabled or not output_uri:
        return None
    base = run_prefix(output_uri, run_id) if run_id else output_uri.rstrip("/")
    return f"{base}/{TENSORBOARD_DIR}"


def observe(
    obs: Observation,
    previous: dict[str, Any],
    generation: int | None,
    now: str,
    epochs: int,
    checkpoints: bool = True,
) -> dict[str, Any]:
    """The full status for the current state of the Job.

    `checkpoints` is spec.output.checkpoints: whether a retried pod resumes the training or starts it over.
    """
    job = obs.job
    if job is None:
        message = "creating the training Job"
        return _status(
            previous,
            generation,
            now,
            ("Pending", "JobNotCreated", message),
            [conditions.condition("Created", False, "JobNotCreated", message)],
        )

    job_status = job.get("status") or {}
    job_conditions = job_status.get("conditions") or []
    name = job["metadata"]["name"]
    created = conditions.condition("Created", True, "JobCreated", f"Job {name} created")
    base: dict[str, Any] = {"jobName": name}
    if job_status.get("startTime"):
        base["startTime"] = job_status["startTime"]

    trainer = _trainer(obs.pod)
    result = parse_termination_message((trainer.get("terminated") or {}).get("message"))
    # Seen again once the pod is gone (or its message unreadable), a finished Job keeps what its result said.
    seen_end = previous.get("jobName") == name and previous.get("phase")
    progress = _progress(obs, previous)
    # A result says nothing of the epochs when the trainer died before writing it: the last report does.
    shown = {**previous, "progress": progress[0], "metrics": progress[1] or None} if progress else previous
    if conditions.is_true(job_conditions, "Complete") or conditions.is_true(job_conditions, "SuccessCriteriaMet"):
        if result is None or result.phase != "Succeeded":
            result = (
                TrainingResult(
                    phase="Succeeded",
                    message=previous.get("message") or "training finished",
                    epochs=epochs,
                    model_uri=previous.get("modelUri"),
                )
                if seen_end == "Succeeded"
                else TrainingResult(phase="Succeeded", message="training finished", epochs=epochs)
            )
        status = from_result(result, shown, generation, now)
        status["conditions"] = conditions.merge(status["conditions"], [created], generation, now)
        return {**base, **status, "completionTime": job_status.get("completionTime") or now}

    failed = conditions.get(job_conditions, "Failed") or conditions.get(job_conditions, "FailureTarget")
    if failed is not None and failed.get("status") == "True":
        if result is None or result.phase != "Failed":
            detail = _raw_termination_message(trainer)
            if detail is None and seen_end == "Failed":
                result = TrainingResult(phase="Failed", reason="TrainingError", message=previous.get("message", ""))
            else:
                detail = detail or failed.get("message") or failed.get("reason", "")
                result = TrainingResult(
                    phase="Failed",
                    reason="TrainingError",
                    message=f"{failed.get('reason', 'Failed')}: {detail}".strip(),
                    epochs=epochs,
                )
        status = from_result(result, shown, generation, now)
        status["conditions"] = conditions.merge(status["conditions"], [created], generation, now)
        return {**base, **status, "completionTime": failed.get("lastTransitionTime") or now}

    if job.get("spec", {}).get("suspend") and not job_status.get("active"):
        queue = (job["metadata"].get("labels") or {}).get("kueue.x-k8s.io/queue-name")
        message = (
            f"waiting for Kueue to admit the Job (queue {queue})"
            if queue
            else "the Job is suspended (spec.runPolicy.suspend)"
        )
        return {**base, **_status(previous, generation, now, ("Queued", "Suspended", message), [created])}

    queued_done = (
        [conditions.condition("Queued", False, "Admitted")]
        if conditions.get(previous.get("conditions"), "Queued")
        else []
    )
    updates = [created, *queued_done]
    pod_phase = (obs.pod or {}).get("status", {}).get("phase")
    failures = job_status.get("failed") or 0
    if pod_phase == "Failed":
        # The Job has not failed: it retries, and until the next pod runs nothing trains.
        detail = _raw_termination_message(trainer) or "no message"
        message = (
            f"pod {obs.pod['metadata']['name']} failed ({detail}); the Job retries it, {_next_attempt(checkpoints)}"
        )
        return {**base, **_status(previous, generation, now, ("Pending", "Retrying", message), updates)}
    if pod_phase not in ("Running", "Succeeded"):
        message = _pending_message(obs.pod, trainer)
        if failures:
            message += f" (attempt {failures + 1}, {_next_attempt(checkpoints)})"
        return {**base, **_status(previous, generation, now, ("Pending", "PodPending", message), updates)}

    message = f"epoch {progress[0]['epoch']}/{progress[0]['epochs']}" if progress else "training started"
    reason = "Training"
    if pod_phase == "Succeeded" or "terminated" in trainer:
        # The trainer is done (a sidecar may still hold the pod up) and the Job has yet to say how it ended:
        # still Running, as Pending would tell of a training yet to start.
        code = (trainer.get("terminated") or {}).get("exitCode", 0)
        message = "training finished" if code == 0 else f"the trainer exited with code {code}"
        message += "; waiting for the Job to end"
        reason = "Finishing"
    elif failures:
        resumed = "resumed from the last checkpoint" if checkpoints else "started over: spec.output.checkpoints is off"
        message += f" (attempt {failures + 1}, {resumed})"
        reason = "Restarted"
    status = _status(previous, generation, now, ("Running", reason, message), updates)
    if progress:
        status["progress"], status["metrics"] = progress
    if obs.report is not None and obs.report.devices:
        status["devices"] = obs.report.devices
    return {**base, **status}


def ended(
    phase: str, reason: str, message: str, previous: dict[str, Any], generation: int | None, now: str
) -> dict[str, Any]:
    """A training that ended without a result of its own (its Job deleted before it finished): what was
    shown (jobName, progress, metrics) stays, with the phase and its conditions."""
    status = _status(previous, generation, now, (phase, reason, message), [])
    status["conditions"] = conditions.merge(
        status["conditions"],
        [conditions.condition("Created", False, reason, message)],
        generation,
        now,
    )
    for kept in ("jobName", "startTime", "modelUri"):
        if previous.get(kept):
            status[kept] = previous[kept]
    status["completionTime"] = now
    return status


def _next_attempt(checkpoints: bool) -> str:
    return "resuming from the last checkpoint" if checkpoints else "starting over: spec.output.checkpoints is off"


def _status(
    previous: dict[str, Any],
    generation: int | None,
    now: str,
    phase: tuple[str, str, str],
    updates: list[dict[str, Any]],
) -> dict[str, Any]:
    """A status in a non-terminal `phase` (name, reason, message)."""
    name, reason, message = phase
    stated = tuple(u["type"] for u in updates)
    status: dict[str, Any] = {"phase": name, "message": message}
    if generation is not None:
        status["observedGeneration"] = generation
    status["conditions"] = conditions.merge(
        previous.get("conditions"),
        [
            conditions.condition("Valid", True, "SpecValid"),
            *updates,
            *_phase_conditions(previous.get("conditions"), name, reason, message, stated),
        ],
        generation,
        now,
    )
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


def _trainer(pod: dict[str, Any] | None) -> dict[str, Any]:
    """The trainer container's state. Found by name: an injected sidecar (istio-proxy, ...) may come first,
    and its message is no result. A pod with a single container has only the trainer to offer."""
    statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
    found = next((cs for cs in statuses if cs.get("name") == CONTAINER), None)
    if found is None and len(statuses) == 1:
        found = statuses[0]
    return (found or {}).get("state") or {}


def _raw_termination_message(trainer: dict[str, Any]) -> str | None:
    text = ((trainer.get("terminated") or {}).get("message") or "").strip()
    return text.splitlines()[-1] if text else None


def _pending_message(pod: dict[str, Any] | None, trainer: dict[str, Any]) -> str:
    if pod is None:
        return "waiting for the Job to start a pod"
    # The trainer's own wait first; a sidecar that cannot start (ImagePullBackOff) holds the pod back too.
    others = [cs.get("state") or {} for cs in pod.get("status", {}).get("containerStatuses") or []]
    waiting = next((s["waiting"] for s in (trainer, *others) if (s.get("waiting") or {}).get("reason")), {})
    if waiting:
        return f"pod {pod['metadata']['name']}: {waiting['reason']} {waiting.get('message', '')}".strip()
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"pod {pod['metadata']['name']} not scheduled: {cond.get('message', cond.get('reason', ''))}"
    return f"pod {pod['metadata']['name']} is starting"
