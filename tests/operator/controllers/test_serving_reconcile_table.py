"""The KerasModelService reconcile, one row per branch, called directly against a fake API (helpers.fake_api).

Each row gives what the watches show (the resource, its Deployments, the KerasTrainingJobs it names), what
exists in the cluster (Services, HPA, HTTPRoute, pods and their /metrics), and which API call fails; and
what the reconcile must do: the changes it makes, the phase, conditions and canary state it reports, the
Events, the requeue. The builders and status functions are the real ones; only the API is fake. No
TensorFlow, no process: part of the fast tier.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest

from helpers.fake_api import FakeApi
from keras_operator.api.wire import CANARY_LABEL
from keras_operator.builders.serving_manifests import (
    DeploymentModel,
    build_deployment,
    build_hpa,
    build_route,
    build_service,
    selector,
    side_service_name,
)
from keras_operator.controllers import serving_reconciler
from keras_operator.runtime import kube
from keras_operator.runtime.settings import Settings
from keras_operator.status.serving_metrics import Totals

UID = "kms-uid"
STABLE = "pvc://models/stable.keras"
CANARY = "pvc://models/canary.keras"
TRAINED = "pvc://models/train/runs/ktj-uid/model.keras"
COMPARING = f"{STABLE} => {CANARY}"
SETTINGS = Settings()
ROUTED = Settings(traffic_split="httproute")


# --- factories ---


def resource(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A KerasModelService named digits as its index holds it; `spec` is its spec (model: STABLE by default)."""
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits", "namespace": "default", "uid": UID, "generation": generation},
        "spec": {"model": {"uri": STABLE}, **spec},
        "status": copy.deepcopy(status or {}),
    }


def ref(name: str = "train") -> dict[str, Any]:
    return {"trainingJobRef": {"name": name}}


def training(phase: str, model_uri: str | None = None, message: str = "") -> dict[str, Any]:
    """A KerasTrainingJob named in spec.model (as kube.get_custom returns it)."""
    status: dict[str, Any] = {"phase": phase, "message": message}
    if model_uri:
        status["modelUri"] = model_uri
    return {"kind": "KerasTrainingJob", "metadata": {"name": "train", "namespace": "default"}, "status": status}


def ready_status(replicas: int) -> dict[str, Any]:
    return {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    }


@dataclass
class Deployment:
    """A Deployment the resource made: the real builder's for `spec` (the resource's own when None)."""

    model: str | DeploymentModel = STABLE
    ready: int = 1
    status: dict[str, Any] | None = None  # instead of ready_status(ready)
    spec: dict[str, Any] | None = None
    canary: bool = False


def built_deployment(body: dict[str, Any], dep: Deployment) -> dict[str, Any]:
    source = resource(**dep.spec) if dep.spec is not None else body
    spec = serving_reconciler.validate(source)
    made = build_deployment(source, spec, dep.model, SETTINGS.image_for(spec.backend))
    made["metadata"].update(uid=f"{made['metadata']['name']}-uid", generation=1)
    made["status"] = copy.deepcopy(dep.status if dep.status is not None else ready_status(dep.ready))
    return made


def service(body: dict[str, Any]) -> dict[str, Any]:
    return build_service(body, serving_reconciler.validate(body))


def hpa_of(max_replicas: int) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
    def made(body: dict[str, Any]) -> dict[str, Any] | None:
        source = resource(autoscaling={"minReplicas": 1, "maxReplicas": max_replicas})
        return build_hpa({**source, "metadata": body["metadata"]}, serving_reconciler.validate(source))

    return made


