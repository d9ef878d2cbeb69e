"""Several pods training together (spec.distribution.workers, backend jax) on the emulated cluster:
the Indexed Job, its headless Service, each worker's env, and the emulated Job controller and DNS
they rely on."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cluster.harness import JOBS, KTJ, PODS, SERVICES, Cluster, operator
from helpers.jobs import tiny_job
from helpers.manifests import validate_k8s
from helpers.weights import epoch_lines, largest_difference, log_lines, weights_of

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


needs_cluster = pytest.mark.skipif(
    not _trainer_forms_a_cluster(),
    reason="the trainer has no keras_trainer.distribute.initialize_cluster yet (multi-process JAX)",
)

# What two processes reach against one with the same global batch: the same float32 sums in another
# order (tests/trainer/test_multiworker.py measures the same bound without the operator).
ATOL = 1e-5


def comparable_job(name: str, workers: int, **spec: Any) -> dict[str, Any]:
    """A training whose result does not depend on how many workers share each global batch: plain SGD,
    no shuffling (each worker would shuffle its own part), a seed, the same data."""
    return tiny_job(
        name,
        backend="jax",
        distribution={"workers": workers},
        output={"uri": f"pvc://models/{name}"},
        **{
            "training__epochs": 3,
            "training__batchSize": 32,
            "training__seed": 1,
            "training__optimizer": {"name": "sgd", "learningRate": 0.05},
            "data__shuffle": False,
            "data__train": {"synthetic": {"samples": 512, "inputShape": [8], "classes": 3}},
            "data__validationSplit": 0.25,
            **spec,
        },
    )


def log_of(cluster: Cluster, pod: dict[str, Any]) -> str:
    assert cluster.emulator is not None
    return cluster.emulator.pod_logs.get(("default", pod["metadata"]["name"]), "")


def all_logs(cluster: Cluster, job: str) -> str:
    """Every pod's log tail, for failure messages."""
    return "\n".join(f"--- {p['metadata']['name']}\n{log_of(cluster, p)[-2500:]}" for p in pods_of(cluster, job))


def phases_seen(cluster: Cluster, name: str) -> list[str]:
    """Every status.phase the resource went through, in order (repeats dropped)."""
    assert cluster.emulator is not None
    seen: list[str] = []
    for version in cluster.emulator.objects[KTJ, "default", name].history:
        found = ((version or {}).get("status") or {}).get("phase")
        if found and (not seen or seen[-1] != found):
            seen.append(found)
    return seen


@needs_cluster
def test_two_workers_end_with_the_weights_of_one_process(cluster: Cluster, tmp_path: Path) -> None:
    """Two pods through the operator train the model one pod trains with the same global batch.

    Worker 1 writes nothing by design (worker 0 alone saves), so its weights are not on disk, and this
    test adds no way to dump them. What shows they are worker 0's: the weights live in one JAX array
    replicated over both processes, every step's loss is the group's, and both workers log the same
    metrics for every epoch (a worker that diverged or skipped steps would log others); worker 0's saved
    model then matches a one-pod run of the same job and seed within float32 rounding, which it could
    not if worker 1 had fed other examples or none, or stepped apart from worker 0."""
    started_at = time.monotonic()
    with operator(cluster):
        duo = cluster.create(KTJ, comparable_job("duo", 2))
        solo = cluster.create(KTJ, comparable_job("solo", 1))
        for name in ("duo", "solo"):
            cluster.wait_for(lambda n=name: phase(cluster, n) in ("Succeeded", "Failed"), 240, f"the end of {name}")
        statuses = {name: cluster.ktj(name)["status"] for name in ("duo", "solo")}
    took = time.monotonic() - started_at
    assert statuses["solo"]["phase"] == "Succeeded", (statuses["solo"], all_logs(cluster, "solo-train"))
    status = statuses["duo"]
    assert status["phase"] == "Succeeded", (status, all_logs(cluster, "duo-train"))
    assert status["progress"]["epoch"] == status["progress"]["epochs"] == 3
    assert status["devices"] == 2  # one CPU device in each pod, both in the model's DataParallel

    # Both workers ran every epoch in step, with the group's metrics.
    pods = by_index(pods_of(cluster, "duo-train"))
    assert sorted(pods) == [0, 1]
    per_worker = {i: [e["metrics"] for e in epoch_lines(log_of(cluster, p))] for i, p in pods.items()}
    assert len(per_worker[0]) == 3, log_of(cluster, pods[0])[-3000:]
    assert per_worker[1] == per_worker[0]
    assert "val_loss" in per_worker[0][-1]

    # Worker 0's model against the single pod's.
    runs = {
        name: cluster.pvc_root / "models" / name / "runs" / obj["metadata"]["uid"]
        for name, obj in (("duo", duo), ("solo", solo))
    }
    two = weights_of(runs["duo"] / "model.keras", tmp_path / "duo.npz")
    one = weights_of(runs["solo"] / "model.keras", tmp_path / "solo.npz")
    difference = largest_difference(one, two)
    print(f"largest weight difference {difference:.2e}; both trainings in {took:.0f} s")  # shown with -s
    assert len(one) == 4
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=ATOL)
    assert statuses["duo"]["metrics"]["val_loss"] == pytest.approx(statuses["solo"]["metrics"]["val_loss"], abs=1e-4)


