"""A training pod deleted mid-epoch (the kubelet's SIGTERM, then SIGKILL after the grace period the
operator gave it) saves where it was; the Job's next pod resumes there and the status says so."""

from __future__ import annotations

import pytest

from cluster.harness import KTJ, PODS, Cluster, operator
from helpers.jobs import synthetic_job

pytestmark = pytest.mark.e2e


def test_a_deleted_pod_saves_on_sigterm_and_the_retry_resumes_at_its_step(cluster: Cluster) -> None:
    doc = synthetic_job("sigterm", epochs=3, samples=16000, batch_size=16)
    doc["spec"]["output"]["checkpoints"] = {"every": {"steps": 200}, "saveSeconds": 20}
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: "checkpoint_saved" in _logs(cluster), 120, "a checkpoint within the first epoch")
        [first] = cluster.list(PODS)
        assert first["spec"]["terminationGracePeriodSeconds"] == 50  # saveSeconds + 30
        cluster.delete(PODS, first["metadata"]["name"])
        cluster.wait_for(lambda: (cluster.ktj("sigterm").get("status") or {}).get("phase") == "Succeeded", 240, "done")

    status = cluster.ktj("sigterm")["status"]
    resumed = status["resumedFrom"]
    assert resumed["trigger"] == "signal"
    assert resumed["stepsLost"] == 0
    assert resumed["step"] > 0, "resumed at an epoch start"
    assert status["lastCheckpoint"]["epoch"] == 3
    first_log = emulator.pod_logs[("default", first["metadata"]["name"])]
    assert "stopped by SIGTERM; checkpoint saved at epoch" in first_log
    [second] = cluster.list(PODS)  # the deleted one is gone; the Job started another
    assert second["metadata"]["name"] != first["metadata"]["name"]


def _logs(cluster: Cluster) -> str:
    assert cluster.emulator is not None
    return "".join(cluster.emulator.pod_logs.values())
