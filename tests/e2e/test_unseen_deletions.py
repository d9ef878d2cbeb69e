"""Deletions the operator's watches never saw: after a `410 Gone` a watch lists again, and an object deleted
in that gap is simply missing from the list, so kopf keeps its index entry. The emulator's
`delete_silently` makes such a deletion. A Job deleted so must still end its training `Failed JobDeleted`,
and a KerasModelService deleted so must not become a ghost whose children are made again at every resync."""

from __future__ import annotations

from typing import Any

import pytest
from kmock import action

from cluster.emulator import ALWAYS, PODS, Fault, counting
from cluster.harness import DEPLOYMENTS, JOBS, KMS, KTJ, SERVICES, Cluster, operator
from helpers.jobs import synthetic_job
from helpers.services import idle_service

pytestmark = pytest.mark.e2e


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.ktj(name).get("status") or {}


def failed(cluster: Cluster, name: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == "Failed"), {})


def test_a_model_service_deleted_unseen_is_not_made_again_at_the_next_resyncs(cluster: Cluster) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    emulator.faults.append(Fault(action.CREATE, PODS, 403, count=ALWAYS))  # no server process is needed
    with operator(cluster):
        cluster.create(KMS, idle_service("ghost"))
        cluster.create(KMS, idle_service("alive"))  # its resyncs show the ghost's have run too
        for name in ("ghost", "alive"):
            cluster.wait_for(lambda n=name: (cluster.get(KMS, n) or {}).get("status", {}).get("phase"), 60, "status")
            cluster.wait_for(lambda n=name: cluster.get(DEPLOYMENTS, n) and cluster.get(SERVICES, n), 60, "children")
        events_before = len(cluster.events_for("ghost"))

        cluster.call(emulator.delete_silently(KMS, "default", "ghost"))
        # Its children are collected (their watch sees that): the trigger that would make them again.
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "ghost") is None, 30, "the Deployment collected")
        cluster.wait_for(lambda: cluster.get(SERVICES, "ghost") is None, 30, "the Service collected")
        reconciles = counting(cluster.emulator, action.FETCH, SERVICES)  # each reconcile of "alive" reads its Service
        cluster.wait_for(lambda: reconciles.hits >= 4, 60, "four more resyncs (every second)")

    assert cluster.get(DEPLOYMENTS, "ghost") is None
    assert cluster.get(SERVICES, "ghost") is None
    assert emulator.creations[(DEPLOYMENTS, "default", "ghost")] == 1
    assert emulator.creations[(SERVICES, "default", "ghost")] == 1
    assert len(cluster.events_for("ghost")) == events_before  # no `Created` for a resource that is gone


def test_a_job_deleted_unseen_ends_its_training_failed_job_deleted(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("unseen", 40))
        cluster.wait_for(lambda: status(cluster, "unseen").get("progress", {}).get("epoch", 0) >= 1, 120, "an epoch")
        cluster.call(cluster.emulator.delete_silently(JOBS, "default", "unseen-train"))
        cluster.wait_for(lambda: status(cluster, "unseen").get("phase") == "Failed", 60, "Failed")
    assert failed(cluster, "unseen")["reason"] == "JobDeleted"
    assert cluster.list(JOBS) == []  # never made again


def test_a_resume_of_a_job_deleted_unseen_ends_the_training_failed_job_deleted(cluster: Cluster) -> None:
    """Its pods not collected yet, nothing shows the Job gone until the operator writes to it: a 404 on that
    PATCH means the Job is gone, not a failure to retry with a growing delay forever."""
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("resumed", 40))
        cluster.wait_for(lambda: status(cluster, "resumed").get("progress", {}).get("epoch", 0) >= 1, 120, "an epoch")
        cluster.call(cluster.emulator.delete_silently(JOBS, "default", "resumed-train", collect=False))
        cluster.patch(KTJ, "resumed", {"spec": {"runPolicy": {"suspend": True}}})
        cluster.wait_for(lambda: status(cluster, "resumed").get("phase") == "Failed", 60, "Failed")
    assert failed(cluster, "resumed")["reason"] == "JobDeleted"
    assert cluster.list(JOBS) == []
