"""KerasTrainingJob end to end: the real operator, the emulated API, real trainer processes."""

from __future__ import annotations

import os
import urllib.request

import numpy as np
import pytest

from cluster.harness import CONFIGMAPS, JOBS, KTJ, PODS, Cluster, operator
from helpers.jobs import synthetic_job, tiny_job
from helpers.manifests import validate_k8s

pytestmark = pytest.mark.e2e


def long_job(name: str, epochs: int) -> dict:
    """A training long enough to be caught while it runs."""
    return synthetic_job(name, epochs)


def finished(progress: dict) -> dict:
    """A finished training's progress, less its last throughput (a measured figure, checked for sense)."""
    progress = dict(progress)
    assert progress.pop("samplesPerSecond", 1) > 0
    return progress


def phase(cluster: Cluster, name: str) -> str | None:
    return (cluster.ktj(name).get("status") or {}).get("phase")


SUCCEEDED = 'keras_operator_phase_transitions_total{kind="KerasTrainingJob",phase="Succeeded"}'


def operator_metrics(line: str) -> str | None:
    """The operator's /metrics page once it has `line` (each operator run serves its own, while it runs)."""
    from helpers.server import OPERATOR_METRICS_PORT

    text = urllib.request.urlopen(f"http://127.0.0.1:{OPERATOR_METRICS_PORT}/metrics", timeout=5).read().decode()
    return text if line in text else None


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_training_job_runs_to_success(cluster: Cluster) -> None:
    import keras

    doc = tiny_job(
        "digits",
        output={"uri": "pvc://models/digits"},
        training__epochs=3,
        resources={"gpus": 1, "cpu": "1", "memory": "1Gi"},
    )
    with operator(cluster):
        created = cluster.create(KTJ, doc)
        job = cluster.wait_for(lambda: cluster.get(JOBS, "digits-train"), 30, "the Job")
        cluster.wait_for(lambda: phase(cluster, "digits") in ("Succeeded", "Failed"), 180, "the end of training")
        ktj = cluster.ktj("digits")
        # Counted once the status write has returned: a moment after the cluster shows it.
        text = cluster.wait_for(lambda: operator_metrics(SUCCEEDED), 10, "the phase change in the operator's metrics")

    # The Job: image, command, GPU, security, owner.
    validate_k8s(job)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/keras-operator/keras-trainer:0.1.0"
    assert container["command"] == ["keras-trainer"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    # The trainer's config travels in the pod template (no ConfigMap): the one object created.
    assert "digits" in job["spec"]["template"]["metadata"]["annotations"]["kerasoperator.dev/trainer-config"]
    assert cluster.list(CONFIGMAPS) == []

    status = ktj["status"]
    assert status["phase"] == "Succeeded", status
    assert finished(status["progress"]) == {"epoch": 3, "epochs": 3, "percent": 100, "secondsRemaining": 0}
    assert set(status["metrics"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    run = f"runs/{created['metadata']['uid']}"  # each run writes under its resource's uid
    assert status["modelUri"] == f"pvc://models/digits/{run}/model.keras"
    assert status["jobName"] == "digits-train"
    assert status["startTime"]
    assert status["completionTime"]
    assert status["observedGeneration"] == 1
    conds = conditions(ktj)
    for expected in ("Valid", "Created", "Succeeded"):
        assert conds[expected]["status"] == "True", conds
        assert conds[expected]["observedGeneration"] == 1
        assert conds[expected]["lastTransitionTime"]
    assert conds["Running"]["status"] == "False"
    # The operator never writes the resource itself: no kopf bookkeeping, no finalizer, only the status.
    assert not any("kopf" in k or k.startswith("kerasoperator.dev/") for k in ktj["metadata"].get("annotations") or {})
    assert not ktj["metadata"].get("finalizers")
    assert "kopf" not in status

    reasons = [e["reason"] for e in cluster.events_for("digits")]
    assert "Created" in reasons
    assert "Succeeded" in reasons

    # The operator's own metrics, served while it runs (read above).
    assert 'keras_operator_reconciles_total{handler="reconcile",kind="KerasTrainingJob",result="ok"}' in text
    assert "keras_operator_reconcile_duration_seconds_bucket" in text

    # The saved model loads and predicts, from where the PVC would be.
    model = keras.models.load_model(cluster.pvc_root / "models" / "digits" / run / "model.keras")
    assert model.predict(np.zeros((4, 8), "float32"), verbose=0).shape == (4, 3)


def test_failing_trainer_reports_its_error(cluster: Cluster) -> None:
    doc = tiny_job(
        "broken",
        output={"uri": "pvc://models/broken"},
        # A value only Keras itself refuses (a misspelt type or argument is refused before any pod runs).
        model__layers=[{"type": "Dense", "units": 4}, {"type": "Dense", "units": -3}],
    )
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "broken") == "Failed", 120, "Failed")
        ktj = cluster.ktj("broken")
    message = ktj["status"]["message"]
    assert "spec.model.layers[1]: Dense: " in message
    assert "units" in message
    assert conditions(ktj)["Failed"]["reason"] == "InvalidSpec"
    assert cluster.controller is not None
    assert cluster.controller.pods_started == 1  # podFailurePolicy: no retries for a spec mistake


def test_invalid_resource_is_reported_and_creates_nothing(cluster: Cluster) -> None:
    doc = tiny_job("bad", output={"uri": "pvc://models/bad"}, training__epochs=0)
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "bad") == "Failed", 30, "Failed")
        ktj = cluster.ktj("bad")
    valid = conditions(ktj)["Valid"]
    assert valid["status"] == "False"
    assert valid["reason"] == "InvalidSpec"
    assert "spec.training.epochs" in valid["message"]
    assert cluster.list(JOBS) == []
    assert cluster.list(CONFIGMAPS) == []
    assert "InvalidSpec" in [e["reason"] for e in cluster.events_for("bad")]


