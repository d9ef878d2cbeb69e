"""Many trainings at once: an operator restart while they push progress, and watches that drop."""

from __future__ import annotations

import pytest

from cluster.harness import JOBS, KTJ, Cluster, operator
from cluster.kubelet import free_port
from helpers.jobs import tiny_job

pytestmark = pytest.mark.e2e


def small(name: str, epochs: int) -> dict:
    return tiny_job(
        name,
        output={"uri": f"pvc://models/{name}"},
        training__epochs=epochs,
        training__batchSize=16,
        data__train={"synthetic": {"samples": 1600, "inputShape": [8], "classes": 3}},
    )


def phase(cluster: Cluster, name: str) -> str | None:
    return (cluster.ktj(name).get("status") or {}).get("phase")


@pytest.fixture
def pushing(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_PORT", str(port))
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "3600")


@pytest.mark.timeout(900)
@pytest.mark.usefixtures("pushing")
def test_operator_restart_while_20_trainings_push(cluster: Cluster) -> None:
    """Pushes sent while the operator is down are retried by the trainers; results still arrive through
    the termination message; nothing is created twice."""
    names = [f"fleet-{i:02d}" for i in range(20)]
    assert cluster.controller is not None
    with operator(cluster):
        for name in names:
            cluster.create(KTJ, small(name, epochs=8))
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
        assert status["modelUri"] == f"pvc://models/{name}/model.keras"
    assert sorted(j["metadata"]["name"] for j in cluster.list(JOBS)) == sorted(f"{n}-train" for n in names)
    assert cluster.controller.pods_started == 20


def test_dropped_watches_are_resumed(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, small("dropped", epochs=30))
        cluster.wait_for(lambda: phase(cluster, "dropped") == "Running", 120, "Running")
        starts = sum(emulator.watch_starts.values())

        async def drop() -> None:
            emulator.drop_watches()

        cluster.call(drop())
        cluster.wait_for(lambda: sum(emulator.watch_starts.values()) >= starts + 3, 60, "the watches to resume")
        cluster.create(KTJ, small("after-drop", epochs=2))  # seen only through a resumed watch
        cluster.call(drop())
        cluster.wait_for(lambda: phase(cluster, "after-drop") == "Succeeded", 180, "the new resource to train")
        cluster.wait_for(lambda: phase(cluster, "dropped") == "Succeeded", 240, "the first to finish")
    assert cluster.ktj("dropped")["status"]["progress"]["epoch"] == 30
    assert len(cluster.list(JOBS)) == 2
