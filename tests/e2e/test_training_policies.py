"""What happens to a KerasTrainingJob when its Job goes away, when a TTL is asked for, and when the API
server refuses the Job: one documented answer each (docs/training.md, "Policies")."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from kmock import action

from cluster.emulator import Fault
from cluster.harness import JOBS, KTJ, Cluster, operator
from helpers.jobs import synthetic_job, tiny_job
from helpers.server import OPERATOR_METRICS_PORT

pytestmark = pytest.mark.e2e


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.ktj(name).get("status") or {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


def reconciles() -> float:
    """How many KerasTrainingJob reconciles the operator has run, from its own metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("keras_operator_reconciles_total{") and 'kind="KerasTrainingJob"' in line
    )


def epoch(cluster: Cluster, name: str) -> int:
    return int(status(cluster, name).get("progress", {}).get("epoch", 0))


@pytest.mark.parametrize("restart", [False, True], ids=["operator-running", "operator-restarted"])
def test_a_job_deleted_by_hand_fails_the_training_and_is_never_recreated(cluster: Cluster, restart: bool) -> None:
    """Before: deleted by hand, the resource fell back to Pending forever; deleted while the operator was
    down, it was silently recreated and retrained over the saved model."""
    assert cluster.controller is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("gone", 40))
        cluster.wait_for(lambda: epoch(cluster, "gone") >= 1, 120, "a first epoch")
        if not restart:
            cluster.delete(JOBS, "gone-train")
            cluster.wait_for(lambda: status(cluster, "gone").get("phase") == "Failed", 30, "Failed")
    if restart:
        cluster.delete(JOBS, "gone-train")
        with operator(cluster):
            # A fresh operator lists everything first; under a full suite on 2 cores that once took over 30 s.
            cluster.wait_for(lambda: status(cluster, "gone").get("phase") == "Failed", 120, "Failed")
    failed = condition(cluster, "gone", "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "JobDeleted"
    assert "gone-train was deleted before the training finished" in failed["message"]
    assert condition(cluster, "gone", "Running")["status"] == "False"
    assert status(cluster, "gone")["progress"]["epoch"] >= 1  # what was shown stays
    assert cluster.list(JOBS) == []
    assert cluster.controller.pods_started == 1


def test_the_ttl_removes_the_job_only_after_its_result_is_in_the_status(cluster: Cluster) -> None:
    """Before: the Job carried ttlSecondsAfterFinished, and a TTL of 0 could delete it before the operator
    read its result."""
    doc = tiny_job("brief", output={"uri": "pvc://models/brief"}, runPolicy={"ttlSecondsAfterFinished": 0})
    with operator(cluster):
        created = cluster.create(KTJ, doc)
        cluster.wait_for(lambda: cluster.get(JOBS, "brief-train"), 30, "the Job")
        assert "ttlSecondsAfterFinished" not in cluster.get(JOBS, "brief-train")["spec"]
        cluster.wait_for(lambda: cluster.get(JOBS, "brief-train") is None, 180, "the Job deleted after its TTL")
        final = status(cluster, "brief")
    assert final["phase"] == "Succeeded"
    assert final["modelUri"].endswith(f"runs/{created['metadata']['uid']}/model.keras")
    assert "Deleted" in [e["reason"] for e in cluster.events_for("brief")]
    assert status(cluster, "brief") == final  # and it stays so without its Job
    meta = cluster.ktj("brief")["metadata"]
    assert not [k for k in (meta.get("annotations") or {}) if "kopf" in k]  # no kopf state on the resource
    assert not meta.get("finalizers")


@pytest.mark.parametrize(
    ("code", "reason"),
    [(403, "Forbidden"), (400, "Rejected")],
    ids=["quota-exceeded", "admission-denied"],
)
def test_an_api_rejection_is_reported_not_retried_forever(cluster: Cluster, code: int, reason: str) -> None:
    """Before: 400 and 403 on the Job's create were retried every 5 s forever and never reached the status."""
    assert cluster.emulator is not None
    fault = Fault(action.CREATE, JOBS, code, count=1000)
    cluster.emulator.faults.append(fault)
    with operator(cluster):
        cluster.create(KTJ, tiny_job("denied", output={"uri": "pvc://models/denied"}))
        cluster.wait_for(lambda: condition(cluster, "denied", "Failed").get("reason") == reason, 30, reason)
        hits = fault.hits
        cluster.wait_for(lambda: len(cluster.events_for("denied")) > 0, 10, "an Event")
        # A watch event at the same generation (a label added) brings another reconcile: it must not ask again.
        before = reconciles()
        cluster.patch(KTJ, "denied", {"metadata": {"labels": {"team": "a"}}})
        cluster.wait_for(lambda: reconciles() > before, 10, "a reconcile of the labelled resource")
    failed = condition(cluster, "denied", "Failed")
    assert f"refused to create Job denied-train ({code}" in failed["message"]
    assert status(cluster, "denied")["phase"] == "Failed"
    assert hits == 1
    assert fault.hits == 1  # not retried
    assert reason in [e["reason"] for e in cluster.events_for("denied")]
