"""What the operator does for a KerasModelService: resolve the model, keep Deployment, Service and HPA
as the spec says, and report readiness and serving figures."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from keras_operator.api.model_service import KerasModelServiceSpec, name_problem
from keras_operator.api.parse import InvalidResource, parse_serving_spec
from keras_operator.api.wire import (
    CANARY_LABEL,
    MODEL_SOURCE_ANNOTATION,
    SERVER_CONTAINER,
    SPEC_HASH_ANNOTATION,
)
from keras_operator.builders.serving_manifests import (
    DeploymentModel,
    build_deployment,
    build_hpa,
    build_route,
    build_service,
    canary_name,
    model_source,
    selector_text,
    side_service_name,
    stable_side,
    url,
)
from keras_operator.controllers import canary_plan
from keras_operator.controllers.canary_plan import CanaryPlan, ready_replicas
from keras_operator.controllers.outcome import check_metadata, rejection, transition_events
from keras_operator.runtime import kube
from keras_operator.runtime.kube import Api
from keras_operator.runtime.settings import Settings
from keras_operator.status import canary as canary_status
from keras_operator.status import conditions, serving_metrics, serving_status
from keras_operator.status.events import Event, Outcome
from keras_operator.status.serving_metrics import Totals

# Events that say what the operator did (posted whenever they happen; the others only with a status change).
ACTION_REASONS = frozenset({"Created", "Updated", "Deleted"})


@dataclass(frozen=True)
class SidePods:
    """One side's pods as a scrape found them."""

    texts: dict[str, str | None]
    """/metrics of each ready pod, by pod name; None when its scrape failed."""
    listed: frozenset[str] = frozenset()
    """Every pod of the side, ready or not."""

    def scraped(self) -> list[str]:
        return [t for t in self.texts.values() if t is not None]

    def totals(self) -> dict[str, Totals | None]:
        return {pod: None if text is None else serving_metrics.totals(text) for pod, text in self.texts.items()}


Scraped = tuple[SidePods, SidePods]  # (stable, canary)


@dataclass
class Window:
    """An analysis window under way: when it began, and each pod's counters then (None: scrape failed)."""

    comparing: str
    started: float  # time.monotonic()
    stable: dict[str, Totals | None]
    canary: dict[str, Totals | None]
    listed: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
    """Every pod of each side then, ready or not."""


@dataclass
class ObservedService:
    """What the operator knows of one KerasModelService: the resource and the Deployments it made (from their
    watches), the KerasTrainingJobs its spec.model and spec.canary.model name (None when none), and the
    canary's analysis window (kept by the caller between reconciles; the reconcile replaces it)."""

    resource: dict[str, Any]
    deployment: dict[str, Any] | None = None
    training_job: dict[str, Any] | None = None
    canary_deployment: dict[str, Any] | None = None
    canary_training_job: dict[str, Any] | None = None
    window: Window | None = None
    hpa_absent: bool = False
    """No HPA of this resource exists: an earlier reconcile removed it or found none, and none was applied
    since (the caller keeps it between reconciles, like `window`; unknown, so False, after a restart). HPAs
    are not watched: without it, every resync of a service without autoscaling GETs its HPA to find none."""


class NameConflict(Exception):
    """An object the operator would create exists already and is not the resource's: never touched."""


def resolve(view: ObservedService, spec: KerasModelServiceSpec) -> serving_status.Resolution:
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
    served = _still_served(view, spec)
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


def _still_served(view: ObservedService, spec: KerasModelServiceSpec) -> str | None:
    """The model this spec.model resolved to before, while the stable Deployment still serves it. Compared by
    the spec.model the Deployment was made for, not by generation: scaling or any other edit keeps it."""
    previous = view.resource.get("status") or {}
    resolved = conditions.get(previous.get("conditions"), "ModelResolved") or {}
    served = previous.get("modelUri")
    if view.deployment is None or not served or resolved.get("status") != "True":
        return None
    if _server_arg(view.deployment, "--model-uri") != served:
        return None
    source = (view.deployment["metadata"].get("annotations") or {}).get(MODEL_SOURCE_ANNOTATION)
    if source is None:  # a Deployment made before the annotation: only the same generation tells
        seen = resolved.get("observedGeneration", previous.get("observedGeneration"))
        return str(served) if seen == view.resource["metadata"].get("generation") else None
    return str(served) if source == model_source(spec) else None


