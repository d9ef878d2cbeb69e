"""The emulated cluster's service-account tokens: minted by the fake kubelet into projected volumes,
reviewed by TokenReview as the API server does (also through the kubernetes client)."""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from cluster.emulator import PODS
from cluster.harness import CONFIGMAPS, JOBS, Cluster
from cluster.tokens import API_AUDIENCE, CREDENTIAL_ID_KEY, POD_NAME_KEY, POD_UID_KEY, token_claims

pytestmark = pytest.mark.slow  # every test starts the emulated cluster (API server, kubelet)

AUDIENCE = "kerasoperator.dev/progress"
UID = "0b9f5b3c-1111-4222-8333-944455556666"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("tokens")
    c = Cluster(pvc_root=root / "pvc", workdir=root).start()
    try:
        yield c
    finally:
        c.stop()


def make_pod(cluster: Cluster, name: str, namespace: str = "ml") -> dict[str, Any]:
    """A pod object (nothing runs it): what a bound token's review checks against."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": []}}
    return cluster.create(PODS, body, namespace)


def review(cluster: Cluster, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    """POST a TokenReview over HTTP, as a client would."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences

    async def _post() -> tuple[int, dict[str, Any]]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        async with emulator.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    status, data = cluster.call(_post())
    assert status == 201, data
    assert data["kind"] == "TokenReview"
    assert data["spec"] == spec
    return dict(data["status"])


