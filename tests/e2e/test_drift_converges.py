"""Issue #19, point 2: a child the API server stores differently from how the operator wrote it (canonical
quantities, defaults, an env var another field manager added) is not drift, so it is applied once, not
again at every resync (on a real v1.32 server, 46 PATCHes in a few minutes)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cluster.emulator import Emulator
from cluster.harness import DEPLOYMENTS, KMS, Cluster, operator

pytestmark = pytest.mark.e2e

RESYNCS = 4.0  # seconds to watch: tests/conftest.py sets the operator's sync interval to 1 s


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": f"pvc://models/{name}.keras"}, "resources": {"cpu": "0.5", "memory": "1024Mi"}},
    }


def deployment_applies(emulator: Emulator, name: str) -> int:
    return emulator.apply_requests[(DEPLOYMENTS, "default", name)]


def kubectl_set_env(cluster: Cluster, name: str, container: str, env: dict[str, str]) -> None:
    """Add env vars to a container as another field manager ("kubectl", server-side apply)."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": container, "env": [{"name": k, "value": v} for k, v in env.items()]}]}
            }
        },
    }
    path = f"/apis/apps/v1/namespaces/default/deployments/{name}?fieldManager=kubectl"

    async def _apply() -> tuple[int, Any]:
        headers = {"Content-Type": "application/apply-patch+yaml"}
        async with emulator.request("PATCH", path, data=json.dumps(body), headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    code, answer = cluster.call(_apply())
    assert code == 200, answer


def test_a_service_written_non_canonically_converges_and_keeps_another_managers_env(cluster: Cluster) -> None:
    from helpers import models

    (cluster.pvc_root / "models").mkdir(parents=True)
    models.single(cluster.pvc_root / "models" / "m.keras")
    emulator = cluster.emulator
    assert emulator is not None
    with operator(cluster):
        cluster.create(KMS, service("m"))
        cluster.wait_for(
            lambda: ((cluster.get(KMS, "m") or {}).get("status") or {}).get("phase") == "Ready", 120, "Ready"
        )
        container = cluster.get(DEPLOYMENTS, "m")["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}  # stored canonically

        applied = deployment_applies(emulator, "m")
        time.sleep(RESYNCS)
        assert deployment_applies(emulator, "m") == applied, "re-applied although nothing changed"

        kubectl_set_env(cluster, "m", container["name"], {"FOO": "bar"})
        applied = deployment_applies(emulator, "m")
        time.sleep(RESYNCS)
        assert deployment_applies(emulator, "m") == applied, "another manager's env var taken for drift"
        env = cluster.get(DEPLOYMENTS, "m")["spec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "FOO", "value": "bar"} in env

        # Real drift is still corrected: a hand edit of the operator's cpu request is set back.
        cluster.patch(
            DEPLOYMENTS,
            "m",
            {"spec": {"template": {"spec": {"containers": [{**container, "resources": {"requests": {"cpu": "2"}}}]}}}},
        )
        cluster.wait_for(
            lambda: (
                cluster.get(DEPLOYMENTS, "m")["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].get(
                    "cpu"
                )
                == "500m"
            ),
            30,
            "the cpu request set back",
        )