def test_fixed_spec_after_an_invalid_one_trains(cluster: Cluster) -> None:
    with operator(cluster):
        cluster.create(KTJ, tiny_job("fixme", output={"uri": "pvc://models/fixme"}, training__epochs=0))
        cluster.wait_for(lambda: phase(cluster, "fixme") == "Failed", 30, "Failed")
        cluster.patch(KTJ, "fixme", {"spec": {"training": {"epochs": 1}}})
        cluster.wait_for(lambda: phase(cluster, "fixme") == "Succeeded", 120, "Succeeded after the fix")
        ktj = cluster.ktj("fixme")
    found = conditions(ktj)
    assert found["Valid"]["status"] == "True"
    assert found["Succeeded"]["status"] == "True"
    assert found.get("Failed", {}).get("status") != "True"
    assert ktj["status"]["observedGeneration"] == ktj["metadata"]["generation"] == 2


def test_a_foreign_job_of_the_same_name_is_left_alone(cluster: Cluster) -> None:
    foreign = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "taken-train", "labels": {"owner": "someone-else"}},
        "spec": {"suspend": True, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }
    cluster.create(JOBS, foreign)
    with operator(cluster):
        cluster.create(KTJ, tiny_job("taken", output={"uri": "pvc://models/taken"}))
        cluster.wait_for(lambda: phase(cluster, "taken") == "Failed", 30, "Failed")
        ktj = cluster.ktj("taken")
    assert "a Job named taken-train already exists" in ktj["status"]["message"]
    assert "NameConflict" in [e["reason"] for e in cluster.events_for("taken")]
    jobs = cluster.list(JOBS)
    assert len(jobs) == 1
    assert jobs[0]["metadata"]["labels"] == {"owner": "someone-else"}
    assert "ownerReferences" not in jobs[0]["metadata"]


def test_operator_restart_mid_run_keeps_one_job_and_the_status(cluster: Cluster) -> None:
    doc = long_job("restart", epochs=40)
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(
            lambda: (cluster.ktj("restart").get("status") or {}).get("progress", {}).get("epoch", 0) >= 2,
            120,
            "a few epochs",
        )
    before = cluster.ktj("restart")["status"]
    with operator(cluster):
        cluster.wait_for(lambda: phase(cluster, "restart") == "Succeeded", 240, "Succeeded after the restart")
    after = cluster.ktj("restart")["status"]
    assert len(cluster.list(JOBS)) == 1
    assert cluster.controller is not None
    assert cluster.controller.pods_started == 1
    assert after["startTime"] == before["startTime"]
    assert (
        conditions({"status": after})["Created"]["lastTransitionTime"]
        == conditions({"status": before})["Created"]["lastTransitionTime"]
    )
    assert finished(after["progress"]) == {"epoch": 40, "epochs": 40, "percent": 100, "secondsRemaining": 0}


