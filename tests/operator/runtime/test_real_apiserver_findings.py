"""Issue #19's findings on a real kube-apiserver, at unit scale: kopf's namespace scanning is off when the
operator watches named namespaces; kopf's requests and the Lease's writes name the operator as their field
manager; an API response is read whole (its connection back in the pool for the next call); the emulator's
pod log asks for a container when a pod has several, as the API server does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web

from cluster.emulator import PODS
from cluster.harness import Cluster
from keras_operator.handlers import setup
from keras_operator.runtime import kube
from keras_operator.runtime.credentials import Credentials
from keras_operator.runtime.settings import Settings


@pytest.mark.parametrize(
    ("namespaces", "scanning_off"),
    [
        ("", False),  # the whole cluster: kopf lists no namespaces (it still watches CRDs)
        ("ml", True),
        ("ml, team-b", True),
        ("ml-*", False),  # kopf's patterns match namespaces it must list
        ("!kube-system", False),
        ("team-?", False),
    ],
)
def test_kopf_lists_no_namespaces_when_the_operator_watches_named_ones(namespaces: str, scanning_off: bool) -> None:
    ours = Settings.from_env({"KERAS_OPERATOR_NAMESPACES": namespaces})
    assert ours.named_namespaces is scanning_off
    settings = kopf.OperatorSettings()
    setup.configure(settings, ours)
    assert settings.scanning.disabled is scanning_off


def test_kopfs_requests_name_the_operator_first() -> None:
    """kopf's writes carry no fieldManager: the API server records their User-Agent's first word."""
    info = setup._identified(kopf.ConnectionInfo(server="https://k8s.example:6443", token="t0ken"))
    assert info is not None
    headers = info.as_http_headers()
    assert headers["User-Agent"].split("/")[0] == "keras-operator"
    assert headers["Authorization"] == "Bearer t0ken"
    assert info.server == "https://k8s.example:6443"


async def test_calls_one_after_another_share_one_connection() -> None:
    """Every answer is read whole, so its connection goes back to the pool: a status PATCH whose answer was
    dropped unread once opened a TCP connection per call (a TLS handshake per epoch in a cluster)."""
    peers: list[object] = []

    async def answer(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({"metadata": {"name": "j", "resourceVersion": "2"}, "status": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    api = kube.Api(Credentials(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"), 30.0)  # type: ignore[union-attr]
    try:
        ktj = ("kerasoperator.dev", "v1alpha1", "kerastrainingjobs")
        for epoch in range(5):
            assert await api.patch_status(ktj, "ml", "j", {"epoch": epoch}) == "2"
            assert await api.get("Job", "ml", "j-train") is not None
            await api.post_event({"kind": "Job", "metadata": {"name": "j", "namespace": "ml"}}, "Normal", "E", "m")
        assert len(peers) == 15
        assert len(set(peers)) == 1, f"{len(set(peers))} connections for 15 calls"
    finally:
        await api.close()
        await runner.cleanup()


# --- the emulator's pods/NAME/log ---


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root: Path = tmp_path_factory.mktemp("logs")
    c = Cluster(pvc_root=root / "pvc", workdir=root).start()
    try:
        yield c
    finally:
        c.stop()


def pod_log(cluster: Cluster, pod: str, **params: str) -> tuple[int, Any]:
    assert cluster.emulator is not None
    emulator = cluster.emulator

    async def _get() -> tuple[int, Any]:
        async with emulator.request("GET", f"/api/v1/namespaces/ml/pods/{pod}/log", params=params) as resp:
            text = await resp.text()
            return resp.status, (text if resp.status == 200 else await resp.json(content_type=None))

    return tuple(cluster.call(_get()))  # type: ignore[return-value]


def make_pod(cluster: Cluster, name: str, *containers: str) -> None:
    spec = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
    cluster.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}, "ml")
    assert cluster.emulator is not None
    cluster.emulator.pod_logs[("ml", name)] = "epoch 1\nepoch 2\n"


@pytest.mark.slow
def test_the_log_of_a_pod_with_one_container_needs_no_container_name(cluster: Cluster) -> None:
    make_pod(cluster, "single", "trainer")
    assert pod_log(cluster, "single") == (200, "epoch 1\nepoch 2\n")
    assert pod_log(cluster, "single", container="trainer", tailLines="1") == (200, "epoch 2\n")


@pytest.mark.slow
def test_the_log_of_a_pod_with_a_sidecar_needs_the_container_named(cluster: Cluster) -> None:
    make_pod(cluster, "meshed", "trainer", "istio-proxy")
    assert cluster.emulator is not None
    cluster.emulator.container_logs[("ml", "meshed", "istio-proxy")] = "envoy ready\n"
    code, body = pod_log(cluster, "meshed")
    assert code == 400
    assert body["message"] == "a container name must be specified for pod meshed, choose one of: [trainer istio-proxy]"
    assert pod_log(cluster, "meshed", container="trainer") == (200, "epoch 1\nepoch 2\n")
    assert pod_log(cluster, "meshed", container="istio-proxy") == (200, "envoy ready\n")
    code, body = pod_log(cluster, "meshed", container="nope")
    assert (code, body["message"]) == (400, "container nope is not valid for pod meshed")


@pytest.mark.slow
def test_the_lease_is_written_under_the_operators_field_manager(cluster: Cluster) -> None:
    import kubernetes

    from keras_operator.runtime.leader import Elector, lease_client

    config = kubernetes.client.Configuration()
    config.host = cluster.url
    elector = Elector(lease_client(kubernetes.client.ApiClient(config)), "ml", "lease", "pod-a", 5.0)
    assert elector.try_acquire()  # the Lease created
    assert cluster.emulator is not None
    managers = {m for (_, what, m) in cluster.emulator.write_managers if what == "leases"}
    assert managers == {"keras-operator"}