def route_objects(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The HTTPRoute and per-side Services a canary split by HTTPRoute made."""
    source = resource(canary={"model": {"uri": CANARY}})
    spec = serving_reconciler.validate(source)
    sides = [build_service(source, spec, "stable", side_service_name("digits", c)) for c in (False, True)]
    return [build_route(source, spec, 10, None), *sides]


def not_ours(kind: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "spec": {}}


def pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def requests(count: int, code: str) -> str:
    return (
        "# TYPE keras_server_requests_total counter\n"
        f'keras_server_requests_total{{endpoint="/v1/models/digits:predict",code="{code}"}} {count}\n'
    )


def old_window() -> serving_reconciler.Window:
    """An analysis window opened long enough ago to close now, each pod read at its start."""
    return serving_reconciler.Window(
        COMPARING,
        time.monotonic() - 600,
        {"digits-0": Totals()},
        {"digits-canary-0": Totals()},
        (frozenset(), frozenset()),
    )


PODS = [pod("digits-0", selector("digits")), pod("digits-canary-0", {CANARY_LABEL: "digits"})]
CANARY_FAILS = {"digits-0": requests(400, "200"), "digits-canary-0": requests(100, "500")}
READY = {"phase": "Ready", "modelUri": STABLE, "observedGeneration": 1}
CANARY_SPEC = {"model": {"uri": CANARY}, "trafficPercent": 20, "analysis": {"intervalSeconds": 10}}


def resolved(uri: str, reason: str = "TrainingSucceeded") -> dict[str, Any]:
    """A status that served `uri`, resolved from spec.model."""
    return {
        "phase": "Ready",
        "modelUri": uri,
        "observedGeneration": 1,
        "conditions": [{"type": "ModelResolved", "status": "True", "reason": reason, "observedGeneration": 1}],
    }


def message_of(status: dict[str, Any], type_: str) -> str:
    return next(c.get("message", "") for c in status["conditions"] if c["type"] == type_)


# --- the table ---

Setup = Callable[[dict[str, Any]], "dict[str, Any] | list[dict[str, Any]] | None"]


@dataclass
class Row:
    spec: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    deployment: Deployment | None = None
    canary_deployment: Deployment | None = None
    training_job: dict[str, Any] | None = None
    canary_training_job: dict[str, Any] | None = None
    window: serving_reconciler.Window | None = None
    hpa_absent: bool = True
    existing: list[Setup] = field(default_factory=list)  # objects in the cluster, made from the resource
    metrics: dict[str, str | None] = field(default_factory=dict)
    settings: Settings = SETTINGS
    scrape: bool = False
    fail: tuple[str, BaseException, str | None] | None = None  # (call, error, kind)
    # what must happen
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # FakeApi.changes, exactly
    tried: list[tuple[str, str, str]] = field(default_factory=list)  # calls made (changing nothing)
    not_tried: list[str] = field(default_factory=list)  # calls never made
    phase: str | None = None
    conditions: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (status, reason)
    canary: str | None = None  # status.canary.state
    events: list[str] = field(default_factory=list)  # reasons, in order
    requeue: float | None = None
    raises: type[BaseException] | None = None
    check: Callable[[dict[str, Any], FakeApi, serving_reconciler.ObservedService], object] | None = None


WITH_SERVICE: list[Setup] = [service]
CANARY_DEPLOYMENT = Deployment(model=DeploymentModel(CANARY, canary=True), spec={"canary": CANARY_SPEC})
CREATED = [("created", "Service", "digits"), ("created", "Deployment", "digits")]
PROMOTED_SPEC = {**CANARY_SPEC, "analysis": {"intervalSeconds": 10, "autoPromote": True, "successfulIntervals": 1}}


def stable_args(api: FakeApi) -> list[str]:
    """The model server's arguments in the stable Deployment as stored."""
    return api.stored("Deployment", "digits")["spec"]["template"]["spec"]["containers"][0]["args"]


ROWS = [
    pytest.param(
        Row(
            spec={"model": {}},
            phase="Failed",
            conditions={"Valid": ("False", "InvalidSpec"), "Ready": ("False", "InvalidSpec")},
            events=["Failed"],
            not_tried=["apply", "get_custom", "list_pods"],
        ),
        id="invalid-spec-reported-nothing-made",
    ),
    pytest.param(
        Row(
            hpa_absent=False,
            writes=CREATED,
            tried=[("delete_owned", "HorizontalPodAutoscaler", "digits")],
            phase="Loading",
            conditions={"ModelResolved": ("True", "ModelURI"), "Ready": ("False", "ModelLoading")},
            events=["Created", "Created", "Loading"],
            check=lambda status, api, view: view.hpa_absent and status["modelUri"] == STABLE,
        ),
        id="model-uri-first-reconcile-creates",
    ),
    pytest.param(
        Row(
            status=READY,
            deployment=Deployment(),
            existing=WITH_SERVICE,
            phase="Ready",
            conditions={"Ready": ("True", "Serving"), "Available": ("True", "MinimumReplicasAvailable")},
            not_tried=["delete_owned", "list_pods"],
        ),
        id="model-uri-ready-nothing-changes",
    ),
    pytest.param(
        Row(
            spec={"replicas": 0},
            deployment=Deployment(ready=0, spec={"replicas": 0}),
            existing=WITH_SERVICE,
            phase="Pending",
            conditions={"Ready": ("False", "ScaledToZero")},
        ),
        id="scaled-to-zero",
    ),
    pytest.param(
        Row(
            status=READY,
            deployment=Deployment(
                status={
                    "observedGeneration": 1,
                    "conditions": [
                        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
                    ],
                }
            ),
            existing=WITH_SERVICE,
            phase="Failed",
            conditions={"Ready": ("False", "ProgressDeadlineExceeded")},
            events=["Failed"],
        ),
        id="deployment-progress-deadline-fails",
    ),
    pytest.param(
        Row(
            spec={"replicas": 3},
            status=READY,
            deployment=Deployment(spec={}),
            existing=WITH_SERVICE,
            writes=[("updated", "Deployment", "digits")],
            phase="Loading",  # the new template is not rolled out yet
            events=["Updated", "Loading"],
            check=lambda status, api, view: api.stored("Deployment", "digits")["spec"]["replicas"] == 3,
        ),
        id="spec-edited-updates-the-deployment",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            training_job=training("Succeeded", TRAINED),
            writes=CREATED,
            events=["Created", "Created", "Loading"],
            conditions={"ModelResolved": ("True", "TrainingSucceeded")},
            check=lambda status, api, view: status["modelUri"] == TRAINED,
        ),
        id="model-from-a-finished-training",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            training_job=training("Running", message="epoch 1/2"),
            phase="Pending",
            conditions={"ModelResolved": ("False", "TrainingNotFinished")},
            not_tried=["apply", "delete_owned"],
        ),
        id="training-not-finished-waits",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            phase="Pending",
            conditions={"ModelResolved": ("False", "TrainingJobNotFound")},
            not_tried=["apply"],
        ),
        id="training-not-found-waits",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            training_job=training("Failed", message="out of memory"),
            phase="Failed",
            conditions={"ModelResolved": ("False", "TrainingFailed")},
            events=["Failed"],
            not_tried=["apply"],
        ),
        id="training-failed-fails",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            status=resolved(TRAINED),
            deployment=Deployment(model=TRAINED, spec={"model": ref()}),
            existing=WITH_SERVICE,
            phase="Ready",
            conditions={"ModelResolved": ("True", "TrainingJobDeleted")},
            check=lambda status, api, view: status["modelUri"] == TRAINED,
        ),
        id="training-deleted-its-model-still-served",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            status=resolved(TRAINED),
            training_job=training("Running"),
            deployment=Deployment(model=TRAINED, spec={"model": ref()}),
            existing=WITH_SERVICE,
            phase="Ready",
            conditions={"ModelResolved": ("True", "TrainingSucceeded")},
            check=lambda status, api, view: "(Running now)" in message_of(status, "ModelResolved"),
        ),
        id="training-re-run-last-model-still-served",
    ),
    pytest.param(
        Row(
            spec={"model": ref()},
            status=resolved(TRAINED),
            training_job=training("Running"),
            deployment=Deployment(model=TRAINED, spec={"model": {"uri": TRAINED}}),
            existing=WITH_SERVICE,
            phase="Pending",
            conditions={"ModelResolved": ("False", "TrainingNotFinished")},
            events=["Pending"],
        ),
        id="deployment-of-another-spec-model-not-kept",
    ),
    pytest.param(
        Row(
            spec={"autoscaling": {"minReplicas": 1, "maxReplicas": 4}},
            status=READY,
            deployment=Deployment(spec={}),
            existing=WITH_SERVICE,
            writes=[("updated", "Deployment", "digits"), ("created", "HorizontalPodAutoscaler", "digits")],
            events=["Updated", "Created", "Loading"],
            check=lambda status, api, view: (
                api.stored("HorizontalPodAutoscaler", "digits")["spec"]["maxReplicas"] == 4 and not view.hpa_absent
            ),
        ),
        id="autoscaling-creates-the-hpa",
    ),
    pytest.param(
        Row(
            status=READY,
            deployment=Deployment(),
            existing=[service, hpa_of(4)],
            hpa_absent=False,
            writes=[("deleted", "HorizontalPodAutoscaler", "digits")],
            events=["Deleted"],
            check=lambda status, api, view: view.hpa_absent,
        ),
        id="autoscaling-removed-deletes-the-hpa",
    ),
    pytest.param(
        Row(
            status=READY,
            deployment=Deployment(),
            existing=[service, hpa_of(4)],
            not_tried=["delete_owned"],
        ),
        id="hpa-known-absent-not-asked-for",
    ),
    pytest.param(
        Row(
            fail=("apply", kube.Rejected("deployments is forbidden", 403), "Deployment"),
            writes=[("created", "Service", "digits")],
            phase="Failed",
            conditions={"Valid": ("False", "Forbidden"), "Ready": ("False", "Forbidden")},
            events=["Forbidden"],
        ),
        id="apply-rejected-403-reported",
    ),
    pytest.param(
        Row(
            existing=[lambda body: not_ours("Service", "digits")],
            phase="Failed",
            conditions={"Valid": ("False", "NameConflict")},
            events=["NameConflict"],
            check=lambda status, api, view: api.stored("Service", "digits")["spec"] == {},
        ),
        id="service-name-taken-conflict",
    ),
    pytest.param(
        Row(
            spec={"autoscaling": {"minReplicas": 1, "maxReplicas": 4}},
            status=READY,
            deployment=Deployment(),
            existing=[service, lambda body: not_ours("HorizontalPodAutoscaler", "digits")],
            phase="Failed",
            conditions={"Valid": ("False", "NameConflict"), "Ready": ("False", "NameConflict")},
            events=["NameConflict"],
            tried=[("apply", "HorizontalPodAutoscaler", "digits")],
            check=lambda status, api, view: (
                api.stored("HorizontalPodAutoscaler", "digits")["spec"] == {}
                and "HorizontalPodAutoscaler named digits" in message_of(status, "Valid")
            ),
        ),
        id="hpa-name-taken-conflict",
    ),
    pytest.param(
        Row(
            fail=("apply", kopf.TemporaryError("Kubernetes API error 503", delay=5), "Service"),
            raises=kopf.TemporaryError,
        ),
        id="apply-unavailable-retried",
    ),
    pytest.param(
        Row(
            spec={"canary": CANARY_SPEC},
            status=READY,
            deployment=Deployment(),
            existing=WITH_SERVICE,
            writes=[("created", "Deployment", "digits-canary")],
            canary="Starting",
            events=["Created"],
            check=lambda status, api, view: view.canary_deployment is not None,
        ),
        id="canary-uri-creates-the-canary",
    ),
    pytest.param(
        Row(
            spec={"canary": {"model": ref("train2")}},
            status=READY,
            deployment=Deployment(),
            canary_training_job=training("Running"),
            existing=WITH_SERVICE,
            canary="Starting",
            conditions={"CanaryReady": ("False", "Starting")},
            check=lambda status, api, view: "waiting for KerasTrainingJob train2" in status["canary"]["message"],
        ),
        id="canary-training-not-finished-waits",
    ),
    pytest.param(
        Row(
            spec={"canary": CANARY_SPEC},
            status={**READY, "canary": {"state": "Progressing", "comparing": COMPARING}},
            deployment=Deployment(),
            canary_deployment=CANARY_DEPLOYMENT,
            window=old_window(),
            existing=[*WITH_SERVICE, lambda body: PODS],
            metrics=CANARY_FAILS,
            scrape=True,
            canary="RolledBack",
            conditions={"CanaryHealthy": ("False", "ErrorRate")},
            events=["CanaryRolledBack"],
            requeue=0.0,
            not_tried=["apply", "delete_owned"],
        ),
        id="canary-window-fails-rollback-stored-first",
    ),
    pytest.param(
        Row(
            spec={"canary": CANARY_SPEC},
            status={**READY, "canary": {"state": "RolledBack", "comparing": COMPARING}},
            deployment=Deployment(),
            canary_deployment=CANARY_DEPLOYMENT,
            existing=[*WITH_SERVICE, lambda body: built_deployment(body, CANARY_DEPLOYMENT)],
            writes=[("deleted", "Deployment", "digits-canary")],
            canary="RolledBack",
            events=["Deleted"],
        ),
        id="canary-rolled-back-deletes-the-canary",
    ),
    pytest.param(
        Row(
            spec={"canary": PROMOTED_SPEC},
            status={**READY, "canary": {"state": "Promoting", "comparing": COMPARING}},
            deployment=Deployment(model=CANARY, spec={"canary": PROMOTED_SPEC}),
            canary_deployment=CANARY_DEPLOYMENT,
            existing=[*WITH_SERVICE, lambda body: built_deployment(body, CANARY_DEPLOYMENT)],
            writes=[("deleted", "Deployment", "digits-canary")],
            canary="Promoted",
            conditions={"CanaryHealthy": ("True", "Promoted"), "Ready": ("True", "Serving")},
            events=["Deleted", "CanaryPromoted"],
            check=lambda status, api, view: (
                status["modelUri"] == CANARY
                and "promoted" in message_of(status, "ModelResolved")
                and view.canary_deployment is None
            ),
        ),
        id="canary-promoting-stable-rolled-out-promoted",
    ),
    pytest.param(
        Row(
            spec={"canary": PROMOTED_SPEC},
            status={**READY, "canary": {"state": "Promoting", "comparing": COMPARING}},
            deployment=Deployment(spec={"canary": PROMOTED_SPEC}),
            canary_deployment=CANARY_DEPLOYMENT,
            existing=[*WITH_SERVICE, lambda body: built_deployment(body, CANARY_DEPLOYMENT)],
            # The Service takes both sides while the stable Deployment rolls to the canary's model.
            writes=[("updated", "Service", "digits"), ("updated", "Deployment", "digits")],
            canary="Promoting",
            phase="Loading",  # the stable Deployment's new template is rolling out
            events=["Updated", "Updated", "Loading"],
            check=lambda status, api, view: (
                stable_args(api)[stable_args(api).index("--model-uri") + 1] == CANARY
                and api.stored("Service", "digits")["spec"]["selector"] != service(resource())["spec"]["selector"]
                and view.canary_deployment is not None
            ),
        ),
        id="canary-promoting-rolls-the-stable-deployment",
    ),
    pytest.param(
        Row(
            status={**READY, "canary": {"state": "Progressing", "comparing": COMPARING}},
            deployment=Deployment(),
            canary_deployment=CANARY_DEPLOYMENT,
            existing=[*WITH_SERVICE, lambda body: built_deployment(body, CANARY_DEPLOYMENT)],
            writes=[("deleted", "Deployment", "digits-canary")],
            events=["Deleted"],
            check=lambda status, api, view: "canary" not in status and view.canary_deployment is None,
        ),
        id="canary-removed-from-spec-deletes-the-canary",
    ),
    pytest.param(
        Row(
            spec={"canary": CANARY_SPEC},
            status=READY,
            deployment=Deployment(),
            existing=WITH_SERVICE,
            settings=ROUTED,
            writes=[
                ("created", "Service", "digits-stable"),
                ("created", "Service", "digits-canary"),
                ("created", "HTTPRoute", "digits"),
                ("created", "Deployment", "digits-canary"),
            ],
            canary="Starting",
            events=["Created", "Created", "Created", "Created"],
            check=lambda status, api, view: status["canary"]["split"] == "HTTPRoute",
        ),
        id="canary-by-httproute-makes-the-route",
    ),
    pytest.param(
        Row(
            status={**READY, "canary": {"state": "Promoted", "split": "HTTPRoute"}},
            deployment=Deployment(),
            existing=[*WITH_SERVICE, route_objects],
            writes=[
                ("deleted", "HTTPRoute", "digits"),
                ("deleted", "Service", "digits-stable"),
                ("deleted", "Service", "digits-canary"),
            ],
            events=["Deleted", "Deleted", "Deleted"],
        ),
        id="httproute-no-longer-needed-removed",
    ),
    pytest.param(
        Row(
            status=READY,
            deployment=Deployment(),
            existing=[*WITH_SERVICE, lambda body: PODS[:1]],
            metrics={"digits-0": requests(40, "200")},
            scrape=True,
            tried=[("pod_proxy_get", "Pod", "digits-0")],
            check=lambda status, api, view: status["metrics"]["requestsTotal"] == 40,
        ),
        id="scrape-fills-status-metrics",
    ),
    pytest.param(
        Row(
            status={**READY, "metrics": {"requests": 7}},
            deployment=Deployment(),
            existing=WITH_SERVICE,
            not_tried=["list_pods"],
            check=lambda status, api, view: status["metrics"] == {"requests": 7},
        ),
        id="no-scrape-keeps-the-last-metrics",
    ),
]


