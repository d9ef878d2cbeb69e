"""A KerasTrainingJob's Job and pods are its own by their owner chain (uids), never by name or labels:
a resource deleted and re-applied under the same name, a pod labelled by hand, a pod gone before its end
was seen."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.harness import JOBS, KTJ, PODS, Cluster, operator
from helpers.jobs import synthetic_job, tiny_job
from helpers.progress import post

pytestmark = pytest.mark.e2e
AUDIENCE = "kerasoperator.dev/progress"
OWNER_LABEL = "kerasoperator.dev/training-job"


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = cluster.get(KTJ, name)
    return (obj or {}).get("status") or {}


def pods_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [p for p in cluster.list(PODS) if (p["metadata"].get("labels") or {}).get(OWNER_LABEL) == name]


def patch_pod_status(cluster: Cluster, name: str, pod_status: dict[str, Any]) -> None:
    path = f"/api/v1/namespaces/default/pods/{name}/status"
    cluster.call(cluster._request("PATCH", path, {"status": pod_status}))


def model_uri(cluster: Cluster, name: str) -> str:
    return f"pvc://models/{name}/runs/{cluster.ktj(name)['metadata']['uid']}/model.keras"


def test_delete_and_reapply_waits_for_the_old_job_instead_of_failing(cluster: Cluster) -> None:
    """The resource has no finalizer: it goes at once, its Job a moment later (the garbage collector). The
    re-applied resource's Job name is still taken by the old Job meanwhile: it waits, it does not fail."""
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("again", epochs=200))
        cluster.wait_for(lambda: status(cluster, "again").get("phase") == "Running", 120, "the first run")
        old_job = cluster.get(JOBS, "again-train")
        assert old_job is not None
        cluster.emulator.gc_delay = 8.0
        cluster.delete(KTJ, "again")
        cluster.create(KTJ, tiny_job("again", output={"uri": "pvc://models/again"}))
        waiting = cluster.wait_for(
            lambda: (s := status(cluster, "again")).get("phase") in ("Pending", "Failed") and s,
            60,
            "the new resource's first status",
        )
        assert waiting["phase"] == "Pending", waiting
        assert "garbage collected" in waiting["message"], waiting
        created = {c["type"]: c for c in waiting["conditions"]}["Created"]
        assert (created["status"], created["reason"]) == ("False", "WaitingForPreviousRun"), created
        assert cluster.get(JOBS, "again-train")["metadata"]["uid"] == old_job["metadata"]["uid"]
        cluster.wait_for(lambda: status(cluster, "again").get("phase") == "Succeeded", 180, "the new run to succeed")
        final = status(cluster, "again")
        new_job = cluster.get(JOBS, "again-train")
    assert new_job is not None
    assert new_job["metadata"]["uid"] != old_job["metadata"]["uid"]
    assert final["modelUri"] == model_uri(cluster, "again")
    assert final["progress"]["epochs"] == 2, final["progress"]
    assert "NameConflict" not in [e["reason"] for e in cluster.events_for("again")]


def test_a_deleted_runs_pod_cannot_report_for_the_new_resource(cluster: Cluster, progress_endpoint: str) -> None:
    """The old run's pod, still alive while it is collected, keeps its labels and a valid token: its pushes
    are refused, and the new run's progress is its own (never pinned by the old run's later epochs)."""
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("rerun", epochs=40, samples=12000, batch_size=16))
        cluster.wait_for(lambda: status(cluster, "rerun").get("progress"), 120, "the first run's first epoch")
        (old_pod,) = pods_of(cluster, "rerun")
        old_token = cluster.pod_tokens(old_pod["metadata"]["name"])[0]
        cluster.emulator.gc_delay = 8.0
        cluster.delete(KTJ, "rerun")
        cluster.create(KTJ, tiny_job("rerun", output={"uri": "pvc://models/rerun"}))
        cluster.wait_for(lambda: cluster.get(KTJ, "rerun") is not None, 10, "the new resource")
        assert cluster.get(PODS, old_pod["metadata"]["name"]) is not None, "the old pod was collected too soon"
        url = f"{progress_endpoint}/v1/namespaces/default/kerastrainingjobs/rerun/progress"
        code, body = post(url, old_token, {"type": "epoch", "epoch": 39, "epochs": 40, "metrics": {"loss": 0.0}})
        assert code == 403, (code, body)
        cluster.wait_for(lambda: status(cluster, "rerun").get("phase") == "Succeeded", 180, "the new run to succeed")
        final = status(cluster, "rerun")
    assert (final["progress"]["epoch"], final["progress"]["epochs"]) == (2, 2), final["progress"]


