"""What the operator does for a KerasTrainingJob: make sure its Job exists, and report on it.

Called by the thin kopf handlers; talks to the API through the run's `kube.Api` (passed in), decides
through the pure builders and `training_status`. Each function returns the status to write and the Events to post.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from keras_operator.api.common import GROUP
from keras_operator.api.jobfile import run_prefix
from keras_operator.api.parse import InvalidResource, parse_training_spec
from keras_operator.api.report import EpochReport
from keras_operator.api.training_job import KIND, KerasTrainingJobSpec, worker_name_problem
from keras_operator.api.wire import COMPLETION_INDEX_ANNOTATION, SPEC_HASH_ANNOTATION, STARTED_FROM_ANNOTATION
from keras_operator.builders.training_manifests import (
    build_job,
    build_worker_service,
    desired_suspend,
    job_name,
    job_spec_hash,
    progress_endpoint,
    trainer_config_text,
)
from keras_operator.controllers.outcome import check_metadata, owned_by, rejection, transition_events
from keras_operator.runtime import kube
from keras_operator.runtime.kube import Api
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions, training_source, training_status
from keras_operator.status.events import Event, Outcome


def _cluster_checks(spec: KerasTrainingJobSpec) -> None:
    """Rules that hold only in a cluster (a local run has sensible defaults for these)."""
    if not spec.output.uri:
        raise InvalidResource("spec.output.uri: required in a cluster, where the pod's own disk is lost when it ends")


def validate(body: dict[str, Any]) -> KerasTrainingJobSpec:
    check_metadata(body["metadata"])
    spec = parse_training_spec(body.get("spec"))
    problem = worker_name_problem(body["metadata"]["name"], spec)
    if problem:
        raise InvalidResource(problem)
    ref = spec.model.training_job_ref
    if ref is not None and ref.name == body["metadata"]["name"]:
        raise InvalidResource("spec.model.trainingJobRef.name: a training cannot start from its own model")
    _cluster_checks(spec)
    trainer_config_text(body, spec)  # a job file too large for its pod annotation is a spec error
    return spec


@dataclass
class ObservedTraining:
    """What the operator knows of one KerasTrainingJob, all from its watches and the trainer's pushes:
    a reconcile reads no object from the API server, it only writes what must change."""

    resource: dict[str, Any]
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = field(default_factory=list)
    report: EpochReport | None = None
    source: dict[str, Any] | None = None
    """The KerasTrainingJob spec.model.trainingJobRef names, as its watch shows it (None: none, or no ref)."""


# Events that say what the operator did; the others say how the status changed, and are posted
# only when it did (a level-triggered reconcile runs on every event and must not repeat them).
ACTION_REASONS = frozenset({"Created", "Suspended", "Resumed", "Deleted"})


class ParsedSpecs:
    """Per (uid, generation): the spec parsed, with the hash the Job must carry; or why it is invalid.
    Reconciles run on every watch event and every push, the spec changes only with the generation: one
    operator run holds one of these (handlers' Training) and passes it to each reconcile."""

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._found: OrderedDict[tuple[str, int | None], tuple[KerasTrainingJobSpec, str] | InvalidResource] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._found)

    def validated(self, body: dict[str, Any]) -> tuple[KerasTrainingJobSpec, str]:
        """The spec of this generation and its Job hash, worked out once."""
        meta = body["metadata"]
        key = (str(meta.get("uid")), meta.get("generation"))
        found = self._found.get(key)
        if found is None:
            found = _parse(body)
            self._found[key] = found
            if len(self._found) > self.limit:
                self._found.popitem(last=False)
        if isinstance(found, InvalidResource):
            raise found
        return found


def _parse(body: dict[str, Any]) -> tuple[KerasTrainingJobSpec, str] | InvalidResource:
    try:
        spec = validate(body)
    except InvalidResource as exc:
        return exc
    return spec, job_spec_hash(spec)


