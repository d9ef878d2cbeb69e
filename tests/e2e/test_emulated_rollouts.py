"""The emulated cluster's rollouts and traffic: the fake Deployment controller rolls a new template out
without dropping ready capacity, scales without touching other pods, the fake kubelet stops deleted
pods gracefully (preStop, SIGTERM, SIGKILL after the grace period), and the traffic router
(cluster/traffic.py) sends requests where Services and HTTPRoutes say. The pods run a tiny HTTP server:
no operator, no TensorFlow."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.deploymentcontroller import HASH_LABEL
from cluster.harness import DEPLOYMENTS, HTTPROUTES, PODS, SERVICES, Cluster
from cluster.traffic import RouteError

pytestmark = pytest.mark.e2e

# Answers GET (and /healthz, the readiness probe) and POST with its pod and version; on SIGTERM it stops
# listening and lets in-flight requests finish, as the model server drains.
SERVER = """
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = float(os.environ.get("DELAY", "0"))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer(None)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(DELAY)
        self.answer(json.loads(body or b"null"))

    def answer(self, echo):
        data = json.dumps({"pod": os.environ["POD_NAME"], "version": os.environ["VERSION"], "echo": echo}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = False  # server_close() waits for the requests in flight


def stop(*_):
    print("SIGTERM", flush=True)
    threading.Thread(target=server.shutdown).start()


signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("IGNORE_TERM") else stop)
print("serving", flush=True)
server.serve_forever()
server.server_close()
print("drained", flush=True)
"""


@pytest.fixture
def server(tmp_path: Path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


def deployment(
    name: str,
    server: Path,
    labels: dict[str, str],
    replicas: int = 2,
    version: str = "1",
    env: dict[str, str] | None = None,
    pre_stop: dict[str, Any] | None = None,
    grace: int = 10,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "web",
        "image": "python:3.11",
        "command": ["python", str(server), "8080"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [
            {"name": "VERSION", "value": version},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            *({"name": k, "value": v} for k, v in (env or {}).items()),
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    }
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": grace},
            },
        },
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(DEPLOYMENTS, name) or {}).get("status") or {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


def rolled_out(cluster: Cluster, name: str, replicas: int) -> bool:
    s = status(cluster, name)
    generation = (cluster.get(DEPLOYMENTS, name) or {}).get("metadata", {}).get("generation")
    return (
        s.get("observedGeneration") == generation
        and s.get("replicas") == s.get("updatedReplicas") == s.get("readyReplicas") == replicas
        and condition(cluster, name, "Progressing").get("reason") == "NewReplicaSetAvailable"
    )


def pods_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    uid = cluster.get(DEPLOYMENTS, name)["metadata"]["uid"]
    return [p for p in cluster.list(PODS) if any(r["uid"] == uid for r in p["metadata"].get("ownerReferences", []))]


def running(cluster: Cluster, pod_uid: str) -> bool:
    assert cluster.deployments is not None
    processes = cluster.deployments.processes

    async def _running() -> bool:
        return pod_uid in processes

    return bool(cluster.call(_running()))


def watch_status(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    """Every status the Deployment is written with, from now on (recorded in the emulator's loop)."""
    assert cluster.emulator is not None
    seen: list[dict[str, Any]] = []

    def hook(event: str, resource: Any, raw: dict[str, Any]) -> None:
        if resource == DEPLOYMENTS and raw["metadata"]["name"] == name and raw.get("status"):
            seen.append(copy.deepcopy(raw["status"]))

    cluster.emulator.hooks.append(hook)
    return seen


def test_a_rolling_update_under_load_loses_no_request(cluster: Cluster, server: Path) -> None:
    labels = {"app": "web"}
    cluster.create(SERVICES, service("web", labels))
    cluster.create(
        DEPLOYMENTS, deployment("web", server, labels, env={"DELAY": "0.02"}, pre_stop={"sleep": {"seconds": 1}})
    )
    cluster.wait_for(lambda: rolled_out(cluster, "web", 2), 30, "two ready pods")
    old = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods_of(cluster, "web")}
    assert len({p["metadata"]["labels"][HASH_LABEL] for p in pods_of(cluster, "web")}) == 1
    history = watch_status(cluster, "web")
    url = "http://web.default.svc.cluster.local:80/predict"

    with cluster.traffic.load(url, {"x": 1}, clients=3) as load:
        time.sleep(1)
        template = cluster.get(DEPLOYMENTS, "web")["spec"]["template"]
        template["spec"]["containers"][0]["env"][0]["value"] = "2"
        cluster.patch(DEPLOYMENTS, "web", {"spec": {"template": template}})
        cluster.wait_for(lambda: rolled_out(cluster, "web", 2), 60, "the new template rolled out")
        time.sleep(1)

    assert len(load.records) > 50
    assert not load.failures, load.failures[:5]
    answered = {json.loads(r.body)["pod"]: json.loads(r.body)["version"] for r in load.records}
    assert {p for p, v in answered.items() if v == "1"} == set(old)  # the old pods served until they went
    new = {p["metadata"]["name"] for p in pods_of(cluster, "web")}
    assert not new & set(old)
    assert {p for p, v in answered.items() if v == "2"} == new
    # The last old pod drains after its preStop sleep: well within its grace period of 10 s.
    cluster.wait_for(lambda: not any(running(cluster, uid) for uid in old.values()), 8, "the old pods to exit")
    assert all("SIGKILL" not in cluster.pod_signals(uid) for uid in old.values())
    # Ready capacity never went below replicas, and never more than maxSurge pods were added.
    rolling = [s for s in history if s.get("observedGeneration") == 2]
    assert rolling
    assert min(s["readyReplicas"] for s in rolling) >= 2
    assert max(s["replicas"] for s in rolling) <= 3
    assert any(s["updatedReplicas"] == 1 and s["replicas"] == 3 for s in rolling)  # surged one at a time
    final = status(cluster, "web")
    assert final["availableReplicas"] == 2
    assert condition(cluster, "web", "Available")["status"] == "True"
    assert condition(cluster, "web", "Progressing")["status"] == "True"
    during = [s for s in rolling if s["updatedReplicas"] < 2]
    assert all(
        c["reason"] == "ReplicaSetUpdated" for s in during for c in s["conditions"] if c["type"] == "Progressing"
    )
    # The old pods logged their graceful stop: SIGTERM after preStop, then drained.
    assert cluster.emulator is not None
    for name in old:
        log = cluster.emulator.pod_logs[("default", name)]
        assert "SIGTERM" in log
        assert "drained" in log