def test_deleting_the_resource_removes_job_and_pods(cluster: Cluster) -> None:
    doc = long_job("gone", epochs=200)
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "gone") == "Running", 120, "Running")
        cluster.delete(KTJ, "gone")
        cluster.wait_for(lambda: cluster.get(KTJ, "gone") is None, 30, "the resource to go")
    assert cluster.list(JOBS) == []
    assert cluster.list(CONFIGMAPS) == []
    assert cluster.list(PODS) == []


def test_spec_change_after_start_is_reported_not_applied(cluster: Cluster) -> None:
    doc = long_job("edit", epochs=200)
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "edit") == "Running", 120, "Running")
        job_before = cluster.get(JOBS, "edit-train")
        cluster.patch(KTJ, "edit", {"spec": {"training": {"epochs": 5}}})
        cluster.wait_for(
            lambda: conditions(cluster.ktj("edit")).get("SpecApplied", {}).get("status") == "False",
            30,
            "SpecApplied=False",
        )
        ktj = cluster.ktj("edit")
    cond = conditions(ktj)["SpecApplied"]
    assert cond["reason"] == "ImmutableWhileRunning"
    assert cond["observedGeneration"] == 2
    assert "not changed" in cond["message"]
    assert cluster.get(JOBS, "edit-train")["spec"] == job_before["spec"]
    assert "SpecChangeIgnored" in [e["reason"] for e in cluster.events_for("edit")]


def test_suspended_job_is_queued(cluster: Cluster) -> None:
    doc = tiny_job("waiting", output={"uri": "pvc://models/waiting"}, runPolicy={"queueName": "team-a"})
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "waiting") == "Queued", 30, "Queued")
        job = cluster.get(JOBS, "waiting-train")
        assert job["spec"]["suspend"] is True
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert "Kueue" in cluster.ktj("waiting")["status"]["message"]
        # Kueue admits the Job by un-suspending it.
        cluster.patch(JOBS, "waiting-train", {"spec": {"suspend": False}})
        cluster.wait_for(lambda: phase(cluster, "waiting") == "Succeeded", 120, "Succeeded after admission")
    assert conditions(cluster.ktj("waiting"))["Queued"]["status"] == "False"


def test_suspend_and_resume_without_a_queue(cluster: Cluster) -> None:
    """Without Kueue the operator flips its own Job: created suspended, resumed, suspended mid-run (the pod
    stops), resumed again from the checkpoint, and the spec counts as applied throughout."""
    doc = tiny_job(
        "pausable",
        output={"uri": "pvc://models/pausable"},
        training__epochs=8,
        training__batchSize=16,
        data__train={"synthetic": {"samples": 20000, "inputShape": [8], "classes": 3}},
        runPolicy={"suspend": True},
    )
    assert cluster.emulator is not None
    assert cluster.controller is not None
    emulator, controller = cluster.emulator, cluster.controller
    with operator(cluster):
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "pausable") == "Queued", 30, "Queued while suspended")
        assert cluster.get(JOBS, "pausable-train")["spec"]["suspend"] is True
        assert "spec.runPolicy.suspend" in cluster.ktj("pausable")["status"]["message"]

        cluster.patch(KTJ, "pausable", {"spec": {"runPolicy": {"suspend": False}}})
        cluster.wait_for(lambda: any('"epoch": 2,' in log for log in emulator.pod_logs.values()), 120, "2 epochs")
        assert cluster.get(JOBS, "pausable-train")["spec"]["suspend"] is False

        cluster.patch(KTJ, "pausable", {"spec": {"runPolicy": {"suspend": True}}})
        cluster.wait_for(lambda: phase(cluster, "pausable") == "Queued", 60, "Queued after suspending mid-run")
        cluster.wait_for(lambda: not controller.processes, 30, "the trainer process to stop")

        cluster.patch(KTJ, "pausable", {"spec": {"runPolicy": {"suspend": False}}})
        cluster.wait_for(lambda: phase(cluster, "pausable") == "Succeeded", 180, "Succeeded after resuming")
    status = cluster.ktj("pausable")["status"]
    assert finished(status["progress"]) == {"epoch": 8, "epochs": 8, "percent": 100, "secondsRemaining": 0}
    assert conditions(cluster.ktj("pausable"))["SpecApplied"]["status"] == "True"
    reasons = [e["reason"] for e in cluster.events_for("pausable")]
    assert reasons.count("Resumed") == 2, reasons
    assert reasons.count("Suspended") == 1, reasons
    assert controller.pods_started == 2
    last_pod = max(cluster.list(PODS), key=lambda p: p["metadata"]["resourceVersion"])
    assert '"event": "resumed"' in emulator.pod_logs[("default", last_pod["metadata"]["name"])]