@needs_cluster
def test_a_killed_worker_restarts_the_group_from_the_checkpoint(cluster: Cluster) -> None:
    """Worker 1's process is SIGKILLed mid-run (an OOM kill, a node lost): worker 0 ends with a lost peer
    (exit 1), the Job replaces both pods, and the new group resumes from worker 0's last checkpoint;
    the training then succeeds and its status never says Failed on the way."""
    epochs = 8
    doc = comparable_job(
        "relay",
        2,
        training__epochs=epochs,
        data__train={"synthetic": {"samples": 4096, "inputShape": [8], "classes": 3}},
        # A killed process resets its connections and worker 0 sees that at once; were it missed, the
        # heartbeat would end worker 0 within seconds here, not the product's minute.
        podTemplate={"spec": {"env": [{"name": "KERAS_TRAINER_HEARTBEAT_TIMEOUT", "value": "10"}]}},
    )
    controller = cluster.controller
    assert controller is not None
    with operator(cluster):
        cluster.create(KTJ, doc)
        first = started(cluster, "relay-train", 2)
        assert first[1]["KERAS_TRAINER_HEARTBEAT_TIMEOUT"] == "10"
        pods = by_index(pods_of(cluster, "relay-train"))
        # Worker 0 logs an epoch once its checkpoint is written.
        cluster.wait_for(lambda: '"epoch": 3,' in log_of(cluster, pods[0]), 120, "worker 0's third epoch")
        victim = pods[1]["metadata"]["uid"]

        async def kill() -> bool:
            proc = controller.processes.get(victim)
            if proc is None or proc.returncode is not None:
                return False
            proc.kill()
            return True

        assert cluster.call(kill()), "worker 1 was no longer running"
        killed_at = time.monotonic()
        first0 = pods[0]["metadata"]["name"]
        cluster.wait_for(
            lambda: ((cluster.get(PODS, first0) or {}).get("status") or {}).get("phase") == "Failed",
            60,
            "worker 0 to end after losing its peer",
        )
        survivor_took = time.monotonic() - killed_at
        cluster.wait_for(lambda: phase(cluster, "relay") in ("Succeeded", "Failed"), 240, "the end of training")
        took = time.monotonic() - killed_at
        status = cluster.ktj("relay")["status"]
    assert status["phase"] == "Succeeded", (status, all_logs(cluster, "relay-train"))
    assert "Failed" not in phases_seen(cluster, "relay"), phases_seen(cluster, "relay")
    assert cluster.emulator is not None
    messages = [
        ((v or {}).get("status") or {}).get("message") or ""
        for v in cluster.emulator.objects[KTJ, "default", "relay"].history
    ]
    # The restart was shown while it happened, counted in failed pods (a group restart fails every worker).
    assert any("restarted after" in m and "failed worker pod" in m for m in messages), messages
    assert not any("attempt 3" in m for m in messages), messages
    assert status["progress"]["epoch"] == status["progress"]["epochs"] == epochs

    # The first worker 0 ended as a lost peer, one line, not as a crash.
    old0 = cluster.get(PODS, first0)
    assert old0 is not None
    terminated = old0["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] not in (0, 2), terminated
    assert "peer worker was lost" in terminated["message"], terminated

    # Both indexes got new pods; the Job counted the failures and stayed within its backoff limit.
    every = pods_of(cluster, "relay-train")
    per_index = {i: [p for p in every if p["metadata"]["annotations"][INDEX_KEY] == str(i)] for i in (0, 1)}
    assert all(len(v) >= 2 for v in per_index.values()), {i: len(v) for i, v in per_index.items()}
    job = cluster.get(JOBS, "relay-train")
    assert job is not None
    assert 2 <= job["status"]["failed"] <= job["spec"]["backoffLimit"], (job["status"], job["spec"]["backoffLimit"])

    # The new worker 0 resumed from the epoch its predecessor's checkpoint held and trained the rest.
    last0 = next(p for p in per_index[0] if p["status"]["phase"] == "Succeeded")
    records = log_lines(log_of(cluster, last0))
    resumed = [e for e in records if e.get("event") == "resumed"]
    assert resumed, log_of(cluster, last0)[-3000:]
    start = resumed[0]["from_epoch"]
    assert 3 <= start < epochs
    assert [e["epoch"] for e in epoch_lines(log_of(cluster, last0))] == list(range(start + 1, epochs + 1))
    print(
        f"worker 0 ended {survivor_took:.1f} s after worker 1 was killed; resumed from epoch {start}; "
        f"succeeded {took:.0f} s after the kill; {job['status']['failed']} pod failures"
    )


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
