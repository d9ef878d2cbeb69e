"""KerasTrainingJob status from what can be observed: the Job, its pods, the trainer's last report.

Pure functions: the handlers gather the objects, these decide phase, conditions and message.
The same `from_result` gives `kerasop run` the status a cluster would show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from keras_operator.api.jobfile import run_prefix
from keras_operator.api.report import (
    CheckpointReport,
    EpochReport,
    ResumeReport,
    TrainingResult,
    parse_termination_message,
)
from keras_operator.api.training_job import TENSORBOARD_DIR, KerasTrainingJobStatus, WorkersStatus
from keras_operator.api.wire import COMPLETION_INDEX_ANNOTATION, KUEUE_QUEUE_LABEL, TRAINER_CONTAINER
from keras_operator.status import conditions
from keras_operator.status.events import Event

TERMINAL = ("Succeeded", "Failed")
# Each phase but Pending has a condition of its own name, True exactly while the status is in that phase:
# a reader may trust either the phase or the conditions and never see them disagree.
PHASE_CONDITIONS = ("Queued", "Running", *TERMINAL)


@dataclass(frozen=True)
class Observation:
    job: dict[str, Any] | None
    pod: dict[str, Any] | None = None
    """Worker 0's newest pod: the one whose state is the training's (it reports and writes the result)."""
    report: EpochReport | None = None
    """The trainer's latest epoch: pushed to the operator, or read from the pod's log as a fallback."""
    pods: Sequence[dict[str, Any]] = ()
    """Every pod of the Job still in the cluster, earlier attempts included: the workers' counts and
    failures come from these. Empty when only `pod` is known (then it stands for all of them)."""


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
        "startedFrom": result.started_from or previous.get("startedFrom"),
        "devices": result.devices or previous.get("devices"),
        "codeHash": result.code_hash,
        **checkpoint_status(result.resumed_from, result.checkpoint, previous),
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
    workers: int = 1,
    model_uri: str | None = None,
) -> dict[str, Any]:
    """The full status for the current state of the Job.

    `checkpoints` is spec.output.checkpoints: whether a retried pod resumes the training or starts it over.
    `workers` is spec.distribution.workers: above 1, the status counts the workers and names a failed one.
    `model_uri` is where this run's trainer saves the model: the status names it when the Job succeeded and
    the trainer's own result is lost (its pod gone before its end was seen), as the trainer exits 0 only
    once the model is saved there.
    """
    status = _observe(obs, previous, generation, now, epochs, checkpoints, workers, model_uri)
    if workers > 1 and obs.job is not None:
        status = status.model_copy(update={"workers": WorkersStatus.model_validate(_workers(obs, previous, workers))})
    return status.model_dump(by_alias=True, exclude_none=True)


def _typed(status: dict[str, Any]) -> KerasTrainingJobStatus:
    """The status as the API's typed model. A metric that is no finite number (NaN, infinity: only a
    hand-made report has one, the trainer drops them) is left out, as JSON and the API server have none."""
    if metrics := status.get("metrics"):
        status = {**status, "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)}}
    return KerasTrainingJobStatus.model_validate(status)


def _observe(
    obs: Observation,
    previous: dict[str, Any],
    generation: int | None,
    now: str,
    epochs: int,
    checkpoints: bool,
    workers: int,
    model_uri: str | None = None,
) -> KerasTrainingJobStatus:
    """The status for the state the Job is in: one small function per state."""
    if obs.job is None:
        return _no_job(previous, generation, now)
    seen = _SeenJob(obs, obs.job, previous, generation, now, epochs, checkpoints, workers, model_uri)
    if seen.completed():
        return _succeeded(seen)
    failed = conditions.get(seen.job_conditions, "Failed") or conditions.get(seen.job_conditions, "FailureTarget")
    if failed is not None and failed.get("status") == "True":
        return _failed(seen, failed)
    if seen.job.get("spec", {}).get("suspend"):
        return _suspended(seen)
    if seen.pod_phase == "Failed":
        return _retrying(seen)
    if seen.pod_phase not in ("Running", "Succeeded"):
        return _pod_pending(seen)
    return _running(seen)


@dataclass(frozen=True)
class _SeenJob:
    """What every state of an existing Job reads: the inputs of `observe`, and what follows from them once
    (the Job's status, worker 0's trainer, its result and the progress)."""

    obs: Observation
    job: dict[str, Any]
    previous: dict[str, Any]
    generation: int | None
    now: str
    epochs: int
    checkpoints: bool
    workers: int
    model_uri: str | None

    @cached_property
    def job_status(self) -> dict[str, Any]:
        return self.job.get("status") or {}

    @cached_property
    def job_conditions(self) -> list[dict[str, Any]]:
        return self.job_status.get("conditions") or []

    @cached_property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    @cached_property
    def created(self) -> dict[str, Any]:
        """The Created condition, True: the Job exists."""
        return conditions.condition("Created", True, "JobCreated", f"Job {self.name} created")

    @cached_property
    def base(self) -> dict[str, Any]:
        """jobName and startTime."""
        base: dict[str, Any] = {"jobName": self.name}
        # The first start stays: resuming a suspended Job resets its startTime (and Kueue clears it on eviction).
        if start := self.previous.get("startTime") if self.previous.get("jobName") == self.name else None:
            base["startTime"] = start
        elif self.job_status.get("startTime"):
            base["startTime"] = self.job_status["startTime"]
        return base

    @cached_property
    def first_failure(self) -> dict[str, Any] | None:
        """Above one worker, the first of them to fail in the latest group failure (the others end because
        of it)."""
        return _first_failure(self.obs.pods) if self.workers > 1 else None

    @cached_property
    def trainer(self) -> dict[str, Any]:
        return _trainer(self.obs.pod)

    @cached_property
    def result(self) -> TrainingResult | None:
        return parse_termination_message((self.trainer.get("terminated") or {}).get("message"))

    @cached_property
    def seen_end(self) -> str | None:
        """The phase this Job was seen to end in before: seen again once the pod is gone (or its message
        unreadable), a finished Job keeps what its result said."""
        return self.previous.get("phase") if self.previous.get("jobName") == self.name else None

    @cached_property
    def progress(self) -> tuple[dict[str, Any], Any] | None:
        return _progress(self.obs, self.previous)

    @cached_property
    def with_progress(self) -> dict[str, Any]:
        """The previous status with the latest progress: a result says nothing of the epochs when the
        trainer died before writing it, the last report does."""
        if not self.progress:
            return self.previous
        return {**self.previous, "progress": self.progress[0], "metrics": self.progress[1] or None}

    @property
    def pod_phase(self) -> str | None:
        return (self.obs.pod or {}).get("status", {}).get("phase")

    def completed(self) -> bool:
        return conditions.is_true(self.job_conditions, "Complete") or conditions.is_true(
            self.job_conditions, "SuccessCriteriaMet"
        )

    def status(
        self, phase: tuple[str, str, str], updates: list[dict[str, Any]], *, progress: bool = False
    ) -> dict[str, Any]:
        """`_status` for this Job, with jobName and startTime; with `progress`, the latest progress and
        metrics."""
        status = {**self.base, **_status(self.previous, self.generation, self.now, phase, updates)}
        if progress and self.progress:
            status["progress"], status["metrics"] = self.progress
        return status

    def ended(self, result: TrainingResult, completion_time: str) -> KerasTrainingJobStatus:
        """The status of a finished Job, from its result."""
        status = from_result(result, self.with_progress, self.generation, self.now)
        status["conditions"] = conditions.merge(status["conditions"], [self.created], self.generation, self.now)
        return _typed({**self.base, **status, "completionTime": completion_time})

    def running_updates(self) -> list[dict[str, Any]]:
        """Created, and Queued set False once the Job was admitted."""
        queued = conditions.get(self.previous.get("conditions"), "Queued")
        return [self.created, *([conditions.condition("Queued", False, "Admitted")] if queued else [])]


def _no_job(previous: dict[str, Any], generation: int | None, now: str) -> KerasTrainingJobStatus:
    message = "creating the training Job"
    created = conditions.condition("Created", False, "JobNotCreated", message)
    return _typed(_status(previous, generation, now, ("Pending", "JobNotCreated", message), [created]))


def _succeeded(seen: _SeenJob) -> KerasTrainingJobStatus:
    stale = seen.pod_phase in ("Pending", "Running") and "terminated" not in seen.trainer  # a sidecar may hold it up
    if seen.result is None and seen.seen_end != "Succeeded" and stale:
        # Two watches: the Job's Complete came before the pod's end, which carries the trainer's result
        # (modelUri, metrics). The pod's own event follows; a Succeeded written now would lack them.
        waiting = ("Running", "Finishing", "training finished; reading the trainer's result")
        return _typed(seen.status(waiting, [seen.created], progress=True))
    result = seen.result
    if result is None or result.phase != "Succeeded":
        result = (
            TrainingResult(
                phase="Succeeded",
                message=seen.previous.get("message") or "training finished",
                epochs=seen.epochs,
                model_uri=seen.previous.get("modelUri") or seen.model_uri,
            )
            if seen.seen_end == "Succeeded"
            else TrainingResult(
                phase="Succeeded", message="training finished", epochs=seen.epochs, model_uri=seen.model_uri
            )
        )
    return seen.ended(result, seen.job_status.get("completionTime") or seen.now)


def _failed(seen: _SeenJob, failed: dict[str, Any]) -> KerasTrainingJobStatus:
    result = seen.result
    if result is None or result.phase != "Failed":
        detail = _raw_termination_message(seen.trainer)
        if detail is None and seen.seen_end == "Failed":
            result = TrainingResult(phase="Failed", reason="TrainingError", message=seen.previous.get("message", ""))
        else:
            detail = detail or failed.get("message") or failed.get("reason", "")
            result = TrainingResult(
                phase="Failed",
                reason="TrainingError",
                message=f"{failed.get('reason', 'Failed')}: {detail}".strip(),
                epochs=seen.epochs,
            )
    first = seen.first_failure
    if first is not None and first["index"] != 0 and first["pod"] not in result.message:
        # Worker 0's word is the result, but the cause may be another worker's (JAX ends the rest).
        result = result.model_copy(update={"message": f"{result.message}; first to fail: {_failure_text(first)}"})
    return seen.ended(result, failed.get("lastTransitionTime") or seen.now)


def _suspended(seen: _SeenJob) -> KerasTrainingJobStatus:
    # Queued as soon as the Job is suspended, its pods still stopping or not: a pod killed by the suspension
    # is no failure to retry, and nothing trains until the Job is resumed.
    queue = (seen.job["metadata"].get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    reason, message = "Suspended", "the Job is suspended (spec.runPolicy.suspend)"
    if queue and conditions.get(seen.previous.get("conditions"), "Running") is not None:
        # It ran (Running is stated once it was True) and Kueue suspended it again: an eviction
        # (preemption by a higher priority workload, reclaimed quota, a stopped queue), not a failure.
        reason, message = "Preempted", _preempted_message(queue, seen.progress, seen.checkpoints)
    elif queue:
        message = f"waiting for Kueue to admit the Job (queue {queue})"
    if seen.job_status.get("active"):
        message += "; its pods are stopping"
    return _typed(seen.status(("Queued", reason, message), [seen.created]))


def _retrying(seen: _SeenJob) -> KerasTrainingJobStatus:
    # The Job has not failed: it retries, and until the next pod runs nothing trains.
    then = _next_attempt(seen.checkpoints)
    if seen.first_failure is not None:
        message = f"{_failure_text(seen.first_failure)}; the Job restarts the workers, {then}"
    else:
        detail = _raw_termination_message(seen.trainer) or "no message"
        pod = (seen.obs.pod or {}).get("metadata", {}).get("name")
        message = f"pod {pod} failed ({detail}); the Job retries it, {then}"
    return _typed(seen.status(("Pending", "Retrying", message), seen.running_updates()))


def _pod_pending(seen: _SeenJob) -> KerasTrainingJobStatus:
    message = _pending_message(seen.obs.pod, seen.trainer)
    if failures := seen.job_status.get("failed") or 0:
        message += f" ({_attempt(failures, seen.workers)}, {_next_attempt(seen.checkpoints)})"
    return _typed(seen.status(("Pending", "PodPending", message), seen.running_updates()))


def _running(seen: _SeenJob) -> KerasTrainingJobStatus:
    progress, trainer = seen.progress, seen.trainer
    message = f"epoch {progress[0]['epoch']}/{progress[0]['epochs']}" if progress else "training started"
    reason = "Training"
    if seen.pod_phase == "Succeeded" or "terminated" in trainer:
        # The trainer is done (a sidecar may still hold the pod up) and the Job has yet to say how it ended:
        # still Running, as Pending would tell of a training yet to start.
        code = (trainer.get("terminated") or {}).get("exitCode", 0)
        message = "training finished" if code == 0 else f"the trainer exited with code {code}"
        message += "; waiting for the Job to end"
        reason = "Finishing"
    elif failures := seen.job_status.get("failed") or 0:
        resumed = (
            "resumed from the last checkpoint" if seen.checkpoints else "started over: spec.output.checkpoints is off"
        )
        message += f" ({_attempt(failures, seen.workers)}, {resumed})"
        reason = "Restarted"
    first = seen.first_failure
    if first is not None and _is_current(first, seen.obs.pods) and reason != "Finishing":
        # Worker 0 still runs, but a peer has failed: the group is about to restart (JAX ends the others).
        message += f"; {_failure_text(first)}"
    status = seen.status(("Running", reason, message), seen.running_updates(), progress=True)
    report = seen.obs.report
    if report is not None and report.devices:
        status["devices"] = report.devices
    if report is not None:
        status.update(checkpoint_status(report.resumed_from, report.checkpoint, status))
    return _typed(status)


def checkpoint_status(
    resumed: ResumeReport | None, checkpoint: CheckpointReport | None, previous: dict[str, Any]
) -> dict[str, Any]:
    """status.resumedFrom and status.lastCheckpoint from a trainer's report, the previous ones where it
    says nothing (an attempt that did not resume keeps the last resume shown)."""
    out = {k: previous[k] for k in ("resumedFrom", "lastCheckpoint") if previous.get(k)}
    if resumed is not None:
        out["resumedFrom"] = resumed.dump()
    if checkpoint is not None:
        out["lastCheckpoint"] = checkpoint.dump()
    return out


def slow_checkpoint(previous: dict[str, Any], status: dict[str, Any], save_seconds: int) -> list[Event]:
    """A Warning Event when a checkpoint first took longer than output.checkpoints.saveSeconds: a pod
    preempted then may be killed before its SIGTERM checkpoint is saved (the grace period is
    saveSeconds + 30). The running Job's pods keep their grace period (a Job's template is fixed):
    the user raises saveSeconds for the next training."""
    seconds = (status.get("lastCheckpoint") or {}).get("seconds")
    before = (previous.get("lastCheckpoint") or {}).get("seconds")
    if seconds is None or seconds <= save_seconds or (before is not None and before > save_seconds):
        return []
    return [
        (
            "Warning",
            "CheckpointSlow",
            f"saving a checkpoint took {seconds:g} s, more than spec.output.checkpoints.saveSeconds "
            f"({save_seconds} s): a preempted pod may be killed before its last checkpoint is saved; "
            f"give the next training a saveSeconds of at least {int(seconds) + 1}",
        )
    ]


def waiting(reason: str, message: str, previous: dict[str, Any], generation: int | None, now: str) -> dict[str, Any]:
    """Pending with no Job yet, for `reason` (e.g. WaitingForPreviousRun: the Job of the resource deleted
    before this one, under the same name, is still being collected)."""
    created = conditions.condition("Created", False, reason, message)
    return _status(previous, generation, now, ("Pending", reason, message), [created])


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


def _preempted_message(queue: str, progress: tuple[dict[str, Any], Any] | None, checkpoints: bool) -> str:
    done = f" (epoch {progress[0]['epoch']}/{progress[0]['epochs']} done)" if progress else ""
    then = (
        f"resumes from its last checkpoint{done}"
        if checkpoints
        else f"starts over{done}: spec.output.checkpoints is off"
    )
    return (
        f"evicted by Kueue (preempted, or its quota reclaimed): waiting in queue {queue} to be admitted "
        f"again, then the training {then}"
    )


def _index(pod: dict[str, Any]) -> int:
    """The pod's worker number (the Indexed Job's completion index); a one-pod Job's pod is worker 0."""
    text = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _newest_per_worker(pods: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each worker's current pod: a failed pod stays in the cluster beside the one that replaced it."""
    newest: dict[int, dict[str, Any]] = {}
    for pod in pods:
        index, old = _index(pod), newest.get(_index(pod))
        if old is None or pod_order(pod) > pod_order(old):
            newest[index] = pod
    return newest


def pod_order(pod: dict[str, Any]) -> tuple[str, int, str]:
    """Sorts one worker's pods oldest first. Creation times count whole seconds, so a failed pod and its
    replacement may share one; the Job makes a replacement only once a pod failed or is being deleted, and
    none after a pod succeeded: of two pods created in the same second the later is told by its state, not
    by its (random) name, which only makes the order total."""
    meta, phase = pod["metadata"], (pod.get("status") or {}).get("phase")
    if phase == "Failed":
        rank = 0
    elif meta.get("deletionTimestamp"):
        rank = 1
    elif phase == "Succeeded":
        rank = 3
    else:
        rank = 2
    return meta.get("creationTimestamp") or "", rank, meta.get("name") or ""


def _created(pod: dict[str, Any]) -> tuple[str, str]:
    return pod["metadata"].get("creationTimestamp") or "", pod["metadata"].get("name") or ""


def _finished_at(pod: dict[str, Any]) -> str:
    """When the pod's trainer ended; for a pod failed as a whole (evicted), when its conditions last changed."""
    if finished := (_trainer(pod).get("terminated") or {}).get("finishedAt"):
        return str(finished)
    changed = [c.get("lastTransitionTime") or "" for c in (pod.get("status") or {}).get("conditions") or []]
    return max([*changed, _created(pod)[0]])


def _worker_failure(pod: dict[str, Any]) -> dict[str, Any]:
    """What a failed worker's pod says of its end: the trainer's result or last line, else the pod's own
    reason (Evicted, ...)."""
    terminated = _trainer(pod).get("terminated") or {}
    status = pod.get("status") or {}
    result = parse_termination_message(terminated.get("message"))
    message = (result.message if result is not None else None) or _raw_termination_message(_trainer(pod))
    reason = terminated.get("reason") or status.get("reason") or "Failed"
    if terminated.get("exitCode") is not None:
        reason = f"{reason}, exit code {terminated['exitCode']}"
    return {
        "index": _index(pod),
        "pod": pod["metadata"]["name"],
        "reason": reason,
        "message": message or status.get("message") or "no message",
    }


def _first_failure(pods: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The worker whose failure began the latest group failure, or None when no pod has failed.

    When one worker fails, JAX ends its peers within a heartbeat and the Job replaces each: the peers'
    failures are consequences, their messages say a peer was lost. A failure belongs to the group failure
    that a cause began when its pod was already created when the cause ended; a pod created after that
    belongs to a later group, whose first failure is the next cause."""
    failed = sorted(
        (p for p in pods if (p.get("status") or {}).get("phase") == "Failed"),
        key=lambda p: (_finished_at(p), _created(p)),
    )
    cause: dict[str, Any] | None = None
    for pod in failed:
        if cause is None or _created(pod)[0] >= _finished_at(cause):
            cause = pod
    return _worker_failure(cause) if cause is not None else None


def _is_current(failure: dict[str, Any], pods: Sequence[dict[str, Any]]) -> bool:
    """Whether the failed pod is still its worker's newest (not yet replaced by the Job)."""
    pod = _newest_per_worker(pods).get(failure["index"])
    return pod is not None and pod["metadata"]["name"] == failure["pod"]


def _failure_text(failure: dict[str, Any]) -> str:
    return f"worker {failure['index']} (pod {failure['pod']}) failed ({failure['reason']}): {failure['message']}"


def _workers(obs: Observation, previous: dict[str, Any], total: int) -> dict[str, Any]:
    """status.workers: how many of the `total` workers run their trainer now, and the last failure of one
    (kept once its pods are gone, like the progress)."""
    pods = obs.pods or ([obs.pod] if obs.pod is not None else [])
    ready = sum(
        1
        for pod in _newest_per_worker(pods).values()
        if (pod.get("status") or {}).get("phase") == "Running" and "running" in _trainer(pod)
    )
    workers: dict[str, Any] = {"ready": min(ready, total), "total": total}
    failure = _first_failure(pods) or (previous.get("workers") or {}).get("lastFailure")
    if failure:
        workers["lastFailure"] = failure
    return workers


def _attempt(failures: int, workers: int) -> str:
    """Which try this is. With several workers a group restart fails every worker's pod (JAX ends the
    peers of a lost one), so the Job's failed count says pods, not attempts."""
    if workers <= 1:
        return f"attempt {failures + 1}"
    return f"restarted after {failures} failed worker pod{'s' if failures != 1 else ''}"


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
    for kept in (
        "progress",
        "metrics",
        "devices",
        "resumedFrom",
        "lastCheckpoint",
    ):  # no report right now must not erase them
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
    found = next((cs for cs in statuses if cs.get("name") == TRAINER_CONTAINER), None)
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