def test_scaling_adds_and_removes_pods_without_touching_the_others(cluster: Cluster, server: Path) -> None:
    labels = {"app": "scaled"}
    assert cluster.deployments is not None
    cluster.create(DEPLOYMENTS, deployment("scaled", server, labels, replicas=1))
    cluster.wait_for(lambda: rolled_out(cluster, "scaled", 1), 30, "one ready pod")
    (first,) = pods_of(cluster, "scaled")
    started = cluster.deployments.pods_started

    cluster.patch(DEPLOYMENTS, "scaled", {"spec": {"replicas": 3}})
    cluster.wait_for(lambda: rolled_out(cluster, "scaled", 3), 30, "three ready pods")
    assert cluster.deployments.pods_started == started + 2
    three = pods_of(cluster, "scaled")
    assert first["metadata"]["uid"] in {p["metadata"]["uid"] for p in three}
    assert running(cluster, first["metadata"]["uid"])

    cluster.patch(DEPLOYMENTS, "scaled", {"spec": {"replicas": 1}})
    cluster.wait_for(lambda: rolled_out(cluster, "scaled", 1), 30, "one pod left")
    (left,) = pods_of(cluster, "scaled")
    assert left["metadata"]["uid"] in {p["metadata"]["uid"] for p in three}
    assert cluster.deployments.pods_started == started + 2  # nothing restarted

    cluster.patch(DEPLOYMENTS, "scaled", {"spec": {"replicas": 0}})
    cluster.wait_for(lambda: rolled_out(cluster, "scaled", 0), 30, "no pods")
    assert pods_of(cluster, "scaled") == []
    assert condition(cluster, "scaled", "Available")["status"] == "True"
    cluster.wait_for(lambda: not running(cluster, left["metadata"]["uid"]), 15, "the last process to stop")

    cluster.patch(DEPLOYMENTS, "scaled", {"spec": {"replicas": 1}})
    cluster.wait_for(lambda: rolled_out(cluster, "scaled", 1), 30, "one pod again")
    (again,) = pods_of(cluster, "scaled")
    cluster.delete(DEPLOYMENTS, "scaled")
    cluster.wait_for(lambda: cluster.get(PODS, again["metadata"]["name"]) is None, 10, "the pod deleted")
    cluster.wait_for(lambda: not running(cluster, again["metadata"]["uid"]), 15, "its process stopped")


