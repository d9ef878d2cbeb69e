"""KerasModelService scenarios that must never go wrong (issue #24), on the emulated cluster: a model still
served stays served and managed across edits, and the replica count passes to and from an HPA without a dip."""

from __future__ import annotations

import pytest

from cluster.harness import DEPLOYMENTS, KMS, KTJ, Cluster, operator
from helpers.jobs import tiny_job
from helpers.services import condition, service, status

pytestmark = pytest.mark.e2e


def test_scaling_a_service_whose_training_was_deleted_keeps_serving_and_applies_the_scale(cluster: Cluster) -> None:
    with operator(cluster):
        cluster.create(KTJ, tiny_job("digits", output={"uri": "pvc://models/digits"}, training__epochs=1))
        cluster.create(KMS, service("digits", {"trainingJobRef": {"name": "digits"}}))
        cluster.wait_for(lambda: status(cluster, "digits").get("phase") == "Ready", 180, "Ready")
        served = status(cluster, "digits")["modelUri"]
        cluster.delete(KTJ, "digits")
        cluster.wait_for(
            lambda: condition(cluster, "digits", "ModelResolved").get("reason") == "TrainingJobDeleted", 30, "deleted"
        )

        generation = cluster.get(KMS, "digits")["metadata"]["generation"]
        cluster.patch(KMS, "digits", {"spec": {"replicas": 2}})  # what `kubectl scale kms` does through /scale
        cluster.wait_for(
            lambda: status(cluster, "digits").get("observedGeneration") == generation + 1, 30, "the scale reconciled"
        )
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "digits")["spec"]["replicas"] == 2, 30, "2 replicas")
        cluster.wait_for(lambda: status(cluster, "digits").get("readyReplicas") == 2, 120, "2 ready")
        now = status(cluster, "digits")
    assert now["modelUri"] == served
    assert now["phase"] == "Ready"
    assert condition(cluster, "digits", "ModelResolved")["reason"] == "TrainingJobDeleted"


def owns_replicas(cluster: Cluster, name: str) -> bool:
    """Whether the operator's applies own the Deployment's spec.replicas (metadata.managedFields)."""
    entries = cluster.get(DEPLOYMENTS, name)["metadata"].get("managedFields") or []
    return any(
        e["manager"] == "keras-operator"
        and e["operation"] == "Apply"
        and "f:replicas" in e["fieldsV1"].get("f:spec", {})
        for e in entries
    )


def test_autoscaling_added_to_a_running_service_never_drops_its_pods_and_removed_restores_spec_replicas(
    cluster: Cluster,
) -> None:
    from helpers import models

    (cluster.pvc_root / "models").mkdir(parents=True)
    models.single(cluster.pvc_root / "models" / "iris.keras")
    autoscaling = {"minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 60}
    seen: list[int] = []

    def replicas() -> int:
        count = int(cluster.get(DEPLOYMENTS, "iris")["spec"]["replicas"])
        seen.append(count)
        return count

    def reconciled(generation: int) -> bool:
        replicas()
        return status(cluster, "iris").get("observedGeneration") == generation

    with operator(cluster):
        cluster.create(KMS, service("iris", {"uri": "pvc://models/iris.keras"}, replicas=2))
        cluster.wait_for(lambda: status(cluster, "iris").get("readyReplicas") == 2, 120, "2 pods ready")

        # Autoscaling added: the count the operator applied stays until the HPA sets its own.
        generation = cluster.get(KMS, "iris")["metadata"]["generation"]
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": autoscaling}})
        cluster.wait_for(lambda: reconciled(generation + 1), 30, "autoscaling reconciled")
        later = cluster.get(KMS, "iris")["metadata"]["generation"]
        cluster.patch(KMS, "iris", {"spec": {"server": {"batching": {"maxBatchSize": 4}}}})  # one more apply
        cluster.wait_for(lambda: reconciled(later + 1), 30, "the edit reconciled")
        assert min(seen) == 2, seen
        assert owns_replicas(cluster, "iris")

        # The HPA scales (as it would through /scale): the count is its own from then on, and stays.
        cluster.patch(DEPLOYMENTS, "iris", {"spec": {"replicas": 3}})
        cluster.wait_for(lambda: not owns_replicas(cluster, "iris"), 30, "the count handed to the HPA")
        seen.clear()
        later = cluster.get(KMS, "iris")["metadata"]["generation"]
        cluster.patch(KMS, "iris", {"spec": {"server": {"batching": {"maxBatchSize": 8}}}})
        cluster.wait_for(lambda: reconciled(later + 1), 30, "the edit reconciled")
        cluster.wait_for(lambda: status(cluster, "iris").get("readyReplicas") == 3, 120, "3 pods ready")
        assert min(seen) == 3, seen
        assert replicas() == 3
        assert not owns_replicas(cluster, "iris")

        # Autoscaling removed: spec.replicas is the operator's again.
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": None, "replicas": 2}})
        cluster.wait_for(lambda: replicas() == 2, 30, "spec.replicas back")
        cluster.wait_for(lambda: owns_replicas(cluster, "iris"), 30, "the count the operator's again")
