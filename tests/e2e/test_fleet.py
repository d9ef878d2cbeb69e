"""Many trainings at once: an operator restart while they push progress, and watches that drop."""

from __future__ import annotations

import pytest
from test_training_e2e import phase

from cluster.harness import JOBS, KTJ, Cluster, operator
from helpers.jobs import synthetic_job

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("progress_endpoint")
def test_operator_restart_while_20_trainings_push(cluster: Cluster) -> None:
    """Pushes sent while the operator is down are retried by the trainers; results still arrive through
    the termination message; nothing is created twice."""
    names = [f"fleet-{i:02d}" for i in range(20)]
    assert cluster.controller is not None
    with operator(cluster):
        for name in names:
            cluster.create(KTJ, synthetic_job(name, epochs=8, samples=1600, batch_size=16))
        cluster.wait_for(
            lambda: sum(bool((cluster.ktj(n).get("status") or {}).get("progress")) for n in names) >= 5,
            300,
            "progress from several trainings",
        )
    # Down for a while: trainings keep running and their pushes fail (and are retried).
    with operator(cluster):
        cluster.wait_for(lambda: all(phase(cluster, n) in ("Succeeded", "Failed") for n in names), 600, "all ended")
    for name in names:
        status = cluster.ktj(name)["status"]
        assert status["phase"] == "Succeeded", (name, status)
        assert status["progress"]["epoch"] == 8
        assert status["progress"]["percent"] == 100
        uid = cluster.ktj(name)["metadata"]["uid"]
        assert status["modelUri"] == f"pvc://models/{name}/runs/{uid}/model.keras"
    assert sorted(j["metadata"]["name"] for j in cluster.list(JOBS)) == sorted(f"{n}-train" for n in names)
    assert cluster.controller.pods_started == 20


def test_dropped_watches_are_resumed(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("dropped", epochs=30, samples=1600, batch_size=16))
        cluster.wait_for(lambda: phase(cluster, "dropped") == "Running", 120, "Running")
        starts = sum(emulator.watch_starts.values())

        async def drop() -> None:
            emulator.drop_watches()

        cluster.call(drop())
        cluster.wait_for(lambda: sum(emulator.watch_starts.values()) >= starts + 3, 60, "the watches to resume")
        cluster.create(KTJ, synthetic_job("after-drop", epochs=2))  # seen only through a resumed watch
        cluster.call(drop())
        cluster.wait_for(lambda: phase(cluster, "after-drop") == "Succeeded", 180, "the new resource to train")
        cluster.wait_for(lambda: phase(cluster, "dropped") == "Succeeded", 240, "the first to finish")
    assert cluster.ktj("dropped")["status"]["progress"]["epoch"] == 30
    assert len(cluster.list(JOBS)) == 2