def test_graceful_deletion_runs_pre_stop_then_sigterm_then_sigkill(
    cluster: Cluster, server: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pre-stop-ran"
    cluster.create(DEPLOYMENTS, deployment("slow", server, {"app": "slow"}, 1, pre_stop={"sleep": {"seconds": 1.5}}))
    hook = {"exec": {"command": ["python", "-c", f"open({str(marker)!r}, 'w').write('ok')"]}}
    stubborn = deployment("stubborn", server, {"app": "stubborn"}, 1, env={"IGNORE_TERM": "1"}, pre_stop=hook, grace=1)
    cluster.create(DEPLOYMENTS, stubborn)
    cluster.wait_for(lambda: rolled_out(cluster, "slow", 1) and rolled_out(cluster, "stubborn", 1), 30, "ready")
    (slow,) = pods_of(cluster, "slow")
    (hard,) = pods_of(cluster, "stubborn")

    deleted = time.monotonic()
    cluster.delete(PODS, slow["metadata"]["name"])
    cluster.delete(PODS, hard["metadata"]["name"])
    # Gone from the API (and the endpoints) at once, while the processes still run.
    assert cluster.traffic.endpoints("slow") == [] or slow["metadata"]["name"] not in {
        e.pod for e in cluster.traffic.endpoints("slow")
    }
    assert running(cluster, slow["metadata"]["uid"])
    cluster.wait_for(lambda: not running(cluster, slow["metadata"]["uid"]), 15, "the slow pod to stop")
    cluster.wait_for(lambda: not running(cluster, hard["metadata"]["uid"]), 15, "the stubborn pod to be killed")

    signals = cluster.pod_signals(slow["metadata"]["uid"])
    assert signals["SIGTERM"] - deleted >= 1.5  # preStop's sleep came first
    assert "SIGKILL" not in signals  # it exited on SIGTERM, well within its 10 s
    signals = cluster.pod_signals(hard["metadata"]["uid"])
    assert marker.read_text() == "ok"
    assert 0.9 <= signals["SIGKILL"] - deleted <= 3  # the 1 s grace period counts from the deletion
    assert signals["SIGTERM"] <= signals["SIGKILL"]
    # The controller replaced both pods (a deleted pod is not a scale-down).
    cluster.wait_for(lambda: rolled_out(cluster, "slow", 1) and rolled_out(cluster, "stubborn", 1), 30, "replaced")


def apply(cluster: Cluster, route: dict[str, Any], manager: str = "test") -> None:
    """Server-side apply, as kubectl apply --server-side sends it."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    name = route["metadata"]["name"]
    path = f"/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/{name}?fieldManager={manager}"

    async def _apply() -> tuple[int, Any]:
        headers = {"Content-Type": "application/apply-patch+yaml"}
        async with emulator.request("PATCH", path, data=json.dumps(route), headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    code, body = cluster.call(_apply())
    assert code in (200, 201), body


def route(weights: dict[str, int], parent: dict[str, Any], hostnames: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "parentRefs": [parent],
        "rules": [{"backendRefs": [{"name": n, "port": 80, "weight": w} for n, w in weights.items()]}],
    }
    if hostnames:
        spec["hostnames"] = hostnames
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "split" if "kind" in parent else "public"},
        "spec": spec,
    }


def test_httproute_weights_split_the_traffic(cluster: Cluster, server: Path) -> None:
    """Two Deployments whose pods share the parent Service's label (as a canary's do), each with its own
    Service; an HTTPRoute on the parent Service splits requests 80/20 between them."""
    for track in ("stable", "canary"):
        labels = {"app": "model", "track": track}
        cluster.create(DEPLOYMENTS, deployment(f"model-{track}", server, labels, version=track))
        cluster.create(SERVICES, service(f"model-{track}", labels))
    cluster.create(SERVICES, service("model", {"app": "model"}))
    cluster.wait_for(
        lambda: rolled_out(cluster, "model-stable", 2) and rolled_out(cluster, "model-canary", 2), 30, "both ready"
    )
    # Overlapping selectors: each Deployment counts only the pods it owns.
    assert status(cluster, "model-stable")["replicas"] == status(cluster, "model-canary")["replicas"] == 2
    url = "http://model.default.svc.cluster.local/predict"
    assert len(cluster.traffic.endpoints("model")) == 4

    mesh = {"group": "", "kind": "Service", "name": "model", "port": 80}
    apply(cluster, route({"model-stable": 80, "model-canary": 20}, mesh))
    sent = cluster.traffic.load(url, {"x": 1}, clients=4, requests=1000).wait(timeout=120)
    assert len(sent) == 1000
    records = cluster.traffic.records[-1000:]
    assert all(r.ok for r in records), [r for r in records if not r.ok][:3]
    canary = [r for r in records if r.backend == "model-canary"]
    assert 0.14 <= len(canary) / 1000 <= 0.26
    assert all(json.loads(r.body)["version"] == r.backend.removeprefix("model-") for r in records if r.backend)
    assert len({r.pod for r in records}) == 4  # and every pod of each side got some

    # Re-applied with weight 0 for the canary: none of it goes there.
    apply(cluster, route({"model-stable": 100, "model-canary": 0}, mesh))
    before = len(cluster.traffic.records)
    cluster.traffic.load(url, {"x": 1}, clients=2, requests=200).wait(timeout=60)
    assert {r.backend for r in cluster.traffic.records[before:]} == {"model-stable"}
    stored = cluster.get(HTTPROUTES, "split")
    assert [b["weight"] for b in stored["spec"]["rules"][0]["backendRefs"]] == [100, 0]

    # Without the route, the parent Service's own endpoints: both sides.
    cluster.delete(HTTPROUTES, "split")
    answered = {cluster.traffic.request("GET", url).endpoint.service for _ in range(100)}
    assert answered == {"model"}
    versions = {cluster.traffic.request("GET", url).json()["version"] for _ in range(100)}
    assert versions == {"stable", "canary"}

    # Through a Gateway: routes attached to it, by hostname.
    gateway = {"name": "gw", "namespace": "default"}
    apply(cluster, route({"model-canary": 1}, gateway, hostnames=["models.example.com"]))
    response = cluster.traffic.request("GET", "http://models.example.com/v1", gateway=("gw", "default"))
    assert response.endpoint is not None
    assert response.endpoint.service == "model-canary"
    with pytest.raises(RouteError) as refused:
        cluster.traffic.request("GET", "http://other.example.com/v1", gateway=("gw", "default"))
    assert refused.value.status == 404


def test_no_endpoints_and_missing_backends(cluster: Cluster, server: Path) -> None:
    cluster.create(SERVICES, service("empty", {"app": "nothing"}))
    with pytest.raises(RouteError) as refused:
        cluster.traffic.request("GET", "http://empty.default.svc/")
    assert refused.value.status == 0
    mesh = {"kind": "Service", "name": "empty"}
    apply(cluster, route({"ghost": 1}, mesh))
    with pytest.raises(RouteError) as missing:
        cluster.traffic.request("GET", "http://empty.default.svc/")
    assert missing.value.status == 500
    apply(cluster, route({"empty": 1}, mesh))
    with pytest.raises(RouteError) as unavailable:
        cluster.traffic.request("GET", "http://empty.default.svc/")
    assert unavailable.value.status == 503
    assert [r.status for r in cluster.traffic.records] == [0, 500, 503]


def test_service_url_is_a_ready_pod(cluster: Cluster, server: Path) -> None:
    from helpers.server import get_json

    cluster.create(SERVICES, service("one", {"app": "one"}))
    cluster.create(DEPLOYMENTS, deployment("one", server, {"app": "one"}, replicas=1))
    cluster.wait_for(lambda: rolled_out(cluster, "one", 1), 30, "ready")
    code, body = get_json(cluster.service_url("http://one.default.svc.cluster.local:80") + "/")
    assert code == 200
    assert body["pod"] == pods_of(cluster, "one")[0]["metadata"]["name"]


def test_concurrent_clients_share_the_records(cluster: Cluster, server: Path) -> None:
    """Load's records and the router's agree, whichever thread sent them."""
    cluster.create(SERVICES, service("echo", {"app": "echo"}))
    cluster.create(DEPLOYMENTS, deployment("echo", server, {"app": "echo"}, replicas=1))
    cluster.wait_for(lambda: rolled_out(cluster, "echo", 1), 30, "ready")
    with cluster.traffic.load("http://echo.default.svc/", {"n": 1}, clients=3, duration=1.0) as load:
        threading.Event().wait(0.5)
    records = load.wait()
    assert records
    assert sorted(r.started for r in records) == sorted(r.started for r in cluster.traffic.records)
    assert all(json.loads(r.body)["echo"] == {"n": 1} for r in records)


@pytest.mark.parametrize(
    ("rolling", "replicas", "limits"),
    [
        ({"maxSurge": 1, "maxUnavailable": 0}, 3, (1, 0)),
        ({}, 4, (1, 1)),  # 25 % each by default
        ({}, 1, (1, 0)),  # surge rounds up, unavailable down
        ({"maxSurge": "50%", "maxUnavailable": "50%"}, 3, (2, 1)),
        ({"maxSurge": 0, "maxUnavailable": 0}, 2, (0, 1)),  # never both zero
    ],
)
def test_rolling_limits(rolling: dict[str, Any], replicas: int, limits: tuple[int, int]) -> None:
    from cluster.deploymentcontroller import rolling_limits

    assert rolling_limits({"strategy": {"type": "RollingUpdate", "rollingUpdate": rolling}}, replicas) == limits


def test_recreate_starts_new_pods_once_the_old_ones_stopped(cluster: Cluster, server: Path) -> None:
    spec = deployment("again", server, {"app": "again"}, replicas=2, pre_stop={"sleep": {"seconds": 1}})
    spec["spec"]["strategy"] = {"type": "Recreate"}
    cluster.create(DEPLOYMENTS, spec)
    cluster.wait_for(lambda: rolled_out(cluster, "again", 2), 30, "ready")
    old = pods_of(cluster, "again")
    template = cluster.get(DEPLOYMENTS, "again")["spec"]["template"]
    template["spec"]["containers"][0]["env"][0]["value"] = "2"
    cluster.patch(DEPLOYMENTS, "again", {"spec": {"template": template}})
    cluster.wait_for(lambda: pods_of(cluster, "again") != old and pods_of(cluster, "again"), 30, "new pods")
    stopped = [cluster.pod_signals(p["metadata"]["uid"]) for p in old]
    assert all(not running(cluster, p["metadata"]["uid"]) for p in old)  # before any new pod existed
    assert all("SIGTERM" in s for s in stopped)
    cluster.wait_for(lambda: rolled_out(cluster, "again", 2), 30, "rolled out")
