"""What the operator does for a KerasTrainingJob: make sure its Job exists, and report on it.

Called by the thin kopf handlers; talks to the API through `kube`, decides through the pure
builders and `training_status`. Each function returns the status to write and the Events to post.
"""

from __future__ import annotations

from typing import Any

from keras_operator.api.parse import InvalidResource, parse_training_spec
from keras_operator.api.training import KerasTrainingJobSpec
from keras_operator.builders.training import (
    CONFIG_KEY,
    SPEC_HASH_ANNOTATION,
    build_config_map,
    build_job,
    desired_suspend,
    job_name,
    job_spec_hash,
)
from keras_operator.controllers.outcome import Event, Outcome, owned_by, transition_events
from keras_operator.runtime import kube
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions
from keras_operator.status import training as training_status


def _cluster_checks(spec: KerasTrainingJobSpec) -> None:
    """Rules that hold only in a cluster (a local run has sensible defaults for these)."""
    if not spec.output.uri:
        raise InvalidResource("spec.output.uri: required in a cluster, where the pod's own disk is lost when it ends")


def validate(body: dict[str, Any]) -> KerasTrainingJobSpec:
    spec = parse_training_spec(body.get("spec"))
    _cluster_checks(spec)
    return spec


async def reconcile(body: dict[str, Any], settings: Settings) -> Outcome:
    """Create (or adopt) the ConfigMap and Job for the current spec; never a second Job."""
    meta = body["metadata"]
    previous = dict(body.get("status") or {})
    generation = meta.get("generation")
    now = conditions.now_iso()
    try:
        spec = validate(body)
    except InvalidResource as exc:
        if previous.get("jobName"):  # a training already runs: an invalid edit must not touch it
            return _spec_not_applied(previous, generation, now, f"the new spec is invalid: {exc}")
        return Outcome(
            training_status.invalid(str(exc), previous, generation, now), [("Warning", "InvalidSpec", str(exc))]
        )

    namespace, name = meta["namespace"], job_name(meta["name"])
    # Without a jobName in the status no Job was made for this resource yet: create straight away
    # (a leftover from a lost response is adopted on 409), one API call fewer per new resource.
    made = bool(previous.get("jobName"))
    job = await kube.get_job(namespace, name) if made else None
    events: list[tuple[str, str, str]] = []
    created = False
    if job is None:
        if made and previous.get("phase") in training_status.TERMINAL:
            return Outcome(previous)  # finished, and the Job was cleaned up (ttlSecondsAfterFinished): done
        if not made:
            # A spec that failed validation never ran: once fixed, its old failure no longer applies.
            previous["conditions"] = [c for c in previous.get("conditions") or [] if c.get("type") != "Failed"]
            body = {**body, "status": previous}
        try:
            job, events, created = await _create(body, spec, settings)
        except kube.Rejected as exc:
            message = f"spec.podTemplate: the API server rejected the generated object: {exc}"
            return Outcome(
                training_status.invalid(message, previous, generation, now), [("Warning", "InvalidSpec", message)]
            )
    if not owned_by(job, meta.get("uid")):
        message = f"a Job named {name} already exists and belongs to something else; rename this resource"
        return Outcome(
            training_status.invalid(message, previous, generation, now), [("Warning", "NameConflict", message)]
        )

    job, suspend_events = await _apply_suspend(job, spec, previous.get("phase"))
    outcome = await sync(body, job=job, fresh=created)
    outcome.events[:0] = events + suspend_events
    if (job.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != job_spec_hash(spec):
        changed = _spec_not_applied(
            outcome.status,
            generation,
            now,
            "the spec changed after the Job was created; a running training is not changed: "
            "delete and re-apply the resource to train with the new spec",
        )
        outcome.status, outcome.events = changed.status, outcome.events + changed.events
    else:
        outcome.status["conditions"] = conditions.merge(
            outcome.status.get("conditions"),
            [conditions.condition("SpecApplied", True, "JobMatchesSpec", "the Job runs the current spec")],
            generation,
            now,
        )
    return outcome


async def sync(body: dict[str, Any], job: dict[str, Any] | None = None, fresh: bool = False) -> Outcome:
    """Refresh status from the Job, its newest pod and the pod's log (`fresh`: the Job was just
    created, so it has no pod worth a request yet; the next refresh looks)."""
    meta = body["metadata"]
    previous = dict(body.get("status") or {})
    namespace, name = meta["namespace"], job_name(meta["name"])
    if job is None:
        job = await kube.get_job(namespace, name)
    if job is None and previous.get("phase") in training_status.TERMINAL:
        return Outcome(previous)
    pod = await kube.newest_pod(namespace, name) if job is not None and not fresh and _has_pods(job) else None
    log = None
    if pod is not None and (pod.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed"):
        log = await kube.pod_log_tail(namespace, pod["metadata"]["name"])
    spec = body.get("spec") or {}
    epochs = int((spec.get("training") or {}).get("epochs") or 0)
    status = training_status.observe(
        training_status.Observation(job=job, pod=pod, log_tail=log),
        previous,
        meta.get("generation"),
        conditions.now_iso(),
        epochs,
    )
    if tensorboard := training_status.tensorboard_uri(spec):
        status["tensorboardUri"] = tensorboard
    return Outcome(status, transition_events(previous, status))


async def _apply_suspend(
    job: dict[str, Any], spec: KerasTrainingJobSpec, phase: str | None
) -> tuple[dict[str, Any], list[Event]]:
    """Suspend or resume our own Job as spec.runPolicy.suspend says (never a Kueue-owned or finished one)."""
    want = desired_suspend(spec)
    if want is None or phase in training_status.TERMINAL or bool((job.get("spec") or {}).get("suspend")) == want:
        return job, []
    meta = job["metadata"]
    patched = await kube.patch("Job", meta["namespace"], meta["name"], {"spec": {"suspend": want}})
    if want:
        return patched, [("Normal", "Suspended", "suspended the Job (spec.runPolicy.suspend); its pods stop")]
    return patched, [("Normal", "Resumed", "resumed the Job; training continues from the last checkpoint")]


async def _create(
    body: dict[str, Any], spec: KerasTrainingJobSpec, settings: Settings
) -> tuple[dict[str, Any], list[tuple[str, str, str]], bool]:
    desired_cm = build_config_map(body, spec)
    config_map, cm_created = await kube.create_or_adopt(desired_cm)
    if not cm_created and (config_map.get("data") or {}).get(CONFIG_KEY) != desired_cm["data"][CONFIG_KEY]:
        meta = desired_cm["metadata"]
        await kube.patch("ConfigMap", meta["namespace"], meta["name"], {"data": desired_cm["data"]})
    job, created = await kube.create_or_adopt(build_job(body, spec, settings.trainer_image))
    events = [("Normal", "Created", f"created Job {job['metadata']['name']}")] if created else []
    return job, events, created


def _has_pods(job: dict[str, Any]) -> bool:
    """Whether the Job controller has made a pod yet: until then (queued, suspended, just created)
    a refresh needs no pod list, which on a busy cluster is most of its API calls."""
    status = job.get("status") or {}
    return any(status.get(k) for k in ("active", "succeeded", "failed", "terminating", "ready", "conditions"))


def _spec_not_applied(status: dict[str, Any], generation: int | None, now: str, message: str) -> Outcome:
    status = dict(status)
    old = conditions.get(status.get("conditions"), "SpecApplied")
    status["conditions"] = conditions.merge(
        status.get("conditions"),
        [conditions.condition("SpecApplied", False, "ImmutableWhileRunning", message)],
        generation,
        now,
    )
    status["observedGeneration"] = generation
    events = (
        []
        if old and old.get("status") == "False" and old.get("message") == message
        else [("Warning", "SpecChangeIgnored", message)]
    )
    return Outcome(status, events)