def _describe(side: DeploymentModel) -> str:
    return side.model_uri + (f" ({side.versions})" if side.versions else "")


def resolve_canary(view: ObservedService, spec: KerasModelServiceSpec) -> tuple[DeploymentModel | None, str]:
    """The canary's model, or why there is none yet."""
    assert spec.canary is not None
    model = spec.canary.model
    if model.uri:
        return DeploymentModel(model.uri, canary=True), model.uri
    if model.version is not None:
        assert spec.model.uri is not None  # an API rule: a version needs a base folder
        return DeploymentModel(spec.model.uri, f"specific:{model.version}", canary=True), f"version {model.version}"
    assert model.training_job_ref is not None
    ref = model.training_job_ref.name
    status = (view.canary_training_job or {}).get("status") or {}
    if status.get("phase") == "Succeeded" and status.get("modelUri"):
        return DeploymentModel(str(status["modelUri"]), canary=True), str(status["modelUri"])
    return None, f"waiting for KerasTrainingJob {ref} to succeed"


def _rolled_out(deployment: dict[str, Any] | None, replicas: int) -> bool:
    """Every pod of the Deployment runs its current template and is ready (no old pod is left)."""
    if deployment is None:
        return False
    status = deployment.get("status") or {}
    updated = int(status.get("updatedReplicas") or 0)
    return (
        int(status.get("observedGeneration") or 0) >= int(deployment["metadata"].get("generation") or 0)
        and updated >= replicas
        and int(status.get("replicas") or 0) == updated
        and int(status.get("readyReplicas") or 0) >= replicas
    )


def _stable_replicas(spec: KerasModelServiceSpec, deployment: dict[str, Any] | None) -> int:
    if spec.autoscaling is None:
        return spec.replicas
    return int(((deployment or {}).get("spec") or {}).get("replicas") or spec.autoscaling.min_replicas)


def _applies_replicas(deployment: dict[str, Any]) -> bool:
    """Whether the operator's applies own the Deployment's spec.replicas (no one else has set it since)."""
    return any(
        entry.get("manager") == kube.FIELD_MANAGER
        and entry.get("operation") == "Apply"
        and "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {})
        for entry in deployment["metadata"].get("managedFields") or []
    )


def handover_replicas(spec: KerasModelServiceSpec, deployment: dict[str, Any] | None) -> int | None:
    """The stable Deployment's count to apply while autoscaling takes it over, None to leave it out.

    An apply that leaves out a field its manager alone owned removes it, and the API server defaults it to 1
    until the HPA first acts. So while the operator's applies still own `replicas`, they keep the current
    count (at least minReplicas); once the HPA (or anyone) has set it, it is theirs and left out."""
    if spec.autoscaling is None or deployment is None or not _applies_replicas(deployment):
        return None
    current = int((deployment.get("spec") or {}).get("replicas") or 0)
    return max(current, spec.autoscaling.min_replicas)


def _window_verdict(
    view: ObservedService, comparing: str, spec: KerasModelServiceSpec, pods: Scraped
) -> tuple[canary_status.Verdict | None, tuple[Totals, Totals] | None]:
    """Close the analysis window when its time is up (and open the next); the verdict of the one closed."""
    assert spec.canary is not None
    now = (pods[0].totals(), pods[1].totals())
    listed = (pods[0].listed, pods[1].listed)
    window, started = view.window, time.monotonic()
    if window is None or window.comparing != comparing:
        view.window = Window(comparing, started, now[0], now[1], listed)
        return None, None
    if started - window.started < spec.canary.analysis.interval_seconds:
        return None, None
    stable, stable_missing = serving_metrics.window_totals(window.stable, window.listed[0], now[0])
    canary, canary_missing = serving_metrics.window_totals(window.canary, window.listed[1], now[1])
    view.window = Window(comparing, started, now[0], now[1], listed)
    verdict = canary_status.judge(stable, canary, spec.canary.analysis, [*stable_missing, *canary_missing])
    return verdict, (stable, canary)


