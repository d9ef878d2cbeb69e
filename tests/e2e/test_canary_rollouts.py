"""Canary rollouts end to end: both sides' servers run as real processes behind the emulated Service or
HTTPRoute, traffic goes through the emulated kube-proxy / mesh, and the operator judges the canary from the
servers' own metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cluster.harness import DEPLOYMENTS, EVENTS, HTTPROUTES, KMS, SERVICES, Cluster, operator
from cluster.traffic import Router
from helpers import models

pytestmark = pytest.mark.e2e

URL = "http://digits.default.svc.cluster.local:8080/v1/models/digits:predict"
ROWS = {"instances": [[0.1, 0.2, 0.3, 0.4]]}


def service(canary: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"uri": "pvc://models/stable/model.keras"},
            "server": {"batching": {"maxBatchSize": 4, "maxLatencyMs": 1}},
            "canary": canary,
            **spec,
        },
    }


def both_sides_ready(cluster: Cluster) -> bool:
    """The canary takes its share and the stable side is Ready (its pod may load after the canary's)."""
    status = (cluster.get(KMS, "digits") or {}).get("status") or {}
    return status.get("phase") == "Ready" and (status.get("canary") or {}).get("state") == "Progressing"


def canary_status(cluster: Cluster) -> dict[str, Any]:
    return ((cluster.get(KMS, "digits") or {}).get("status") or {}).get("canary") or {}


def condition(cluster: Cluster, type_: str) -> dict[str, Any]:
    found = [c for c in ((cluster.get(KMS, "digits") or {}).get("status") or {}).get("conditions") or []]
    return next((c for c in found if c["type"] == type_), {})


def answers(router: Router, count: int) -> list[float]:
    """The value each of `count` requests got back (1.0: the stable model, 2.0: the canary's)."""
    values = []
    for _ in range(count):
        code, body = router.post_json(URL, ROWS)
        assert code == 200, body
        values.append(round(body["predictions"][0][0], 3))
    return values


@pytest.fixture
def pvc_models(cluster: Cluster) -> Path:
    root = cluster.pvc_root / "models"
    models.constant(root / "stable" / "model.keras", 1.0)
    models.constant(root / "better" / "model.keras", 2.0)
    wide = root / "broken" / "model.keras"
    _five_features(wide)
    return root


def _five_features(path: Path) -> None:
    """A model whose signature does not match what clients send (5 features, not 4): every request a 400."""
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)]).save(path)


def test_a_healthy_canary_is_promoted_without_a_failed_request(cluster: Cluster, pvc_models: Path) -> None:
    """Split by pods: one stable and one canary pod behind the Service, so half the requests each; after two
    healthy windows the stable Deployment rolls to the canary's model while a load runs, and the canary goes."""
    router = Router(cluster, seed=1)
    analysis = {"intervalSeconds": 5, "minRequests": 5, "autoPromote": True, "successfulIntervals": 2}
    canary = {"model": {"uri": "pvc://models/better/model.keras"}, "trafficPercent": 50, "analysis": analysis}
    with operator(cluster):
        cluster.create(KMS, service(canary))
        cluster.wait_for(lambda: both_sides_ready(cluster), 180, "both sides ready")
        assert cluster.get(SERVICES, "digits")["spec"]["selector"] == {"kerasoperator.dev/serving": "digits"}
        values = answers(router, 200)
        share = values.count(2.0) / len(values)
        assert 0.35 <= share <= 0.65, share  # one pod of two: about half
        assert set(values) == {1.0, 2.0}
        with router.load(URL, ROWS, clients=3) as load:
            cluster.wait_for(lambda: canary_status(cluster).get("state") == "Promoted", 240, "Promoted")
            cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "digits-canary") is None, 60, "the canary removed")
        assert load.records, "the load sent nothing"
        assert not load.failures, load.failures[:3]
        status = cluster.get(KMS, "digits")["status"]
        assert status["modelUri"] == "pvc://models/better/model.keras"
        assert condition(cluster, "CanaryHealthy")["reason"] == "Promoted"
        assert condition(cluster, "CanaryReady")["status"] == "False"
        # After the canary's pods left, every answer is the promoted model's, from the stable Deployment.
        cluster.wait_for(lambda: set(answers(router, 20)) == {2.0}, 60, "only the promoted model answering")
        assert cluster.get(SERVICES, "digits")["spec"]["selector"] == {"kerasoperator.dev/model-service": "digits"}
        reasons = [e.get("reason") for e in cluster.list(EVENTS)]
        assert "CanaryPromoting" in reasons
        assert "CanaryPromoted" in reasons