def test_a_minted_token_is_a_jwt_bound_to_the_pod(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    token = cluster.emulator.mint_token("ml", "trainer-abc", UID, AUDIENCE, ttl=600, service_account="trainer")
    parts = token.split(".")
    assert len(parts) == 3
    assert all(p and "=" not in p and "+" not in p and "/" not in p for p in parts)  # base64url, unpadded
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    assert header["typ"] == "JWT"
    claims = token_claims(token)
    assert claims["aud"] == [AUDIENCE]
    assert claims["sub"] == "system:serviceaccount:ml:trainer"
    assert 595 <= claims["exp"] - time.time() <= 600
    assert claims["kubernetes.io"]["namespace"] == "ml"
    assert claims["kubernetes.io"]["pod"] == {"name": "trainer-abc", "uid": UID}
    assert claims["kubernetes.io"]["serviceaccount"]["name"] == "trainer"


def test_review_of_a_minted_token_names_the_service_account_and_the_pod(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    pod = make_pod(cluster, "reviewed")
    uid = pod["metadata"]["uid"]
    token = cluster.emulator.mint_token("ml", "reviewed", uid, [AUDIENCE, "other"], service_account="trainer")
    status = review(cluster, token, [AUDIENCE, "third"])
    assert status["authenticated"] is True
    assert status["audiences"] == [AUDIENCE]  # the intersection with what was asked
    user = status["user"]
    assert user["username"] == "system:serviceaccount:ml:trainer"
    assert user["uid"]
    assert "system:serviceaccounts:ml" in user["groups"]
    assert user["extra"][POD_NAME_KEY] == ["reviewed"]
    assert user["extra"][POD_UID_KEY] == [uid]
    assert user["extra"][CREDENTIAL_ID_KEY] == [f"JTI={token_claims(token)['jti']}"]
    assert "error" not in status
    # The same through the helper, without HTTP.
    assert cluster.emulator.review_token(token, [AUDIENCE]) == {**status, "audiences": [AUDIENCE]}


def test_without_audiences_the_review_is_for_the_api_server_audience(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    uid = make_pod(cluster, "default-aud")["metadata"]["uid"]
    plain = cluster.emulator.mint_token("ml", "default-aud", uid)  # like the default service-account token
    assert review(cluster, plain)["audiences"] == [API_AUDIENCE]
    custom = cluster.emulator.mint_token("ml", "default-aud", uid, AUDIENCE)
    status = review(cluster, custom)
    assert status["authenticated"] is False
    assert "invalid for the target audiences" in status["error"]


@pytest.mark.parametrize("case", ["garbage", "forged", "expired", "expired later", "audience", "revoked"])
def test_tokens_that_are_not_authenticated(cluster: Cluster, case: str) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    uid = make_pod(cluster, f"bad-{case.replace(' ', '-')}")["metadata"]["uid"]
    pod = f"bad-{case.replace(' ', '-')}"
    token = {
        "garbage": lambda: "not-a-token",
        "forged": lambda: emulator.forge_token("ml", pod, uid, AUDIENCE),
        "expired": lambda: emulator.mint_token("ml", pod, uid, AUDIENCE, ttl=0),
        "expired later": lambda: emulator.mint_token("ml", pod, uid, AUDIENCE),
        "audience": lambda: emulator.mint_token("ml", pod, uid, "someone-else"),
        "revoked": lambda: emulator.mint_token("ml", pod, uid, AUDIENCE),
    }[case]()
    if case == "expired later":
        assert review(cluster, token, [AUDIENCE])["authenticated"] is True
        emulator.expire_token(token)
    elif case == "revoked":
        emulator.revoke_token(token)
    status = review(cluster, token, [AUDIENCE])
    assert status["authenticated"] is False
    assert status["user"] == {}
    assert "audiences" not in status
    expected = {
        "garbage": "not a JWT",
        "forged": "signature is invalid",
        "expired": "has expired",
        "expired later": "has expired",
        "audience": "invalid for the target audiences",
        "revoked": "invalidated",
    }[case]
    assert expected in status["error"]
    assert status["error"].startswith("[invalid bearer token, ")


def test_a_token_of_a_pod_that_is_gone_or_replaced_is_not_authenticated(cluster: Cluster) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    uid = make_pod(cluster, "gone")["metadata"]["uid"]
    token = emulator.mint_token("ml", "gone", uid, AUDIENCE)
    assert review(cluster, token, [AUDIENCE])["authenticated"] is True
    cluster.delete(PODS, "gone", "ml")
    status = review(cluster, token, [AUDIENCE])
    assert status["authenticated"] is False
    assert 'pod "gone" not found' in status["error"]
    make_pod(cluster, "gone")  # same name, another uid
    assert "does not match" in review(cluster, token, [AUDIENCE])["error"]
    # A token for a pod that never existed is fine when the test turns the pod check off.
    emulator.check_token_pods = False
    try:
        assert emulator.review_token(emulator.mint_token("ml", "nowhere", UID, AUDIENCE), [AUDIENCE])["authenticated"]
    finally:
        emulator.check_token_pods = True


def test_a_review_without_a_token_is_a_bad_request(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    emulator = cluster.emulator

    async def _post() -> int:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}
        async with emulator.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=body) as resp:
            return resp.status

    assert cluster.call(_post()) == 400


def test_faults_can_be_injected_into_token_reviews(cluster: Cluster) -> None:
    from kmock import action

    from cluster.emulator import TOKENREVIEWS, Fault

    emulator = cluster.emulator
    assert emulator is not None
    token = emulator.mint_token("ml", "faulty", UID, AUDIENCE)

    async def _post() -> int:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        async with emulator.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", json=body) as resp:
            return resp.status

    emulator.faults.append(Fault(action.CREATE, TOKENREVIEWS, 503))
    emulator.faults.append(Fault(action.CREATE, TOKENREVIEWS, 500, after_store=True))
    try:
        assert [cluster.call(_post()) for _ in range(3)] == [503, 500, 201]
    finally:
        emulator.faults.clear()


def test_discovery_and_the_kubernetes_client(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    emulator = cluster.emulator

    async def _discover() -> dict[str, Any]:  # the client's get_api_resources() adds a "/" kmock does not route
        async with emulator.request("GET", "/apis/authentication.k8s.io/v1") as resp:
            return dict(await resp.json())

    (tokenreviews,) = [r for r in cluster.call(_discover())["resources"] if r["name"] == "tokenreviews"]
    assert (tokenreviews["kind"], tokenreviews["namespaced"], tokenreviews["verbs"]) == (
        "TokenReview",
        False,
        ["create"],
    )
    config = client.Configuration()
    config.host = cluster.url
    with client.ApiClient(config) as api_client:
        uid = make_pod(cluster, "client")["metadata"]["uid"]
        token = cluster.emulator.mint_token("ml", "client", uid, AUDIENCE)
        api = client.AuthenticationV1Api(api_client)
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
        answer = api.create_token_review(body)
        assert answer.status.authenticated is True
        assert answer.status.audiences == [AUDIENCE]
        assert answer.status.user.username == "system:serviceaccount:ml:default"
        assert answer.status.user.extra[POD_NAME_KEY] == ["client"]
        assert answer.status.user.extra[POD_UID_KEY] == [uid]

        forged = cluster.emulator.forge_token("ml", "client", uid, AUDIENCE)
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=forged, audiences=[AUDIENCE]))
        answer = api.create_token_review(body)
        assert not answer.status.authenticated
        assert answer.status.error


# --- the fake kubelet mounts tokens ---

WATCHER = """
import os, sys, time
path = os.environ["TOKEN_FILE"]
print("ca", open(os.environ["CA_FILE"]).read(), flush=True)
seen = []
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline and len(seen) < 2:
    token = open(path).read()
    if not seen or token != seen[-1]:
        seen.append(token)
        print("token", token, flush=True)
    time.sleep(0.02)
"""


def test_the_kubelet_mounts_a_bound_token_for_projected_volumes_and_rotates_it(cluster: Cluster) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "progress-ca"}}
    cluster.create(CONFIGMAPS, {**configmap, "data": {"ca.crt": "PEM TEXT", "other": "x"}}, "ml")
    mount = "/var/run/secrets/kerasoperator.dev/progress"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "tokened"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "serviceAccountName": "trainer",
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "trainer",
                            "command": [sys.executable, "-c", WATCHER, "20"],
                            "env": [
                                {"name": "TOKEN_FILE", "value": f"{mount}/token"},
                                {"name": "CA_FILE", "value": f"{mount}/ca/ca.crt"},
                            ],
                            "volumeMounts": [{"name": "progress", "mountPath": mount, "readOnly": True}],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "progress",
                            "projected": {
                                "sources": [
                                    {
                                        "serviceAccountToken": {
                                            "audience": AUDIENCE,
                                            "expirationSeconds": 600,
                                            "path": "token",
                                        }
                                    },
                                    {
                                        "configMap": {
                                            "name": "progress-ca",
                                            "items": [{"key": "ca.crt", "path": "ca/ca.crt"}],
                                        }
                                    },
                                ]
                            },
                        }
                    ],
                }
            },
        },
    }
    cluster.create(JOBS, job, "ml")
    pod = cluster.wait_for(
        lambda: next((p for p in cluster.list(PODS, "ml") if p["metadata"]["name"].startswith("tokened-")), None),
        timeout=30,
    )
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]

    def logged_tokens() -> list[str]:
        log = emulator.pod_logs.get(("ml", name), "")
        return [line.split(" ", 1)[1] for line in log.splitlines() if line.startswith("token ")]

    first = cluster.wait_for(logged_tokens, timeout=30, message="the token read by the container")[0]
    assert cluster.pod_tokens(name, "ml") == [first]
    assert "ca PEM TEXT" in emulator.pod_logs[("ml", name)]
    claims = token_claims(first)
    assert claims["aud"] == [AUDIENCE]
    assert 590 <= claims["exp"] - claims["iat"] <= 600
    status = emulator.review_token(first, [AUDIENCE])
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:ml:trainer"
    assert status["user"]["extra"][POD_NAME_KEY] == [name]
    assert status["user"]["extra"][POD_UID_KEY] == [uid]

    (second,) = cluster.rotate_tokens(name, "ml")
    assert second != first
    assert cluster.wait_for(lambda: len(logged_tokens()) == 2 and logged_tokens(), timeout=30)[1] == second
    assert emulator.review_token(second, [AUDIENCE])["authenticated"] is True
    assert emulator.review_token(first, [AUDIENCE])["authenticated"] is True  # valid until it expires
    cluster.wait_for(
        lambda: (cluster.get(JOBS, "tokened", "ml") or {}).get("status", {}).get("succeeded"),
        timeout=30,
        message="the Job to finish",
    )


