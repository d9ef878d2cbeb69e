"""Progress pushed by the trainers to the operator's endpoint, authenticated by pod-bound tokens."""

from __future__ import annotations

import pytest
from kmock import action

from cluster.emulator import TOKENREVIEWS, Fault
from cluster.harness import KTJ, PODS, Cluster, operator
from helpers.jobs import synthetic_job
from helpers.progress import post

pytestmark = pytest.mark.e2e
AUDIENCE = "kerasoperator.dev/progress"


def slow_job(name: str, epochs: int = 6) -> dict:
    return synthetic_job(name, epochs, samples=12000, batch_size=16)


def status(cluster: Cluster, name: str) -> dict:
    return cluster.ktj(name).get("status") or {}


def pod_of(cluster: Cluster, name: str) -> dict:
    pods = [p for p in cluster.list(PODS) if p["metadata"]["labels"].get("kerasoperator.dev/training-job") == name]
    assert len(pods) == 1, pods
    return pods[0]


def test_progress_is_pushed_and_no_log_is_read(cluster: Cluster, progress_endpoint: str) -> None:
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, slow_job("pushed"))
        cluster.wait_for(lambda: status(cluster, "pushed").get("phase") == "Succeeded", 180, "Succeeded")
    final = status(cluster, "pushed")
    seen = [
        (v.get("status") or {}).get("progress")
        for v in emulator.objects[KTJ, "default", "pushed"].history
        if v is not None and (v.get("status") or {}).get("phase") == "Running"
    ]
    running = [p for p in seen if p]
    assert len({p["epoch"] for p in running}) >= 3, f"too few epochs reached the status while it ran: {running}"
    assert all(0 <= p["percent"] <= 100 and p["samplesPerSecond"] > 0 for p in running), running
    assert any("secondsRemaining" in p for p in running)
    assert final["progress"]["percent"] == 100
    assert emulator.log_reads == 0, "progress came from pod logs, not from the trainer's pushes"
    job = cluster.get(*_job("pushed"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (
        env["KERAS_OPERATOR_PROGRESS_URL"]
        == f"{progress_endpoint}/v1/namespaces/default/kerastrainingjobs/pushed/progress"
    )
    token_volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "progress-token")
    assert token_volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == AUDIENCE


def _job(name: str) -> tuple:
    from cluster.harness import JOBS

    return JOBS, f"{name}-train"


def test_only_a_pod_of_the_resource_may_report(cluster: Cluster, progress_endpoint: str) -> None:
    """Forged, expired, wrong-audience and other-resource tokens change nothing; the real pod's works."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, slow_job("mine", epochs=40))
        cluster.create(KTJ, slow_job("other", epochs=40))
        for name in ("mine", "other"):
            cluster.wait_for(lambda n=name: status(cluster, n).get("progress"), 120, f"{name}'s first epoch")
        mine, other = pod_of(cluster, "mine"), pod_of(cluster, "other")
        url = f"{progress_endpoint}/v1/namespaces/default/kerastrainingjobs/mine/progress"
        fake = {"type": "epoch", "epoch": 39, "epochs": 40, "metrics": {"loss": 0.0}}
        uid = mine["metadata"]["uid"]

        expired = emulator.mint_token("default", mine["metadata"]["name"], uid, AUDIENCE)
        emulator.expire_token(expired)
        attempts = {
            "no token": (None, 401),
            "not a token": ("garbage", 401),
            "forged": (emulator.forge_token("default", mine["metadata"]["name"], uid, AUDIENCE), 401),
            "expired": (expired, 401),
            "for the API server": (emulator.mint_token("default", mine["metadata"]["name"], uid), 401),
            "another resource's pod": (cluster.pod_tokens(other["metadata"]["name"])[0], 403),
            # bound to a pod that does not exist there: the API server itself refuses it
            "a pod that does not exist": (emulator.mint_token("team-b", mine["metadata"]["name"], uid, AUDIENCE), 401),
        }
        for what, (token, code) in attempts.items():
            got, body = post(url, token, fake)
            assert got == code, (what, got, body)
            assert body.get("error"), (what, body)
        own = cluster.pod_tokens(mine["metadata"]["name"])[0]
        assert post(url, own, {"type": "epoch", "epoch": "x"})[0] == 400
        assert post(url, own, ["not", "a", "report"])[0] == 400
        too_big = post(url, own, {"type": "epoch", "epoch": 1, "epochs": 40, "metrics": {"x" * 100_000: 1.0}})
        assert too_big[0] == 413, too_big
        assert too_big[1].get("error"), too_big
        assert post(f"{progress_endpoint}/v1/nothing/here", own, fake)[0] == 404
        assert status(cluster, "mine")["progress"]["epoch"] < 39, "a refused report reached the status"
        # The pod's own token is accepted (a report from the future shows, to prove the path).
        code, _ = post(url, own, fake)
        assert code == 202
        cluster.wait_for(lambda: status(cluster, "mine")["progress"]["epoch"] >= 39, 30, "the accepted report")
        assert status(cluster, "other")["progress"]["epoch"] < 39


def test_a_token_review_the_api_server_refuses_is_a_clear_answer_not_a_500(
    cluster: Cluster, progress_endpoint: str
) -> None:
    """The operator's TokenReview refused (403: RBAC without tokenreviews; 400): the pod gets a 503 it retries,
    or a 401, each with an error, never an internal error."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    with operator(cluster):
        cluster.create(KTJ, slow_job("mine", epochs=40))
        cluster.wait_for(lambda: status(cluster, "mine").get("progress"), 120, "the first epoch")
        mine = pod_of(cluster, "mine")
        url = f"{progress_endpoint}/v1/namespaces/default/kerastrainingjobs/mine/progress"
        report = {"type": "epoch", "epoch": 1, "epochs": 40, "metrics": {"loss": 1.0}}
        for refused, answer in ((403, 503), (400, 401)):
            emulator.faults.append(Fault(action.CREATE, TOKENREVIEWS, refused))
            # A token never reviewed before: a cached verdict would not reach the API server.
            token = emulator.mint_token("default", mine["metadata"]["name"], mine["metadata"]["uid"], AUDIENCE)
            code, body = post(url, token, report)
            assert code == answer, (refused, code, body)
            assert body.get("error"), body