async def reconcile(
    view: ObservedTraining, settings: Settings, api: Api, specs: ParsedSpecs | None = None
) -> tuple[Outcome, dict[str, Any] | None]:
    """Make sure the Job for the current spec exists (never a second one) and say what the status is.
    -> (outcome, the Job as this reconcile left it)."""
    body = view.resource
    meta = body["metadata"]
    previous = dict(body.get("status") or {})
    generation = meta.get("generation")
    now = conditions.now_iso()
    try:
        spec, spec_hash = (specs or ParsedSpecs(limit=0)).validated(body)
    except InvalidResource as exc:
        if previous.get("jobName"):  # a training already runs: an invalid edit must not touch it
            return _spec_not_applied(previous, generation, now, f"the new spec is invalid: {exc}"), view.job
        return Outcome(
            training_status.invalid(str(exc), previous, generation, now), [("Warning", "InvalidSpec", str(exc))]
        ), None

    name = job_name(meta["name"])
    job = view.job
    events: list[Event] = []
    if job is None:
        if previous.get("jobName") and previous.get("phase") in training_status.TERMINAL:
            return Outcome(previous), None  # finished, and its Job removed after (the TTL, or by hand): done
        if previous.get("jobName"):
            # Its Job is gone before the training finished (deleted by hand, or while the operator was
            # down): reported, never silently retrained over what the first run wrote.
            message = (
                f"the Job {previous['jobName']} was deleted before the training finished; "
                "delete and re-apply the resource to train again"
            )
            status = training_status.ended("Failed", "JobDeleted", message, previous, generation, now)
            return Outcome(status, transition_events(previous, status)), None
        if previous.get("phase") == "Failed" and previous.get("observedGeneration") == generation:
            # Refused at this very spec (the API server's 403/400/422, a name taken): asking again on the
            # next watch event would get the same answer. A new generation (the fix) tries again.
            return Outcome(previous), None
        if not previous.get("jobName"):
            # A spec that failed validation never ran: once fixed, its old failure no longer applies.
            previous["conditions"] = [c for c in previous.get("conditions") or [] if c.get("type") != "Failed"]
            body = {**body, "status": previous}
        start_from = None
        if spec.model.training_job_ref is not None:
            source = training_source.resolve(spec.model.training_job_ref.name, meta["namespace"], view.source)
            if source.uri is None:  # no Job yet: the referenced training's next status change brings a reconcile
                status = training_status.waiting(source.reason, source.message, previous, generation, now)
                status["conditions"] = conditions.merge(status["conditions"], [source.condition()], generation, now)
                return Outcome(status, transition_events(previous, status)), None
            start_from = source.uri
        try:
            job, events = await _create(body, spec, settings, api, start_from)
        except kube.Rejected as exc:
            message = rejection(exc, f"Job {name}")
            return Outcome(
                training_status.invalid(message, previous, generation, now, reason=exc.reason),
                [("Warning", exc.reason, message)],
            ), None
        except NameTaken as exc:
            return _name_conflict(str(exc), previous, generation, now), None
        except PreviousRunLeft as exc:
            # Not a conflict: the resource deleted before this one was re-applied left it, and the garbage
            # collector removes it shortly (its watch event, or this retry, brings the next attempt).
            status = training_status.waiting("WaitingForPreviousRun", str(exc), previous, generation, now)
            return Outcome(status, transition_events(previous, status), requeue_after=PREVIOUS_RUN_RETRY), None
    if not owned_by(job, meta.get("uid")):
        message = f"a Job named {name} already exists and belongs to something else; rename this resource"
        return _name_conflict(message, previous, generation, now), None

    job, suspend_events = await _apply_suspend(job, spec, previous.get("phase"), api)
    status = training_status.observe(
        training_status.Observation(job=job, pod=newest(view.pods), report=view.report, pods=tuple(view.pods)),
        previous,
        generation,
        now,
        spec.training.epochs,
        checkpoints=bool(spec.output.checkpoints),
        workers=spec.distribution.workers,
        model_uri=_model_uri(spec, meta.get("uid")),
    )
    _started_from(status, job, spec, generation, now)
    if tensorboard := training_status.tensorboard_uri(spec.output.uri, spec.output.tensorboard, meta.get("uid")):
        status["tensorboardUri"] = tensorboard
    slow = training_status.slow_checkpoint(previous, status, spec.output.checkpoints.save_seconds)
    outcome = Outcome(status, [*events, *suspend_events, *transition_events(previous, status), *slow])
    ttl = spec.run_policy.ttl_seconds_after_finished
    if ttl is not None and status.get("phase") in training_status.TERMINAL:
        if previous.get("phase") in training_status.TERMINAL:  # the result is in the stored status
            outcome.requeue_after, ttl_events = await _expire(job, status, ttl, api)
            outcome.events += ttl_events
        else:  # written by this reconcile; the Job goes at a later one, never before the result is stored
            outcome.requeue_after = 0.1
    if (job.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION) != spec_hash:
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
    return outcome, job


def _started_from(
    status: dict[str, Any], job: dict[str, Any], spec: KerasTrainingJobSpec, generation: int | None, now: str
) -> None:
    """status.startedFrom and ModelResolved, from the Job: what its trainer was given, whatever the referenced
    training has become since."""
    ref = spec.model.training_job_ref
    started = (job["metadata"].get("annotations") or {}).get(STARTED_FROM_ANNOTATION)
    if ref is None or not started:
        return
    status["startedFrom"] = started
    resolved = training_source.Source(
        started, "TrainingSucceeded", f"started from the model of KerasTrainingJob {ref.name}"
    )
    status["conditions"] = conditions.merge(status.get("conditions"), [resolved.condition()], generation, now)