PUSHER = """
from keras_operator.api.report import EpochReport, TrainingResult
from keras_trainer.progress_push import ProgressPusher

pusher = ProgressPusher.from_env()
pusher.epoch(EpochReport(epoch=1, epochs=1, metrics={"loss": 0.5}))
pusher.result(TrainingResult(phase="Succeeded", epoch=1, epochs=1))
raise SystemExit(0 if pusher.close(10) else 1)
"""


def test_a_pod_pushes_progress_with_its_token_and_the_endpoint_reviews_it(cluster: Cluster) -> None:
    """The contract end to end on the trainer's side: env + projected token in, reviewed pod identity out."""
    emulator = cluster.emulator
    assert emulator is not None
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            status = emulator.review_token(token, [AUDIENCE])
            seen.append((body, status))
            self.send_response(200 if status["authenticated"] else 401)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    mount = "/var/run/secrets/kerasoperator.dev/progress"
    service = "http://keras-operator-progress.keras-system.svc:8443"  # what the pod is told
    cluster.alias_url(service, f"http://127.0.0.1:{server.server_address[1]}")  # where it is served
    try:
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "pusher"},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "serviceAccountName": "trainer",
                        "containers": [
                            {
                                "name": "trainer",
                                "command": [sys.executable, "-c", PUSHER],
                                "env": [
                                    {
                                        "name": "KERAS_OPERATOR_PROGRESS_URL",
                                        "value": f"{service}/v1/namespaces/ml/kerastrainingjobs/x/progress",
                                    },
                                    {"name": "KERAS_OPERATOR_PROGRESS_TOKEN_FILE", "value": f"{mount}/token"},
                                ],
                                "volumeMounts": [{"name": "progress", "mountPath": mount, "readOnly": True}],
                            }
                        ],
                        "volumes": [
                            {
                                "name": "progress",
                                "projected": {
                                    "sources": [{"serviceAccountToken": {"audience": AUDIENCE, "path": "token"}}]
                                },
                            }
                        ],
                    }
                },
            },
        }
        cluster.create(JOBS, job, "ml")
        done = cluster.wait_for(
            lambda: (cluster.get(JOBS, "pusher", "ml") or {}).get("status", {}).get("conditions"),
            timeout=60,
            message="the Job to finish",
        )
    finally:
        server.shutdown()
        server.server_close()
    pod = next(p for p in cluster.list(PODS, "ml") if p["metadata"]["name"].startswith("pusher-"))
    assert done[-1]["type"] == "Complete", emulator.pod_logs.get(("ml", pod["metadata"]["name"]))
    assert [body["type"] for body, _ in seen] == ["epoch", "result"]
    assert seen[0][0]["epoch"] == 1
    for _, status in seen:
        assert status["authenticated"] is True
        assert status["user"]["username"] == "system:serviceaccount:ml:trainer"
        assert status["user"]["extra"][POD_NAME_KEY] == [pod["metadata"]["name"]]
        assert status["user"]["extra"][POD_UID_KEY] == [pod["metadata"]["uid"]]
