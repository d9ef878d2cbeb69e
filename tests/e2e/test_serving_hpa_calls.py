"""A KerasModelService without autoscaling costs no HPA call at its resyncs (HPAs are not watched: once the
operator made sure there is none, it remembers), yet an HPA left from before is still removed: one left
while the operator was down, and one whose spec.autoscaling is dropped."""

from __future__ import annotations

import pytest
from kmock import action

from cluster.emulator import ALWAYS, PODS, Fault, counting
from cluster.harness import HPAS, KMS, SERVICES, Cluster, operator

pytestmark = pytest.mark.e2e


def leftover_hpa(name: str, owner_uid: str) -> dict:
    """An HPA as an earlier spec with autoscaling had the operator make it."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": "kerasoperator.dev/v1alpha1",
                    "kind": "KerasModelService",
                    "name": name,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 3,
        },
    }


def test_resyncs_of_a_service_without_autoscaling_make_no_hpa_call(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    # No server process is needed here: the fake kubelet may not make pods.
    cluster.emulator.faults.append(Fault(action.CREATE, PODS, 403, count=ALWAYS))
    made = cluster.create(
        KMS,
        {
            "apiVersion": "kerasoperator.dev/v1alpha1",
            "kind": "KerasModelService",
            "metadata": {"name": "iris"},
            "spec": {"model": {"uri": "pvc://models/iris.keras"}, "replicas": 0},
        },
    )
    # What an earlier spec with autoscaling left, while no operator ran.
    cluster.create(HPAS, leftover_hpa("iris", made["metadata"]["uid"]))
    hpa_reads = counting(cluster.emulator, action.FETCH, HPAS)
    reconciles = counting(cluster.emulator, action.FETCH, SERVICES)  # every reconcile reads the Service once

    with operator(cluster):
        cluster.wait_for(lambda: cluster.get(HPAS, "iris") is None, 30, "the leftover HPA to go")
        reads_at_start = hpa_reads.hits
        assert reads_at_start >= 1  # the first reconcile had to look
        later = reconciles.hits + 4
        cluster.wait_for(lambda: reconciles.hits >= later, 60, "four more reconciles (resyncs every second)")
        assert hpa_reads.hits == reads_at_start  # it knows there is none: not one more GET

        # Autoscaling on, then off again: the HPA is made, then removed, then no longer read.
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": {"minReplicas": 1, "maxReplicas": 2}}})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris") is not None, 30, "the HPA")
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": None}})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris") is None, 30, "the HPA to go")
        reads_after_removal = hpa_reads.hits
        later = reconciles.hits + 4
        cluster.wait_for(lambda: reconciles.hits >= later, 60, "four more reconciles")
        assert hpa_reads.hits == reads_after_removal