def _plan_canary(
    view: ObservedService,
    spec: KerasModelServiceSpec,
    stable: DeploymentModel,
    settings: Settings,
    pods: Scraped | None,
) -> CanaryPlan | None:
    """The facts the canary's plan needs (its model, readiness, a closed window's verdict), then the plan."""
    if spec.canary is None:
        view.window = None
        return None
    previous = view.resource.get("status") or {}
    canary_model, description = resolve_canary(view, spec)
    comparing = f"{_describe(stable)} => {_describe(canary_model) if canary_model else description}"
    canary_ready = canary_model is not None and ready_replicas(view.canary_deployment) >= 1
    stable_on_canary = (
        canary_model is not None
        and _serves(view.deployment, canary_model)
        and _rolled_out(view.deployment, _stable_replicas(spec, view.deployment))
    )
    verdict, windows = None, None
    if pods is not None and canary_ready and canary_plan.undecided(previous, comparing):
        verdict, windows = _window_verdict(view, comparing, spec, pods)
    plan = canary_plan.plan(
        spec=spec,
        previous=previous,
        split=canary_plan.traffic_split(settings.traffic_split),
        canary_model=canary_model,
        comparing=comparing,
        waiting=description,
        canary_ready=canary_ready,
        stable_on_canary=stable_on_canary,
        stable_replicas=_stable_replicas(spec, view.deployment),
        verdict=verdict,
        windows=windows,
    )
    if plan.step.state in canary_status.DECIDED:
        view.window = None
    return plan


