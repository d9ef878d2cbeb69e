"""Several pods training together (spec.distribution.workers, backend jax) on the emulated cluster:
the Indexed Job, its headless Service, each worker's env, and the emulated Job controller and DNS
they rely on."""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import pytest

from cluster.harness import JOBS, KTJ, PODS, SERVICES, Cluster, operator
from helpers.jobs import tiny_job
from helpers.manifests import validate_k8s

pytestmark = pytest.mark.e2e
INDEX_KEY = "batch.kubernetes.io/job-completion-index"


def _trainer_forms_a_cluster() -> bool:
    """Whether this trainer joins several processes into one JAX cluster (trainer/keras_trainer/distribute.py)."""
    from keras_trainer import distribute

    return hasattr(distribute, "initialize_cluster")


def workers_job(name: str, workers: int = 2) -> dict[str, Any]:
    return tiny_job(
        name,
        backend="jax",
        distribution={"workers": workers},
        output={"uri": f"pvc://models/{name}"},
        training__epochs=2,
    )


def phase(cluster: Cluster, name: str) -> str | None:
    return (cluster.ktj(name).get("status") or {}).get("phase")


def pods_of(cluster: Cluster, job: str) -> list[dict[str, Any]]:
    return [p for p in cluster.list(PODS) if (p["metadata"].get("labels") or {}).get("job-name") == job]


def by_index(pods: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(p["metadata"]["annotations"][INDEX_KEY]): p for p in pods}


def started(cluster: Cluster, job: str, count: int) -> dict[int, dict[str, Any]]:
    """The first pod of each index, once `count` of them run a process."""

    def check() -> dict[int, dict[str, Any]] | None:
        pods = by_index(sorted(pods_of(cluster, job), key=lambda p: p["metadata"]["creationTimestamp"]))
        envs = {i: cluster.pod_env(p["metadata"]["name"]) for i, p in pods.items()}
        return envs if len(envs) == count and all(envs.values()) else None

    return cluster.wait_for(check, 60, f"{count} worker processes of {job}")


def assert_workers_wired(cluster: Cluster, name: str, uid: str, workers: int) -> None:
    """The Service, the Indexed Job and every worker's env, as the operator made them."""
    service = cluster.get(SERVICES, f"{name}-workers")
    assert service is not None, "no worker Service"
    assert [r["uid"] for r in service["metadata"]["ownerReferences"]] == [uid]
    assert service["spec"]["clusterIP"] == "None"
    job = cluster.get(JOBS, f"{name}-train")
    assert job is not None
    validate_k8s(job)
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == workers
    envs = started(cluster, f"{name}-train", workers)
    pods = by_index(pods_of(cluster, f"{name}-train"))
    assert sorted(envs) == list(range(workers))
    for index, env in envs.items():
        assert pods[index]["spec"]["hostname"] == f"{name}-train-{index}"
        assert pods[index]["spec"]["subdomain"] == f"{name}-workers"
        assert env["KERAS_DISTRIBUTION_PROCESS_ID"] == str(index)
        assert env["KERAS_DISTRIBUTION_NUM_PROCESSES"] == str(workers)
        assert env["KERAS_BACKEND"] == "jax"
    # Worker 0's DNS name, resolved the way cluster DNS would: the same local address for everyone.
    addresses = {env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] for env in envs.values()}
    assert len(addresses) == 1, addresses
    assert addresses.pop().startswith("127.0.0.1:")


def test_the_operator_makes_an_indexed_job_and_its_headless_service(cluster: Cluster) -> None:
    """The operator's side alone: whatever the trainer does with its env."""
    with operator(cluster):
        created = cluster.create(KTJ, workers_job("pair"))
        cluster.wait_for(lambda: cluster.get(JOBS, "pair-train"), 30, "the Job")
        assert_workers_wired(cluster, "pair", created["metadata"]["uid"], 2)
        events = {e["message"] for e in cluster.events_for("pair") if e["reason"] == "Created"}
        assert {"created Service pair-workers", "created Job pair-train"} <= events


