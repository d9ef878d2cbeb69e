"""What the operator does for a KerasModelService: resolve the model, keep Deployment, Service and HPA
as the spec says, and report readiness and serving figures."""

from __future__ import annotations

from typing import Any

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.parse import InvalidResource, parse_serving_spec
from keras_operator.api.serving import KerasModelServiceSpec
from keras_operator.api.training import PLURAL as TRAINING_PLURAL
from keras_operator.builders.serving import (
    HASH_ANNOTATION,
    build_deployment,
    build_hpa,
    build_service,
    selector_text,
    url,
)
from keras_operator.controllers.outcome import Outcome, transition_events
from keras_operator.runtime import kube
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions, serving_metrics
from keras_operator.status import serving as serving_status


async def resolve(namespace: str, spec: KerasModelServiceSpec) -> serving_status.Resolution:
    if spec.model.uri:
        return serving_status.Resolution(spec.model.uri, "ModelURI", f"serving {spec.model.uri}")
    ref = spec.model.training_job_ref
    assert ref is not None  # the API rule: exactly one of uri, trainingJobRef
    job = await kube.get_custom(GROUP, VERSION, TRAINING_PLURAL, namespace, ref.name)
    if job is None:
        return serving_status.Resolution(
            None, "TrainingJobNotFound", f"KerasTrainingJob {ref.name} not found in namespace {namespace}"
        )
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded" and status.get("modelUri"):
        return serving_status.Resolution(
            status["modelUri"], "TrainingSucceeded", f"serving the model of KerasTrainingJob {ref.name}"
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


async def reconcile(body: dict[str, Any], settings: Settings, scrape: bool = True) -> Outcome:
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

    resolution = await resolve(namespace, spec)
    events: list[tuple[str, str, str]] = []
    deployment = None
    if resolution.model_uri is not None:
        try:
            deployment, events = await _apply(body, spec, resolution.model_uri, settings)
        except kube.Rejected as exc:
            message = f"spec.podTemplate: the API server rejected the generated object: {exc}"
            status = serving_status.invalid(message, previous, generation, now)
            return Outcome(status, [("Warning", "InvalidSpec", message)])
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


async def _apply(
    body: dict[str, Any], spec: KerasModelServiceSpec, model_uri: str, settings: Settings
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    for obj in (build_service(body, spec), build_deployment(body, spec, model_uri, settings.image_for(spec.backend))):
        current, change = await kube.apply(obj, HASH_ANNOTATION)
        if change:
            events.append(("Normal", change.capitalize(), f"{change} {obj['kind']} {obj['metadata']['name']}"))
        if obj["kind"] == "Deployment":
            deployment = current
    hpa = build_hpa(body, spec)
    if hpa is not None:
        _, change = await kube.apply(hpa, HASH_ANNOTATION)
        if change:
            events.append(
                ("Normal", change.capitalize(), f"{change} HorizontalPodAutoscaler {hpa['metadata']['name']}")
            )
    elif await kube.delete("HorizontalPodAutoscaler", body["metadata"]["namespace"], body["metadata"]["name"]):
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