assert os.environ.get("KERAS_OPERATOR_SYNC_INTERVAL") == "1", "tests/conftest.py sets a fast status refresh"


def test_killed_pod_is_retried_and_resumes_from_checkpoint(cluster: Cluster) -> None:
    doc = tiny_job(
        "preempted",
        output={"uri": "pvc://models/preempted"},
        training__epochs=10,
        training__batchSize=16,
        data__train={"synthetic": {"samples": 20000, "inputShape": [8], "classes": 3}},
    )
    with operator(cluster):
        cluster.create(KTJ, doc)
        controller, emulator = cluster.controller, cluster.emulator
        assert controller is not None
        assert emulator is not None
        cluster.wait_for(lambda: any('"epoch": 3,' in log for log in emulator.pod_logs.values()), 120, "3 epochs")

        async def kill() -> int:  # what an OOM kill or a node loss does to the container
            running = [p for p in controller.processes.values() if p.returncode is None]
            for proc in running:
                proc.kill()
            return len(running)

        assert cluster.call(kill()) == 1
        cluster.wait_for(
            lambda: "attempt 2" in (cluster.ktj("preempted").get("status") or {}).get("message", ""),
            60,
            "the Running message to show the retry",
        )
        cluster.wait_for(lambda: phase(cluster, "preempted") == "Succeeded", 180, "Succeeded after the retry")
    assert controller.pods_started == 2
    assert cluster.get(JOBS, "preempted-train")["status"]["failed"] == 1
    assert finished(cluster.ktj("preempted")["status"]["progress"]) == {
        "epoch": 10,
        "epochs": 10,
        "percent": 100,
        "secondsRemaining": 0,
    }
    seen = {
        v["status"]["progress"]["epoch"]
        for v in emulator.objects[KTJ, "default", "preempted"].history
        if v is not None and "progress" in (v.get("status") or {})
    }
    assert len(seen) >= 5, f"status was not kept current while training: saw epochs {sorted(seen)}"
    second_pod = max(cluster.list(PODS), key=lambda p: p["metadata"]["resourceVersion"])
    log = emulator.pod_logs[("default", second_pod["metadata"]["name"])]
    assert '"event": "resumed"' in log


def test_api_errors_are_retried_without_a_second_job(cluster: Cluster) -> None:
    from kmock import action

    from cluster.emulator import Fault

    assert cluster.emulator is not None
    # The first Job create is applied but its response is lost (a 500): the retry adopts it (seen by the
    # watch, or met as a 409), never a second Job.
    cluster.emulator.faults.append(Fault(action.CREATE, JOBS, 500, after_store=True))
    # Status writes fail twice with 503 and once with 429: retried until they land.
    cluster.emulator.faults.append(Fault(action.UPDATE, KTJ, 503, count=2))
    cluster.emulator.faults.append(Fault(action.UPDATE, KTJ, 429, count=1))
    doc = tiny_job("flaky", output={"uri": "pvc://models/flaky"})
    with operator(cluster) as runner:
        cluster.create(KTJ, doc)
        cluster.wait_for(lambda: phase(cluster, "flaky") == "Succeeded", 180, "Succeeded despite API errors")
    assert len(cluster.list(JOBS)) == 1
    assert cluster.controller is not None
    assert cluster.controller.pods_started == 1
    assert [(f.status, f.hits) for f in cluster.emulator.faults] == [
        (f.status, f.count) for f in cluster.emulator.faults
    ]
    assert runner.exception is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("hello", "spec: Input should be a valid dictionary"),
        ({"model": {"layers": "x"}}, "spec.model.layers"),
        ({}, "spec.model: Field required"),
    ],
)
def test_garbage_objects_never_crash_the_operator(cluster: Cluster, spec: object, field: str) -> None:
    with operator(cluster) as runner:
        cluster.create(
            KTJ,
            {
                "apiVersion": "kerasoperator.dev/v1alpha1",
                "kind": "KerasTrainingJob",
                "metadata": {"name": "garbage"},
                "spec": spec,
            },
        )
        cluster.wait_for(lambda: phase(cluster, "garbage") == "Failed", 30, "Failed")
    assert field in conditions(cluster.ktj("garbage"))["Valid"]["message"]
    assert cluster.list(JOBS) == []
    assert runner.exception is None