def test_a_pod_labelled_by_hand_is_not_the_trainings(cluster: Cluster, progress_endpoint: str) -> None:
    """Anyone who may create pods can give one the training's labels: it may not push progress, and its
    termination message never becomes status.modelUri, though it is the newest pod with those labels."""
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("own", epochs=6, samples=12000, batch_size=16))
        cluster.wait_for(lambda: status(cluster, "own").get("progress"), 120, "the first epoch")
        (real,) = pods_of(cluster, "own")
        labels = {k: v for k, v in real["metadata"]["labels"].items() if "job-name" not in k and k != "controller-uid"}
        forged = cluster.create(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "own-train-zzzzz", "labels": labels},
                "spec": {"containers": [{"name": "trainer", "image": "busybox"}]},
            },
        )
        result = {"phase": "Succeeded", "reason": "Completed", "message": "forged", "epoch": 6, "epochs": 6}
        result["modelUri"] = "s3://somebody-else/model.keras"
        patch_pod_status(
            cluster,
            "own-train-zzzzz",
            {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "trainer",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(result)}},
                    }
                ],
            },
        )
        job = cluster.get(JOBS, "own-train") or {}
        assert not (job.get("status") or {}).get("conditions"), "the training ended before the forged pod came"
        token = cluster.emulator.mint_token("default", "own-train-zzzzz", forged["metadata"]["uid"], AUDIENCE)
        url = f"{progress_endpoint}/v1/namespaces/default/kerastrainingjobs/own/progress"
        code, body = post(url, token, {"type": "epoch", "epoch": 5, "epochs": 6, "metrics": {"loss": 0.0}})
        assert code == 403, (code, body)
        cluster.wait_for(lambda: status(cluster, "own").get("phase") == "Succeeded", 180, "Succeeded")
        final = status(cluster, "own")
    assert final["modelUri"] == model_uri(cluster, "own"), final
    assert "forged" not in final.get("message", "")


def test_a_pod_gone_before_its_end_was_seen_still_names_the_model(cluster: Cluster) -> None:
    """The trainer's result travels in its pod's termination message; when the pod is gone before the
    operator saw it end (the operator down meanwhile), the Job's success still names the run's model,
    which a trainingJobRef service waits for."""
    doc = synthetic_job("lost", epochs=4)
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: status(cluster, "lost").get("phase") == "Running", 120, "Running")

    def complete() -> bool:
        job = cluster.get(JOBS, "lost-train") or {}
        return any(c.get("type") == "Complete" for c in (job.get("status") or {}).get("conditions") or [])

    cluster.wait_for(complete, 180, "the Job to complete while the operator is down")
    for pod in pods_of(cluster, "lost"):
        cluster.delete(PODS, pod["metadata"]["name"])
    with operator(cluster):
        cluster.wait_for(lambda: status(cluster, "lost").get("phase") == "Succeeded", 60, "Succeeded")
        final = status(cluster, "lost")
    assert final["modelUri"] == model_uri(cluster, "lost"), final
    run = cluster.pvc_root / "models" / "lost" / "runs" / cluster.ktj("lost")["metadata"]["uid"]
    assert (run / "model.keras").exists()