def _server_arg(deployment: dict[str, Any] | None, flag: str) -> str | None:
    """The value of one of the model server's flags in the Deployment's template."""
    containers = (deployment or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    args = next((c.get("args") or [] for c in containers if c.get("name") == SERVER_CONTAINER), [])
    return str(args[args.index(flag) + 1]) if flag in args[:-1] else None


def _serves(deployment: dict[str, Any] | None, side: DeploymentModel) -> bool:
    """Whether the Deployment's template serves `side`'s model (as the stable side)."""
    return (
        _server_arg(deployment, "--model-uri") == side.model_uri
        and _server_arg(deployment, "--model-versions") == side.versions
    )


def validate(body: dict[str, Any]) -> KerasModelServiceSpec:
    """The spec, or InvalidResource naming the field: what the reconcile and the admission webhook refuse."""
    check_metadata(body["metadata"])
    spec = parse_serving_spec(body.get("spec"))
    if problem := name_problem(body["metadata"]["name"]):
        raise InvalidResource(problem)
    return spec


@dataclass
class Acted:
    """What one reconcile saw and did once the model was resolved, for the status to report."""

    resolution: serving_status.Resolution
    deployment: dict[str, Any] | None = None
    plan: CanaryPlan | None = None
    pods: Scraped | None = None
    events: list[Event] = field(default_factory=list)
    requeue: float | None = None


async def reconcile(view: ObservedService, settings: Settings, api: Api, scrape: bool = True) -> Outcome:
    """Validate, resolve the model, act on the children, report: each a step of its own below."""
    body = view.resource
    previous = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    now = conditions.now_iso()
    try:
        spec = validate(body)
    except InvalidResource as exc:
        status = serving_status.invalid(str(exc), previous, generation, now)
        return Outcome(status, transition_events(previous, status) or [("Warning", "InvalidSpec", str(exc))])
    acted = Acted(resolve(view, spec))
    if acted.resolution.model_uri is not None:
        try:
            acted = await _act(view, spec, acted.resolution, settings, api, scrape)
        except kube.Rejected as exc:
            message = rejection(exc, f"the Services, Deployments, HPA or HTTPRoute of {body['metadata']['name']}")
            status = serving_status.invalid(message, previous, generation, now, reason=exc.reason)
            return Outcome(status, [("Warning", exc.reason, message)])
        except NameConflict as exc:
            status = serving_status.invalid(str(exc), previous, generation, now, reason="NameConflict")
            return Outcome(status, [("Warning", "NameConflict", str(exc))])
    return _report(view, spec, acted, previous, generation, now)


async def _act(
    view: ObservedService,
    spec: KerasModelServiceSpec,
    resolution: serving_status.Resolution,
    settings: Settings,
    api: Api,
    scrape: bool,
) -> Acted:
    """Scrape the pods, plan the canary's step, then make the children say it (or hold a decision just
    made until it is stored)."""
    assert resolution.model_uri is not None
    meta = view.resource["metadata"]
    stable = stable_side(spec, resolution.model_uri)
    pods = None
    if scrape and view.deployment is not None:
        pods = await _scrape(api, meta["namespace"], meta["name"], spec.server.port)
    plan = _plan_canary(view, spec, stable, settings, pods)
    if plan is None:
        deployment, events = await _apply(view.resource, spec, stable, None, settings, view, api)
        return Acted(resolution, deployment, None, pods, events)
    stable = plan.stable_model(stable)
    promoted = " (the canary's model, promoted)" if plan.step.stable_serves_canary else ""
    resolution = serving_status.Resolution(stable.model_uri, resolution.reason, resolution.message + promoted)
    if plan.decided_now:
        # A verdict is stored before it is carried out: acting first, a failed status write would leave a
        # retry with neither the decision nor its window. The next reconcile (requeued once this status is
        # written, or the retry of a write that failed) acts on the stored decision.
        return Acted(resolution, view.deployment, plan, pods, list(plan.step.events), requeue=0.0)
    deployment, events = await _apply(view.resource, spec, stable, plan, settings, view, api)
    return Acted(resolution, deployment, plan, pods, events + list(plan.step.events))


def _report(
    view: ObservedService,
    spec: KerasModelServiceSpec,
    acted: Acted,
    previous: dict[str, Any],
    generation: int | None,
    now: str,
) -> Outcome:
    """The status from what was seen and done (serving figures, the canary's report), and its Events."""
    body = view.resource
    texts = [*acted.pods[0].scraped(), *acted.pods[1].scraped()] if acted.pods is not None else []
    status = serving_status.observe(
        resolution=acted.resolution,
        deployment=acted.deployment,
        url=url(body, spec),
        selector=selector_text(body["metadata"]["name"]),
        metrics=serving_metrics.summarize(texts) if texts else None,
        previous=previous,
        generation=generation,
        now=now,
    )
    plan = acted.plan
    report = _canary_status(plan, acted.deployment, view.canary_deployment, previous) if plan else None
    status = serving_status.with_canary(status, report, generation, now)
    return Outcome(status, acted.events + transition_events(previous, status), acted.requeue)


def _canary_status(
    plan: CanaryPlan, stable: dict[str, Any] | None, canary: dict[str, Any] | None, previous: dict[str, Any]
) -> serving_status.CanaryReport:
    step = plan.step
    before = previous.get("canary") or {}
    stable_share, canary_share = plan.split.shares(plan, stable, canary)
    windows = plan.windows or (None, None)
    stable_uri = _server_arg(stable, "--model-uri")
    report = {
        "state": step.state,
        "split": plan.split.name,
        "stable": canary_status.side(stable_uri, stable, stable_share, windows[0], before.get("stable")),
        "canary": canary_status.side(
            plan.canary_model.model_uri if plan.canary_model else None,
            canary if step.canary_runs else None,
            canary_share,
            windows[1],
            before.get("canary"),
        ),
        "healthyIntervals": step.healthy_intervals,
        "comparing": plan.comparing,
        "message": step.message,
    }
    ready_count = ready_replicas(canary) if step.canary_runs else 0
    ready = conditions.condition(
        "CanaryReady",
        ready_count >= 1,
        "Ready" if ready_count else step.state,
        f"{ready_count} canary pod(s) ready" if ready_count else step.message,
    )
    return serving_status.CanaryReport(report, [ready, step.healthy])


def _conflict(obj: dict[str, Any]) -> NameConflict:
    meta = obj["metadata"]
    return NameConflict(
        f"a {obj['kind']} named {meta['name']} already exists in namespace {meta['namespace']} and belongs to "
        "something else; it is left as it is: rename this KerasModelService or remove that object"
    )


async def _ensure(
    api: Api, obj: dict[str, Any], uid: str | None, current: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[Event]]:
    result, change = await api.apply(obj, SPEC_HASH_ANNOTATION, uid, current)
    if result is None:
        raise _conflict(obj)
    kind, obj_name = obj["kind"], obj["metadata"]["name"]
    return result, [("Normal", change.capitalize(), f"{change} {kind} {obj_name}")] if change else []


async def _remove(api: Api, kind: str, namespace: str, name: str, uid: str | None, why: str) -> list[Event]:
    if await api.delete_owned(kind, namespace, name, uid):
        return [("Normal", "Deleted", f"deleted {kind} {name} ({why})")]
    return []


async def _apply(
    body: dict[str, Any],
    spec: KerasModelServiceSpec,
    stable: DeploymentModel,
    plan: CanaryPlan | None,
    settings: Settings,
    view: ObservedService,
    api: Api,
) -> tuple[dict[str, Any], list[Event]]:
    """Services, Deployments, HPA and HTTPRoute as the spec and the canary's step say, never touching one the
    resource does not own."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    image = settings.image_for(spec.backend)
    events: list[Event] = []
    # The Deployment as its watch shows it (no GET); Services, HPA and route are read (they are not watched).
    _, change = await _ensure(api, build_service(body, spec, plan.service_target if plan else "stable"), uid)
    events += change
    replicas = handover_replicas(spec, view.deployment)
    built = build_deployment(body, spec, stable, image, replicas=replicas)
    deployment, change = await _ensure(api, built, uid, view.deployment)
    events += change
    # The route first: a canary's weight goes to 0 before its pods go (else requests meet a backend without pods).
    if plan is not None and plan.routes_traffic:
        for canary in (False, True):
            service = build_service(body, spec, "canary" if canary else "stable", side_service_name(name, canary))
            events += (await _ensure(api, service, uid))[1]
        events += (await _ensure(api, build_route(body, spec, plan.canary_share, settings.gateway), uid))[1]
    elif ((body.get("status") or {}).get("canary") or {}).get("split") == "HTTPRoute":
        events += await _remove(api, "HTTPRoute", namespace, name, uid, "no canary split by HTTPRoute")
        for canary in (False, True):
            events += await _remove(api, "Service", namespace, side_service_name(name, canary), uid, "no HTTPRoute")
    if plan is not None and plan.canary_runs and plan.canary_model is not None:
        built = build_deployment(body, spec, plan.canary_model, image, replicas=plan.canary_replicas)
        view.canary_deployment, change = await _ensure(api, built, uid, view.canary_deployment)
        events += change
    elif view.canary_deployment is not None:
        events += await _remove(api, "Deployment", namespace, canary_name(name), uid, "the canary is done")
        view.canary_deployment = None
    hpa = build_hpa(body, spec)
    if hpa is not None:
        view.hpa_absent = False  # before the call: a failed apply may still have made it
        events += (await _ensure(api, hpa, uid))[1]
    elif not view.hpa_absent:
        events += await _remove(api, "HorizontalPodAutoscaler", namespace, name, uid, "spec.autoscaling removed")
        view.hpa_absent = True
    return deployment, events


async def _scrape_pods(api: Api, namespace: str, selector: str, port: int) -> SidePods:
    """/metrics of every ready pod the selector picks (None for one whose scrape failed), and every pod."""
    texts: dict[str, str | None] = {}
    pods = await api.list_pods(namespace, selector)
    for pod in pods:
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
        if ready:
            name = pod["metadata"]["name"]
            texts[name] = await api.pod_proxy_get(namespace, name, port, "metrics") or None
    return SidePods(texts, frozenset(p["metadata"]["name"] for p in pods))


async def _scrape(api: Api, namespace: str, name: str, port: int) -> Scraped:
    """/metrics of both sides' ready pods: for status.metrics, and for the canary's analysis."""
    return (
        await _scrape_pods(api, namespace, selector_text(name), port),
        await _scrape_pods(api, namespace, f"{CANARY_LABEL}={name}", port),
    )