def _check(status: dict[str, Any], row: Row) -> None:
    if row.phase is not None:
        assert status.get("phase") == row.phase, status
    have = {c["type"]: (c["status"], c.get("reason")) for c in status.get("conditions") or []}
    for type_, want in row.conditions.items():
        assert have.get(type_) == want, f"{type_}: {have.get(type_)} != {want}; {status}"
    assert (status.get("canary") or {}).get("state") == row.canary, status.get("canary")


@pytest.mark.parametrize("row", ROWS)
def test_serving_reconcile(row: Row) -> None:
    api = FakeApi()
    body = resource(row.status, **row.spec)
    deployment = api.add(built_deployment(body, row.deployment)) if row.deployment is not None else None
    canary = built_deployment(body, row.canary_deployment) if row.canary_deployment is not None else None
    for setup in row.existing:
        made = setup(body)
        for obj in made if isinstance(made, list) else [made] if made is not None else []:
            api.add(obj)
    api.metrics.update(row.metrics)
    if row.fail is not None:
        api.fail(*row.fail)
    view = serving_reconciler.ObservedService(
        resource=body,
        deployment=deployment,
        training_job=row.training_job,
        canary_deployment=canary,
        canary_training_job=row.canary_training_job,
        window=row.window,
        hpa_absent=row.hpa_absent,
    )

    if row.raises is not None:
        with pytest.raises(row.raises):
            asyncio.run(serving_reconciler.reconcile(view, row.settings, api, scrape=row.scrape))
        assert api.changes == row.writes
        return
    outcome = asyncio.run(serving_reconciler.reconcile(view, row.settings, api, scrape=row.scrape))

    assert api.changes == row.writes
    assert set(row.tried) <= set(api.called()), api.called()
    assert not {c for c, _, _ in api.called()} & set(row.not_tried), api.called()
    _check(outcome.status, row)
    assert [reason for _, reason, _ in outcome.events] == row.events, outcome.events
    assert outcome.requeue_after == row.requeue
    if row.check is not None:
        assert row.check(outcome.status, api, view), outcome.status
