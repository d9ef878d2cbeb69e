"""KerasModelService objects and their status, as the emulated-cluster tests write and read them."""

from __future__ import annotations

from typing import Any

from cluster.harness import KMS, Cluster


def service(name: str, model: dict[str, Any], **spec: object) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": name},
        "spec": {"model": model, **spec},
    }


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.get(KMS, name) or {}).get("status") or {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


def idle_service(name: str) -> dict[str, Any]:
    """A service with no pods (replicas 0): its Deployment, Service and status, and nothing to serve."""
    return service(name, {"uri": f"pvc://models/{name}.keras"}, replicas=0)
