"""What a real API server does to the operator that the emulator long let pass (issue #19, found on a real
kube-apiserver v1.32): refused namespace lists without a cluster-scoped grant, and the pod-log request that
must name its container once a mutating webhook injected a sidecar."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.harness import KTJ, PODS, Cluster, operator
from helpers.jobs import synthetic_job, tiny_job

pytestmark = pytest.mark.e2e

SIDECAR = {"name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.24.0", "args": ["proxy", "sidecar"]}


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.ktj(name).get("status") or {}


def test_watching_named_namespaces_never_lists_the_clusters_namespaces(cluster: Cluster) -> None:
    """As the chart's watchNamespaces runs it: no grant to list namespaces, which kopf asks for unless its
    scanning is off, retrying each 403 (~54 s on a real server) before it serves anything."""
    assert cluster.emulator is not None
    with operator(cluster, namespaces=("default",)):
        cluster.create(KTJ, tiny_job("scoped", output={"uri": "pvc://models/scoped"}, runPolicy={"suspend": True}))
        cluster.wait_for(lambda: status(cluster, "scoped").get("phase") == "Queued", 60, "scoped: Queued")
    assert cluster.emulator.forbidden == {}, "the operator asked for what the namespaced chart does not grant"


def _seen_running_at_epoch(cluster: Cluster, name: str, epoch: int) -> bool:
    """Whether any version of the resource showed it Running with at least `epoch` epochs done (read in the
    emulator's loop: a version written between two polls counts too)."""
    assert cluster.emulator is not None
    emulator = cluster.emulator

    async def _seen() -> bool:
        key = (KTJ, "default", name)
        if key not in emulator.objects:
            return False
        return any(
            (v.get("status") or {}).get("phase") == "Running"
            and ((v.get("status") or {}).get("progress") or {}).get("epoch", 0) >= epoch
            for v in emulator.objects[key].history
            if v is not None
        )

    return bool(cluster.call(_seen()))


def test_progress_comes_from_the_trainers_log_beside_an_injected_sidecar(cluster: Cluster) -> None:
    """The pod-log fallback (no progress endpoint: tests/conftest.py) on a pod with a mesh proxy injected: the
    API server answers a log request that names no container 400, so the operator must name the trainer's."""
    assert cluster.controller is not None
    cluster.controller.sidecars.append(SIDECAR)
    with operator(cluster):
        cluster.create(KTJ, synthetic_job("meshed", epochs=40))
        cluster.wait_for(
            lambda: _seen_running_at_epoch(cluster, "meshed", 2), 120, "epochs read from the trainer's log"
        )
    pods = cluster.list(PODS)
    assert [[c["name"] for c in p["spec"]["containers"]] for p in pods] == [["trainer", "istio-proxy"]]
