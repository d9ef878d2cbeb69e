"""What the operator does for a KerasModelService: resolve the model, keep Deployment, Service and HPA
as the spec says, and report readiness and serving figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_operator.api.parse import InvalidResource, parse_serving_spec
from keras_operator.api.serving import KerasModelServiceSpec
from keras_operator.builders.common import MANAGED_BY
from keras_operator.builders.serving import (
    HASH_ANNOTATION,
    SELECTOR_LABEL,
    build_deployment,
    build_hpa,
    build_service,
    selector_text,
    url,
)
from keras_operator.controllers.outcome import Event, Outcome, rejection, transition_events
from keras_operator.runtime import kube
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions, serving_metrics
from keras_operator.status import serving as serving_status

# Events that say what the operator did (posted whenever they happen; the others only with a status change).
ACTION_REASONS = frozenset({"Created", "Updated", "Deleted"})
# What the operator watches: the Deployments it made (the label names the KerasModelService).
WATCHED_LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
OWNER_LABEL = SELECTOR_LABEL


@dataclass
class View:
    """What the operator knows of one KerasModelService: the resource and the Deployment it made (from their
    watches), and the KerasTrainingJob its spec.model.trainingJobRef names (None when there is none)."""

    resource: dict[str, Any]
    deployment: dict[str, Any] | None = None
    training_job: dict[str, Any] | None = None


class NameConflict(Exception):
    """An object the operator would create exists already and is not the resource's: never touched."""


def resolve(view: View, spec: KerasModelServiceSpec) -> serving_status.Resolution:
    namespace = view.resource["metadata"]["namespace"]
    if spec.model.uri:
        return serving_status.Resolution(spec.model.uri, "ModelURI", f"serving {spec.model.uri}")
    ref = spec.model.training_job_ref
    assert ref is not None  # the API rule: exactly one of uri, trainingJobRef
    job = view.training_job
    status = (job or {}).get("status") or {}
    phase = status.get("phase") or "Pending"
    if job is not None and phase == "Succeeded" and status.get("modelUri"):
        return serving_status.Resolution(
            status["modelUri"], "TrainingSucceeded", f"serving the model of KerasTrainingJob {ref.name}"
        )
    served = _still_served(view)
    if job is None:
        if served:  # the training's record is gone, its model is not: keep serving it
            return serving_status.Resolution(
                served, "TrainingJobDeleted", f"KerasTrainingJob {ref.name} was deleted; serving its last model"
            )
        return serving_status.Resolution(
            None, "TrainingJobNotFound", f"KerasTrainingJob {ref.name} not found in namespace {namespace}"
        )
    if served:  # a new run of the training (re-applied): its model replaces this one once it succeeds
        return serving_status.Resolution(
            served, "TrainingSucceeded", f"serving the last model of KerasTrainingJob {ref.name} ({phase} now)"
        )
    if phase == "Failed":
        return serving_status.Resolution(
            None,
            "TrainingFailed",
            f"KerasTrainingJob {ref.name} failed: {status.get('message', '')}".strip(),
            failed=True,
        )
    detail = f" ({status['message']})" if status.get("message") else ""
    return serving_status.Resolution(
        None, "TrainingNotFinished", f"waiting for KerasTrainingJob {ref.name} to succeed: {phase}{detail}"
    )


def _still_served(view: View) -> str | None:
    """The model this spec (same generation) resolved to before, while the Deployment still serves it."""
    meta, previous = view.resource["metadata"], view.resource.get("status") or {}
    resolved = conditions.get(previous.get("conditions"), "ModelResolved") or {}
    if (
        view.deployment is not None
        and previous.get("modelUri")
        and resolved.get("status") == "True"
        and resolved.get("observedGeneration", previous.get("observedGeneration")) == meta.get("generation")
    ):
        return str(previous["modelUri"])
    return None


async def reconcile(view: View, settings: Settings, scrape: bool = True) -> Outcome:
    body = view.resource
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    previous = dict(body.get("status") or {})
    generation = meta.get("generation")
    now = conditions.now_iso()
    try:
        spec = parse_serving_spec(body.get("spec"))
    except InvalidResource as exc:
        status = serving_status.invalid(str(exc), previous, generation, now)
        return Outcome(status, transition_events(previous, status) or [("Warning", "InvalidSpec", str(exc))])

    resolution = resolve(view, spec)
    events: list[Event] = []
    deployment = None
    if resolution.model_uri is not None:
        try:
            deployment, events = await _apply(body, spec, resolution.model_uri, settings, view.deployment)
        except kube.Rejected as exc:
            message = rejection(exc, f"the Service, Deployment or HPA {name}")
            status = serving_status.invalid(message, previous, generation, now, reason=exc.reason)
            return Outcome(status, [("Warning", exc.reason, message)])
        except NameConflict as exc:
            status = serving_status.invalid(str(exc), previous, generation, now, reason="NameConflict")
            return Outcome(status, [("Warning", "NameConflict", str(exc))])
    metrics = await _scrape(namespace, name, spec.server.port) if scrape and deployment is not None else None
    status = serving_status.observe(
        resolution=resolution,
        deployment=deployment,
        url=url(body, spec),
        selector=selector_text(name),
        metrics=metrics,
        previous=previous,
        generation=generation,
        now=now,
    )
    return Outcome(status, events + transition_events(previous, status))


def _conflict(obj: dict[str, Any]) -> NameConflict:
    meta = obj["metadata"]
    return NameConflict(
        f"a {obj['kind']} named {meta['name']} already exists in namespace {meta['namespace']} and belongs to "
        "something else; it is left as it is: rename this KerasModelService or remove that object"
    )


async def _apply(
    body: dict[str, Any],
    spec: KerasModelServiceSpec,
    model_uri: str,
    settings: Settings,
    watched: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[Event]]:
    """Service, Deployment and HPA as the spec says, never touching one the resource does not own."""
    uid = body["metadata"].get("uid")
    events: list[Event] = []
    deployment: dict[str, Any] = {}
    wanted = [build_service(body, spec), build_deployment(body, spec, model_uri, settings.image_for(spec.backend))]
    for obj in wanted:
        # The Deployment as its watch shows it (no GET); the Service is read (it is not watched).
        current = watched if obj["kind"] == "Deployment" and watched is not None else None
        result, change = await kube.apply(obj, HASH_ANNOTATION, uid, current)
        if result is None:
            raise _conflict(obj)
        if change:
            events.append(("Normal", change.capitalize(), f"{change} {obj['kind']} {obj['metadata']['name']}"))
        if obj["kind"] == "Deployment":
            deployment = result
    hpa = build_hpa(body, spec)
    meta = body["metadata"]
    if hpa is not None:
        result, change = await kube.apply(hpa, HASH_ANNOTATION, uid)
        if result is None:
            raise _conflict(hpa)
        if change:
            events.append(
                ("Normal", change.capitalize(), f"{change} HorizontalPodAutoscaler {hpa['metadata']['name']}")
            )
    elif await kube.delete_owned("HorizontalPodAutoscaler", meta["namespace"], meta["name"], uid):
        events.append(("Normal", "Deleted", "deleted the HorizontalPodAutoscaler (spec.autoscaling removed)"))
    return deployment, events


async def _scrape(namespace: str, name: str, port: int) -> dict[str, Any] | None:
    pods = await kube.list_pods(namespace, selector_text(name))
    texts = []
    for pod in pods:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        if ready:
            text = await kube.pod_proxy_get(namespace, pod["metadata"]["name"], port, "metrics")
            if text:
                texts.append(text)
    return serving_metrics.summarize(texts) if texts else None