def test_a_failing_canary_is_rolled_back_by_the_operator(
    cluster: Cluster, pvc_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Split by an HTTPRoute (the mesh form): 20 % of the requests go to a canary whose model refuses them;
    the first window judged rolls it back, and then every request succeeds."""
    monkeypatch.setenv("KERAS_OPERATOR_TRAFFIC_SPLIT", "httproute")
    router = Router(cluster, seed=2)
    analysis = {"intervalSeconds": 5, "minRequests": 10}
    canary = {"model": {"uri": "pvc://models/broken/model.keras"}, "trafficPercent": 20, "analysis": analysis}
    with operator(cluster):
        cluster.create(KMS, service(canary))
        cluster.wait_for(lambda: both_sides_ready(cluster), 180, "both sides ready")
        route = cluster.get(HTTPROUTES, "digits")
        weights = {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}
        assert weights == {"digits-stable": 80, "digits-canary": 20}
        assert canary_status(cluster)["split"] == "HTTPRoute"
        with router.load(URL, ROWS, clients=3) as load:
            cluster.wait_for(lambda: canary_status(cluster).get("state") == "RolledBack", 120, "RolledBack")
        by_backend = load.by_backend()
        total = sum(by_backend.values())
        assert total >= 50
        assert 0.12 <= by_backend["digits-canary"] / total <= 0.28, by_backend
        assert {r.status for r in load.records if r.backend == "digits-canary"} == {400}
        assert all(r.ok for r in load.records if r.backend == "digits-stable")

        healthy = condition(cluster, "CanaryHealthy")
        assert (healthy["status"], healthy["reason"]) == ("False", "ErrorRate")
        status = canary_status(cluster)
        assert status["canary"]["errorRate"] == 1.0
        assert status["stable"]["errorRate"] == 0.0
        assert "rolled back" in status["message"]
        events = [e for e in cluster.list(EVENTS) if e.get("reason") == "CanaryRolledBack"]
        assert events
        assert events[0]["type"] == "Warning"
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "digits-canary") is None, 60, "the canary removed")
        weights = {b["name"]: b["weight"] for b in cluster.get(HTTPROUTES, "digits")["spec"]["rules"][0]["backendRefs"]}
        assert weights == {"digits-stable": 100, "digits-canary": 0}
        assert set(answers(router, 30)) == {1.0}
        # The decision holds (no second canary Deployment) until the canary's model changes.
        cluster.patch(KMS, "digits", {"spec": {"canary": {"model": {"uri": "pvc://models/better/model.keras"}}}})
        cluster.wait_for(lambda: canary_status(cluster).get("state") == "Progressing", 180, "a new canary Progressing")
        # Removing the canary removes what it needed.
        cluster.patch(KMS, "digits", {"spec": {"canary": None}})
        cluster.wait_for(lambda: cluster.get(HTTPROUTES, "digits") is None, 60, "the route removed")
        cluster.wait_for(lambda: cluster.get(SERVICES, "digits-canary") is None, 60, "the canary's Service removed")
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "digits-canary") is None, 60, "the canary removed")
        cluster.wait_for(lambda: not canary_status(cluster), 30, "status.canary gone")
        assert condition(cluster, "CanaryHealthy") == {}


def test_a_canary_of_a_version_of_the_base_folder(cluster: Cluster) -> None:
    """spec.model a base folder of numbered versions, the stable side pinned to version 1 (versionPolicy and a
    label), the canary version 2: the operator's arguments reach the servers, and each side answers with its
    version."""
    base = cluster.pvc_root / "models" / "digits"
    models.constant(base / "1" / "model.keras", 1.0)
    models.constant(base / "2" / "model.keras", 2.0)
    router = Router(cluster, seed=3)
    spec = {
        "model": {"uri": "pvc://models/digits", "versionPolicy": {"specific": [1]}, "versionLabels": {"stable": 1}},
        "server": {"batching": {"maxBatchSize": 4, "allowedBatchSizes": [2, 4], "maxRowsPerRequest": 8}},
        "canary": {"model": {"version": 2}, "trafficPercent": 50},
    }
    with operator(cluster):
        cluster.create(KMS, {**service({}), "spec": spec})
        cluster.wait_for(lambda: both_sides_ready(cluster), 180, "both sides ready")
        assert set(answers(router, 60)) == {1.0, 2.0}
        status = canary_status(cluster)
        assert status["comparing"] == "pvc://models/digits (specific:1) => pvc://models/digits (specific:2)"
        assert status["canary"]["modelUri"] == "pvc://models/digits"
        stable_url = "http://digits-stable-only.default.svc.cluster.local:8080"
        cluster.create(
            SERVICES,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "digits-stable-only"},
                "spec": {
                    "selector": {"kerasoperator.dev/model-service": "digits"},
                    "ports": [{"port": 8080, "targetPort": "http"}],
                },
            },
        )
        code, body = router.post_json(f"{stable_url}/v1/models/digits/labels/stable:predict", ROWS)
        assert code == 200, body
        assert round(body["predictions"][0][0], 3) == 1.0
        code, body = router.post_json(f"{stable_url}/v1/models/digits/versions/2:predict", ROWS)
        assert code == 404, body  # the stable side serves version 1 only
        code, body = router.post_json(f"{stable_url}/v1/models/digits:predict", {"instances": [[0.0] * 4] * 9})
        assert code == 400, body
        assert "8" in body["error"]