@pytest.mark.skipif(
    not _trainer_forms_a_cluster(),
    reason="the trainer has no keras_trainer.distribute.initialize_cluster yet (multi-process JAX)",
)
def test_two_jax_workers_train_one_model(cluster: Cluster) -> None:
    with operator(cluster):
        created = cluster.create(KTJ, workers_job("duo"))
        cluster.wait_for(lambda: cluster.get(JOBS, "duo-train"), 30, "the Job")
        assert_workers_wired(cluster, "duo", created["metadata"]["uid"], 2)
        cluster.wait_for(lambda: phase(cluster, "duo") in ("Succeeded", "Failed"), 300, "the end of training")
        status = cluster.ktj("duo")["status"]
    assert cluster.emulator is not None
    logs = {
        p["metadata"]["name"]: cluster.emulator.pod_logs.get(("default", p["metadata"]["name"]), "")[-3000:]
        for p in pods_of(cluster, "duo-train")
    }
    assert status["phase"] == "Succeeded", (status, logs)
    uid = created["metadata"]["uid"]
    ended = {p["metadata"]["name"]: p["status"].get("containerStatuses") for p in pods_of(cluster, "duo-train")}
    assert status.get("modelUri") == f"pvc://models/duo/runs/{uid}/model.keras", (status, ended)
    assert (cluster.pvc_root / "models" / "duo" / "runs" / uid / "model.keras").is_file()


def test_a_foreign_service_of_that_name_is_a_name_conflict(cluster: Cluster) -> None:
    foreign = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "taken-workers"},
        "spec": {"clusterIP": "None", "selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    cluster.create(SERVICES, foreign)
    with operator(cluster):
        cluster.create(KTJ, workers_job("taken"))
        cluster.wait_for(lambda: phase(cluster, "taken") == "Failed", 30, "the NameConflict")
        ktj = cluster.ktj("taken")
    failed = next(c for c in ktj["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NameConflict", failed
    assert "Service named taken-workers" in failed["message"]
    assert cluster.get(JOBS, "taken-train") is None  # no worker starts without its peers' names
    service = cluster.get(SERVICES, "taken-workers")
    assert service is not None
    assert "ownerReferences" not in service["metadata"]  # left as it was
    assert service["spec"]["selector"] == {"app": "other"}


# --- the emulated Indexed Job controller and pod DNS, on their own ---

# Worker 0 listens on the coordinator address; the others connect and send their index; worker 0
# prints what it received. Stands in for JAX's coordination service.
RENDEZVOUS = textwrap.dedent(
    """
    import os, socket, sys, time
    host, port = os.environ["ADDRESS"].rsplit(":", 1)
    index, n = int(os.environ["INDEX"]), int(os.environ["N"])
    assert os.environ["JOB_COMPLETION_INDEX"] == str(index)
    if index == 0:
        server = socket.create_server(("", int(port)))
        got = []
        for _ in range(n - 1):
            conn, _ = server.accept()
            got.append(conn.recv(16).decode())
        print("peers", sorted(got), flush=True)
        sys.exit(0)
    for _ in range(200):
        try:
            socket.create_connection((host, int(port)), timeout=1).sendall(str(index).encode())
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit(3)
    time.sleep(3600)  # stopped by the Job controller once worker 0 succeeded
    """
)


def indexed_job(name: str, code: str, workers: int, backoff_limit: int = 0, **spec: Any) -> dict[str, Any]:
    env = [
        {"name": "ADDRESS", "value": f"{name}-0.{name}-peers.default.svc:7000"},
        {"name": "N", "value": str(workers)},
        {
            "name": "INDEX",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": workers,
            "parallelism": workers,
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "subdomain": f"{name}-peers",
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "python",
                            "command": [sys.executable, "-c", code],
                            "env": env,
                            "ports": [{"name": "coordinator", "containerPort": 7000}],
                        }
                    ],
                },
            },
            **spec,
        },
    }


