"""KerasModelService end to end: a training, then its model served by real server processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.harness import DEPLOYMENTS, HPAS, KMS, KTJ, SERVICES, Cluster, operator
from helpers.jobs import tiny_job
from helpers.manifests import validate_k8s
from helpers.server import post_json

pytestmark = pytest.mark.e2e


def service(name: str, model: dict, **spec: object) -> dict:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": name},
        "spec": {"model": model, **spec},
    }


def kms_status(cluster: Cluster, name: str) -> dict:
    obj = cluster.get(KMS, name)
    return (obj or {}).get("status") or {}


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status.get("conditions") or []}


def test_train_then_serve_through_the_service_url(cluster: Cluster) -> None:
    import keras

    with operator(cluster):
        trained = cluster.create(KTJ, tiny_job("digits", output={"uri": "pvc://models/digits"}, training__epochs=2))
        run = f"runs/{trained['metadata']['uid']}"  # each run writes under its resource's uid
        cluster.create(
            KMS,
            service(
                "digits",
                {"trainingJobRef": {"name": "digits"}},
                server={"batching": {"maxBatchSize": 8, "maxLatencyMs": 2}},
            ),
        )
        waiting = cluster.wait_for(
            lambda: (
                conditions(kms_status(cluster, "digits")).get("ModelResolved", {}).get("status") == "False"
                and kms_status(cluster, "digits")
            ),
            30,
            "ModelResolved=False while training",
        )
        assert waiting["phase"] == "Pending"
        assert cluster.get(DEPLOYMENTS, "digits") is None or cluster.ktj("digits")["status"]["phase"] == "Succeeded"
        cluster.wait_for(lambda: kms_status(cluster, "digits").get("phase") == "Ready", 180, "Ready")
        status = kms_status(cluster, "digits")
        assert status["url"] == "http://digits.default.svc.cluster.local:8080"
        assert status["modelUri"] == f"pvc://models/digits/{run}/model.keras"
        assert status["readyReplicas"] == 1
        assert status["selector"] == "kerasoperator.dev/model-service=digits"
        assert conditions(status)["Ready"]["status"] == "True"
        assert conditions(status)["Available"]["status"] == "True"

        x = np.random.default_rng(5).normal(size=(3, 8)).astype("float32")
        code, body = post_json(
            f"{cluster.service_url(status['url'])}/v1/models/digits:predict", {"instances": x.tolist()}
        )
        assert code == 200, body
        model = keras.models.load_model(cluster.pvc_root / "models" / "digits" / run / "model.keras")
        np.testing.assert_allclose(body["predictions"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
        cluster.wait_for(
            lambda: kms_status(cluster, "digits").get("metrics", {}).get("requestsTotal", 0) >= 1,
            30,
            "serving metrics in status",
        )
        metrics = kms_status(cluster, "digits")["metrics"]
        assert metrics["errorsTotal"] == 0
        assert metrics["latencyP99Ms"] >= metrics["latencyP50Ms"] > 0

        for kind, name in ((DEPLOYMENTS, "digits"), (SERVICES, "digits")):
            obj = cluster.get(kind, name)
            assert obj is not None
            validate_k8s(obj)
        deployment = cluster.get(DEPLOYMENTS, "digits")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        reasons = [
            e["reason"] for e in cluster.events_for("digits") if e["involvedObject"]["kind"] == "KerasModelService"
        ]
        assert "Ready" in reasons


def test_autoscaling_spec_changes_and_removal(cluster: Cluster, tmp_path: Path) -> None:
    from helpers import models

    (cluster.pvc_root / "models").mkdir(parents=True)
    models.single(cluster.pvc_root / "models" / "iris.keras")
    spec = service(
        "iris",
        {"uri": "pvc://models/iris.keras"},
        autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 60},
    )
    with operator(cluster):
        cluster.create(KMS, spec)
        cluster.wait_for(lambda: kms_status(cluster, "iris").get("phase") == "Ready", 120, "Ready")
        hpa = cluster.get(HPAS, "iris")
        assert hpa is not None
        validate_k8s(hpa)
        assert hpa["spec"]["maxReplicas"] == 3
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
        # The HPA owns the count: the operator's apply leaves replicas out (the API server defaults it).
        deployment = cluster.get(DEPLOYMENTS, "iris")
        owned = next(e for e in deployment["metadata"]["managedFields"] if e["manager"] == "keras-operator")
        assert "f:replicas" not in owned["fieldsV1"]["f:spec"]

        cluster.patch(KMS, "iris", {"spec": {"autoscaling": {"maxReplicas": 4}}})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris")["spec"]["maxReplicas"] == 4, 30, "the HPA updated")

        # Batching and port changes roll the Deployment and update the Service; dropping autoscaling
        # removes the HPA.
        spec = {"autoscaling": None, "replicas": 1, "server": {"port": 8081, "batching": {"maxBatchSize": 1}}}
        cluster.patch(KMS, "iris", {"spec": spec})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris") is None, 30, "the HPA to go")
        args = cluster.get(DEPLOYMENTS, "iris")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--max-batch-size") + 1] == "1"
        cluster.wait_for(
            lambda: (
                kms_status(cluster, "iris").get("phase") == "Ready"
                and kms_status(cluster, "iris").get("observedGeneration") == 3
            ),
            120,
            "Ready again",
        )
        assert cluster.get(SERVICES, "iris")["spec"]["ports"][0]["port"] == 8081
        assert kms_status(cluster, "iris")["url"] == "http://iris.default.svc.cluster.local:8081"
        url = cluster.service_url(kms_status(cluster, "iris")["url"])
        code, body = post_json(
            f"{url}/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]},
        )
        assert code == 200, body


@pytest.mark.parametrize(
    ("model", "phase", "reason"),
    [
        ({"trainingJobRef": {"name": "nope"}}, "Pending", "TrainingJobNotFound"),
        ({"trainingJobRef": {"name": "broken"}}, "Failed", "TrainingFailed"),
    ],
)
def test_unresolvable_models_are_reported(cluster: Cluster, model: dict, phase: str, reason: str) -> None:
    with operator(cluster):
        cluster.create(KTJ, tiny_job("broken", output={"uri": "pvc://models/broken"}, model__layers=[{"type": "Nope"}]))
        cluster.create(KMS, service("svc", model))
        cluster.wait_for(
            lambda: conditions(kms_status(cluster, "svc")).get("ModelResolved", {}).get("reason") == reason, 90, reason
        )
        status = kms_status(cluster, "svc")
    assert status["phase"] == phase
    assert conditions(status)["Ready"]["status"] == "False"
    assert cluster.get(DEPLOYMENTS, "svc") is None


def test_invalid_service_creates_nothing(cluster: Cluster) -> None:
    with operator(cluster):
        cluster.create(KMS, service("bad", {"uri": "a", "trainingJobRef": {"name": "x"}}))
        cluster.wait_for(lambda: kms_status(cluster, "bad").get("phase") == "Failed", 30, "Failed")
    cond = conditions(kms_status(cluster, "bad"))["Valid"]
    assert cond["reason"] == "InvalidSpec"
    assert "spec.model: exactly one of uri, trainingJobRef" in cond["message"]
    assert cluster.get(DEPLOYMENTS, "bad") is None
    assert cluster.get(SERVICES, "bad") is None
