"""A KerasTrainingJob in a Kueue queue, end to end: the test plays Kueue by flipping the Job's spec.suspend
(admit, evict, admit again), as Kueue does; the emulated Job controller stops and starts the pods."""

from __future__ import annotations

import pytest

from cluster.harness import JOBS, KTJ, PODS, Cluster, operator
from helpers.jobs import tiny_job

pytestmark = pytest.mark.e2e


def status(cluster: Cluster, name: str) -> dict:
    return cluster.ktj(name).get("status") or {}


def queued_reason(cluster: Cluster, name: str) -> str | None:
    found = [c for c in status(cluster, name).get("conditions") or [] if c["type"] == "Queued"]
    return found[0]["reason"] if found and found[0]["status"] == "True" else None


def test_kueue_preemption_is_queued_then_resumed(cluster: Cluster) -> None:
    doc = tiny_job(
        "evictable",
        output={"uri": "pvc://models/evictable"},
        training__epochs=8,
        training__batchSize=16,
        data__train={"synthetic": {"samples": 20000, "inputShape": [8], "classes": 3}},
        runPolicy={"queueName": "team-a", "workloadPriorityClass": "low"},
    )
    assert cluster.emulator is not None
    assert cluster.controller is not None
    emulator, controller = cluster.emulator, cluster.controller
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: queued_reason(cluster, "evictable") == "Suspended", 30, "Queued before admission")
        job = cluster.get(JOBS, "evictable-train")
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"

        # Kueue admits the Job.
        cluster.patch(JOBS, "evictable-train", {"spec": {"suspend": False}})
        cluster.wait_for(lambda: status(cluster, "evictable").get("progress", {}).get("epoch", 0) >= 2, 120, "2 epochs")
        assert status(cluster, "evictable")["phase"] == "Running"

        # A higher priority workload comes: Kueue evicts this one by suspending its Job again.
        cluster.patch(JOBS, "evictable-train", {"spec": {"suspend": True}})
        cluster.wait_for(lambda: queued_reason(cluster, "evictable") == "Preempted", 60, "Queued as Preempted")
        cluster.wait_for(lambda: not controller.processes, 30, "the trainer process to stop")
        evicted = status(cluster, "evictable")
        assert evicted["phase"] == "Queued"
        assert "evicted by Kueue" in evicted["message"]
        assert "resumes from its last checkpoint" in evicted["message"]
        assert evicted["progress"]["epoch"] >= 2

        # Admitted again: the training goes on from its checkpoint.
        cluster.patch(JOBS, "evictable-train", {"spec": {"suspend": False}})
        cluster.wait_for(lambda: status(cluster, "evictable").get("phase") == "Succeeded", 180, "Succeeded")

    # Pending may come between (a pod starting); never Failed.
    phases = [
        (v.get("status") or {}).get("phase")
        for v in emulator.objects[KTJ, "default", "evictable"].history
        if v is not None and (v.get("status") or {}).get("phase") not in (None, "Pending")
    ]
    seen = [p for n, p in enumerate(phases) if n == 0 or p != phases[n - 1]]
    assert seen == ["Queued", "Running", "Queued", "Running", "Succeeded"], seen
    assert status(cluster, "evictable")["progress"]["epoch"] == 8
    assert controller.pods_started == 2
    last_pod = max(cluster.list(PODS), key=lambda p: p["metadata"]["resourceVersion"])
    assert '"event": "resumed"' in emulator.pod_logs[("default", last_pod["metadata"]["name"])]