def headless(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-peers"},
        "spec": {"clusterIP": "None", "selector": {"app": name}, "ports": [{"name": "coordinator", "port": 7000}]},
    }


def job_condition(cluster: Cluster, name: str) -> str | None:
    job = cluster.get(JOBS, name) or {}
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond["type"] in ("Complete", "Failed") and cond["status"] == "True":
            return str(cond["type"])
    return None


def test_indexed_job_pods_reach_worker_0_by_name_and_end_with_it(cluster: Cluster) -> None:
    cluster.create(SERVICES, headless("ring"))
    job = indexed_job("ring", RENDEZVOUS, 3, successPolicy={"rules": [{"succeededIndexes": "0"}]})
    cluster.create(JOBS, job)
    assert cluster.wait_for(lambda: job_condition(cluster, "ring"), 60, "the Job's end") == "Complete"
    status = cluster.get(JOBS, "ring")["status"]
    assert status["succeeded"] == 1
    assert status["completedIndexes"] == "0"
    assert "SuccessCriteriaMet" in {c["type"] for c in status["conditions"]}
    pods = by_index(pods_of(cluster, "ring"))
    assert sorted(pods) == [0, 1, 2]
    for index, pod in pods.items():
        assert pod["metadata"]["name"].startswith(f"ring-{index}-")
        assert pod["metadata"]["labels"][INDEX_KEY] == str(index)
        assert pod["spec"]["hostname"] == f"ring-{index}"
    assert "peers ['1', '2']" in cluster.emulator.pod_logs[("default", pods[0]["metadata"]["name"])]
    # The others were stopped once worker 0 succeeded, as the Job controller does.
    assert {pods[i]["status"]["phase"] for i in (1, 2)} == {"Failed"}
    addresses = {cluster.pod_env(p["metadata"]["name"])["ADDRESS"] for p in pods.values()}
    assert len(addresses) == 1
    assert addresses.pop().startswith("127.0.0.1:")


def test_without_the_headless_service_worker_0_has_no_name(cluster: Cluster) -> None:
    """Cluster DNS publishes pod names only for a Service that selects them: the operator must make it."""
    cluster.create(JOBS, indexed_job("alone", RENDEZVOUS.replace("range(200)", "range(5)"), 2))
    assert cluster.wait_for(lambda: job_condition(cluster, "alone"), 60, "the Job's end") == "Failed"
    env = cluster.pod_env(by_index(pods_of(cluster, "alone"))[1]["metadata"]["name"])
    assert env is not None
    assert env["ADDRESS"] == "alone-0.alone-peers.default.svc:7000"  # not rewritten: nothing resolves it


def test_indexed_job_without_success_policy_needs_every_index(cluster: Cluster) -> None:
    cluster.create(JOBS, indexed_job("all", "import os; print(os.environ['INDEX'])", 2))
    assert cluster.wait_for(lambda: job_condition(cluster, "all"), 60, "the Job's end") == "Complete"
    status = cluster.get(JOBS, "all")["status"]
    assert (status["succeeded"], status["completedIndexes"]) == (2, "0,1")


def test_a_failing_index_is_retried_until_the_backoff_limit(cluster: Cluster) -> None:
    code = "import os, sys; sys.exit(1 if os.environ['INDEX'] == '1' else 0)"
    cluster.create(JOBS, indexed_job("flaky", code, 2, backoff_limit=2))
    assert cluster.wait_for(lambda: job_condition(cluster, "flaky"), 60, "the Job's end") == "Failed"
    status = cluster.get(JOBS, "flaky")["status"]
    assert status["failed"] == 3
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert len([p for p in pods_of(cluster, "flaky") if p["metadata"]["name"].startswith("flaky-1-")]) == 3