async def _expire(job: dict[str, Any], status: dict[str, Any], ttl: int, api: Api) -> tuple[float | None, list[Event]]:
    """spec.runPolicy.ttlSecondsAfterFinished, honoured by the operator (not the Job's TTL controller) so the
    result is in the status before the Job goes. -> (seconds until the Job is due, the Events)."""
    finished = conditions.parse_time(status.get("completionTime")) or time.time()
    left = finished + ttl - time.time()
    if left > 0:
        return left, []
    meta = job["metadata"]
    if await api.delete("Job", meta["namespace"], meta["name"]):
        return None, [("Normal", "Deleted", f"deleted Job {meta['name']} ({ttl}s after the training finished)")]
    return None, []


# The handlers' imports, one step: their home is api.wire.


def newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod whose state is the training's: worker 0's (the one that reports; every pod is worker 0 of a
    one-pod Job), its newest after a retry."""
    if not pods:
        return None

    def key(pod: dict[str, Any]) -> tuple[bool, tuple[str, int, str]]:
        index = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
        return index in (None, "0"), training_status.pod_order(pod)

    return max(pods, key=key)


def _model_uri(spec: KerasTrainingJobSpec, uid: str | None) -> str | None:
    """Where this run's trainer saves the model to serve (as the trainer names it in its result)."""
    if not spec.output.uri or not uid:
        return None
    return f"{run_prefix(spec.output.uri, uid)}/{spec.output.model_path()}"


async def _apply_suspend(
    job: dict[str, Any], spec: KerasTrainingJobSpec, phase: str | None, api: Api
) -> tuple[dict[str, Any], list[Event]]:
    """Suspend or resume our own Job as spec.runPolicy.suspend says (never a Kueue-owned or finished one)."""
    want = desired_suspend(spec)
    if want is None or phase in training_status.TERMINAL or bool((job.get("spec") or {}).get("suspend")) == want:
        return job, []
    meta = job["metadata"]
    patched = await api.patch("Job", meta["namespace"], meta["name"], {"spec": {"suspend": want}})
    if want:
        return patched, [("Normal", "Suspended", "suspended the Job (spec.runPolicy.suspend); its pods stop")]
    where = "from the last checkpoint" if spec.output.checkpoints else "from the start (spec.output.checkpoints is off)"
    return patched, [("Normal", "Resumed", f"resumed the Job; training continues {where}")]


class NameTaken(Exception):
    """An object the training needs exists under its name and belongs to something else."""


class PreviousRunLeft(Exception):
    """An object the training needs exists under its name and belongs to the resource of the same name
    deleted before this one: left for the garbage collector, which a resource without finalizer does not
    wait for."""


PREVIOUS_RUN_RETRY = 2.0  # seconds; the Job's deletion event usually brings the retry sooner


def _left_by_previous_run(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Whether `obj` belongs to a KerasTrainingJob of `owner`'s name and namespace but another uid: a resource
    deleted (two cannot exist under one name at once), whose objects are being collected."""
    meta = owner["metadata"]
    return any(
        ref.get("kind") == KIND
        and str(ref.get("apiVersion") or "").split("/")[0] == GROUP
        and ref.get("name") == meta["name"]
        and ref.get("uid") != meta.get("uid")
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def _name_conflict(message: str, previous: dict[str, Any], generation: int | None, now: str) -> Outcome:
    return Outcome(
        training_status.invalid(message, previous, generation, now, reason="NameConflict"),
        [("Warning", "NameConflict", message)],
    )


async def _create(
    body: dict[str, Any], spec: KerasTrainingJobSpec, settings: Settings, api: Api, start_from: str | None = None
) -> tuple[dict[str, Any], list[Event]]:
    events: list[Event] = []
    # Before the Job: its workers find worker 0 through this Service's DNS names as they start.
    service = build_worker_service(body, spec)
    if service is not None:
        applied, change = await api.apply(service, SPEC_HASH_ANNOTATION, body["metadata"].get("uid"))
        service_name = service["metadata"]["name"]
        if applied is None:
            existing = await api.get("Service", service["metadata"]["namespace"], service_name)
            if existing is not None and _left_by_previous_run(existing, body):
                raise PreviousRunLeft(
                    f"waiting for the Service {service_name} of the deleted KerasTrainingJob of the same name "
                    "to be garbage collected"
                )
            raise NameTaken(
                f"a Service named {service_name} already exists and belongs to something else; rename this resource"
            )
        if change == "created":
            events.append(("Normal", "Created", f"created Service {service_name}"))
    job, created = await api.create_or_adopt(
        build_job(body, spec, settings.image_for(spec.backend), progress_endpoint(settings), start_from)
    )
    if not created and not owned_by(job, body["metadata"].get("uid")) and _left_by_previous_run(job, body):
        raise PreviousRunLeft(
            f"waiting for the Job {job['metadata']['name']} of the deleted KerasTrainingJob of the same name "
            "to be garbage collected"
        )
    if created:
        events.append(("Normal", "Created", f"created Job {job['metadata']['name']}"))
    return job, events


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
