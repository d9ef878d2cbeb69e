"""KerasModelService children: never someone else's, applied server-side (removals and hand edits),
and the model of a trainingJobRef followed across retraining and deletion."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.harness import DEPLOYMENTS, HPAS, KMS, KTJ, SERVICES, Cluster, operator
from helpers.jobs import tiny_job
from helpers.services import condition, service, status

pytestmark = pytest.mark.e2e


def container(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.get(DEPLOYMENTS, name)["spec"]["template"]["spec"]["containers"][0]


def model_arg(cluster: Cluster, name: str) -> str:
    args = container(cluster, name)["args"]
    return str(args[args.index("--model-uri") + 1])


FOREIGN_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "shop", "labels": {"app": "shop"}},
    "spec": {"selector": {"app": "shop"}, "ports": [{"name": "web", "port": 80}]},
}
FOREIGN_HPA = {
    "apiVersion": "autoscaling/v2",
    "kind": "HorizontalPodAutoscaler",
    "metadata": {"name": "shop"},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shop"}, "maxReplicas": 5},
}


def test_objects_of_the_same_name_that_are_not_ours_are_left_alone(cluster: Cluster) -> None:
    """A KerasModelService named like a user's Service and HPA: NameConflict, and neither is changed (the
    Service is not redirected to the model pods, the HPA is not deleted)."""
    (cluster.pvc_root / "models").mkdir(parents=True)
    cluster.create(SERVICES, FOREIGN_SERVICE)
    cluster.create(HPAS, FOREIGN_HPA)
    before = cluster.get(SERVICES, "shop")
    with operator(cluster):
        cluster.create(KMS, service("shop", {"uri": "pvc://models/shop.keras"}))
        cluster.wait_for(lambda: condition(cluster, "shop", "Valid").get("reason") == "NameConflict", 30, "conflict")
        cluster.wait_for(lambda: "NameConflict" in [e["reason"] for e in cluster.events_for("shop")], 10, "Event")
    valid = condition(cluster, "shop", "Valid")
    assert valid["status"] == "False"
    assert "Service named shop" in valid["message"]
    assert "belongs to something else" in valid["message"]
    assert status(cluster, "shop")["phase"] == "Failed"
    assert cluster.get(SERVICES, "shop") == before
    assert cluster.get(HPAS, "shop") is not None
    assert cluster.get(DEPLOYMENTS, "shop") is None  # nothing created beside a conflict


def test_a_foreign_deployment_is_never_patched(cluster: Cluster) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api"},
        "spec": {
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "shop/api:1"}]},
            },
        },
    }
    cluster.create(DEPLOYMENTS, deployment)
    before = cluster.get(DEPLOYMENTS, "api")
    assert before is not None
    with operator(cluster):
        cluster.create(KMS, service("api", {"uri": "pvc://models/api.keras"}))
        cluster.wait_for(lambda: condition(cluster, "api", "Valid").get("reason") == "NameConflict", 30, "conflict")
    assert "Deployment named api" in condition(cluster, "api", "Valid")["message"]
    after = cluster.get(DEPLOYMENTS, "api")
    assert after is not None
    # (The fake Deployment controller writes its status; what its owner wrote stays as written.)
    assert (after["metadata"].get("labels"), after["metadata"].get("ownerReferences")) == (
        before["metadata"].get("labels"),
        before["metadata"].get("ownerReferences"),
    )
    assert after["spec"] == before["spec"]


def test_removed_fields_disappear_and_hand_edits_are_set_back(cluster: Cluster) -> None:
    (cluster.pvc_root / "models").mkdir(parents=True)
    pod_template = {"spec": {"nodeSelector": {"accelerator": "a100"}, "env": [{"name": "EXTRA", "value": "1"}]}}
    with operator(cluster):
        cluster.create(KMS, service("m", {"uri": "pvc://models/m.keras"}, podTemplate=pod_template))
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "m"), 30, "the Deployment")
        spec = cluster.get(DEPLOYMENTS, "m")["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {"accelerator": "a100"}
        assert {"name": "EXTRA", "value": "1"} in spec["containers"][0]["env"]

        # Removed from the spec: removed from the Deployment (a merge patch would have kept both).
        cluster.patch(KMS, "m", {"spec": {"podTemplate": None}})
        cluster.wait_for(
            lambda: "nodeSelector" not in cluster.get(DEPLOYMENTS, "m")["spec"]["template"]["spec"], 30, "nodeSelector"
        )
        assert "EXTRA" not in [e["name"] for e in container(cluster, "m")["env"]]

        # A hand edit of a field the operator sets is set back at the next resync; a field only someone
        # else sets (an annotation a tool added) stays.
        cluster.patch(
            DEPLOYMENTS,
            "m",
            {"metadata": {"annotations": {"team": "ml"}}, "spec": {"progressDeadlineSeconds": 5}},
        )
        cluster.wait_for(
            lambda: cluster.get(DEPLOYMENTS, "m")["spec"]["progressDeadlineSeconds"] == 600, 30, "drift corrected"
        )
    assert cluster.get(DEPLOYMENTS, "m")["metadata"]["annotations"]["team"] == "ml"
    # kopf keeps no state on the resource (no diff-base of the whole spec near the 256 KiB annotation limit).
    resource = cluster.get(KMS, "m")
    assert not [k for k in (resource["metadata"].get("annotations") or {}) if "kopf" in k]
    assert not resource["metadata"].get("finalizers")
    assert cluster.emulator is not None
    managers = {key[3] for key in cluster.emulator.applied if key[2] == "m"}
    assert managers == {"keras-operator"}


def test_a_retrained_job_rolls_out_and_a_deleted_one_keeps_serving(cluster: Cluster) -> None:
    """The service follows its trainingJobRef: a re-applied KerasTrainingJob is a new run with a new model
    (runs/UID), rolled out once it succeeds; meanwhile, and after the job is deleted, the last model serves."""
    job = tiny_job("digits", output={"uri": "pvc://models/digits"}, training__epochs=1)
    with operator(cluster):
        first = cluster.create(KTJ, job)
        cluster.create(KMS, service("digits", {"trainingJobRef": {"name": "digits"}}))
        cluster.wait_for(lambda: status(cluster, "digits").get("phase") == "Ready", 180, "Ready")
        first_model = model_arg(cluster, "digits")
        assert first["metadata"]["uid"] in first_model

        cluster.delete(KTJ, "digits")
        cluster.wait_for(
            lambda: condition(cluster, "digits", "ModelResolved").get("reason") == "TrainingJobDeleted", 30, "deleted"
        )
        assert status(cluster, "digits")["phase"] == "Ready"  # still serving
        assert model_arg(cluster, "digits") == first_model

        second = cluster.create(KTJ, job)
        cluster.wait_for(lambda: second["metadata"]["uid"] in model_arg(cluster, "digits"), 180, "the new model")
        cluster.wait_for(lambda: status(cluster, "digits").get("phase") == "Ready", 120, "Ready again")
    assert status(cluster, "digits")["modelUri"] == model_arg(cluster, "digits")
    assert (cluster.pvc_root / first_model.removeprefix("pvc://")).exists()  # the first run's model is intact


def test_the_replica_count_an_autoscaler_sets_is_left_to_it(cluster: Cluster) -> None:
    """With spec.autoscaling the operator does not apply `replicas`: what the HPA sets (here by hand, as the
    HPA would through /scale) survives the operator's resyncs."""
    from helpers import models

    (cluster.pvc_root / "models").mkdir(parents=True)
    models.single(cluster.pvc_root / "models" / "auto.keras")
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 60}
    with operator(cluster):
        cluster.create(KMS, service("auto", {"uri": "pvc://models/auto.keras"}, autoscaling=autoscaling))
        cluster.wait_for(lambda: status(cluster, "auto").get("phase") == "Ready", 120, "Ready")
        cluster.patch(DEPLOYMENTS, "auto", {"spec": {"replicas": 2}})
        generation = cluster.get(KMS, "auto")["metadata"]["generation"]
        cluster.patch(KMS, "auto", {"spec": {"server": {"batching": {"maxBatchSize": 4}}}})  # a spec change: an apply
        cluster.wait_for(
            lambda: status(cluster, "auto").get("observedGeneration") == generation + 1, 30, "the edit reconciled"
        )
        args = container(cluster, "auto")["args"]
        assert args[args.index("--max-batch-size") + 1] == "4"
        assert cluster.get(DEPLOYMENTS, "auto")["spec"]["replicas"] == 2
