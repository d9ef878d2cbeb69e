"""Canary decisions on the emulated cluster that must never go wrong (issue #24): a rollback is stored before
it is carried out, so status writes that fail meanwhile neither lose it nor bring the canary back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from kmock import action
from kmock._internal import rendering

from cluster.emulator import OPERATOR_AGENTS, Fault
from cluster.harness import DEPLOYMENTS, KMS, Cluster, operator
from cluster.traffic import Router
from helpers import models

pytestmark = pytest.mark.e2e

URL = "http://digits.default.svc.cluster.local:8080/v1/models/digits:predict"
ROWS = {"instances": [[0.1, 0.2, 0.3, 0.4]]}
ALWAYS = 10**9


@attrs.define
class Refusing(Fault):
    """A fault that keeps the bodies of the requests it refused."""

    bodies: list[Any] = attrs.field(factory=list)

    def strikes(self, request: rendering.Request) -> bool:
        hit = super().strikes(request)
        if hit:
            self.bodies.append(request.data)
        return hit


def canary_status(cluster: Cluster) -> dict[str, Any]:
    return ((cluster.get(KMS, "digits") or {}).get("status") or {}).get("canary") or {}


def healthy_reason(cluster: Cluster) -> str | None:
    found = ((cluster.get(KMS, "digits") or {}).get("status") or {}).get("conditions") or []
    return next((c.get("reason") for c in found if c["type"] == "CanaryHealthy"), None)


def refused_state(body: Any) -> Any:
    return ((body or {}).get("status") or {}).get("canary", {}) if isinstance(body, dict) else None


def test_a_rollback_whose_status_write_fails_is_neither_carried_out_nor_lost(cluster: Cluster) -> None:
    root = cluster.pvc_root / "models"
    models.constant(root / "stable" / "model.keras", 1.0)
    broken = root / "broken" / "model.keras"  # 5 features, clients send 4: every request a 400
    _five_features(broken)
    analysis = {"intervalSeconds": 5, "minRequests": 5}
    spec = {
        "model": {"uri": "pvc://models/stable/model.keras"},
        "server": {"batching": {"maxBatchSize": 4, "maxLatencyMs": 1}},
        "canary": {"model": {"uri": "pvc://models/broken/model.keras"}, "trafficPercent": 50, "analysis": analysis},
    }
    router = Router(cluster, seed=3)
    assert cluster.emulator is not None
    with operator(cluster):
        cluster.create(
            KMS,
            {
                "apiVersion": "kerasoperator.dev/v1alpha1",
                "kind": "KerasModelService",
                "metadata": {"name": "digits"},
                "spec": spec,
            },
        )
        cluster.wait_for(lambda: canary_status(cluster).get("state") == "Progressing", 180, "the canary takes traffic")
        # A window closed on whole data (no load yet: too few requests), so the one now open has every pod.
        cluster.wait_for(lambda: healthy_reason(cluster) == "TooFewRequests", 60, "a window closed with no load")
        refusing = Refusing(action.UPDATE, KMS, 503, count=ALWAYS, agents=OPERATOR_AGENTS)
        cluster.emulator.faults.append(refusing)
        with router.load(URL, ROWS, clients=3):
            cluster.wait_for(
                lambda: any((refused_state(b) or {}).get("state") == "RolledBack" for b in refusing.bodies),
                120,
                "a rollback decided, its status write refused",
            )
            # Not stored, so not carried out: the canary still runs.
            canary = cluster.get(DEPLOYMENTS, "digits-canary")
            assert canary is not None
            assert not canary["metadata"].get("deletionTimestamp")

            cluster.emulator.faults.remove(refusing)
            states: list[str] = []

            def rolled_back_and_gone() -> bool:
                states.append(str(canary_status(cluster).get("state")))
                return states[-1] == "RolledBack" and cluster.get(DEPLOYMENTS, "digits-canary") is None

            cluster.wait_for(rolled_back_and_gone, 120, "the stored rollback carried out")
        states.append(str(canary_status(cluster).get("state")))
        assert set(states) <= {"Progressing", "RolledBack"}, states
        assert "Starting" not in states
        assert cluster.get(DEPLOYMENTS, "digits-canary") is None  # not made again


def _five_features(path: Path) -> None:
    import keras

    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)]).save(path)


def test_a_paused_canary_resumes_when_its_traffic_comes_back(cluster: Cluster) -> None:
    root = cluster.pvc_root / "models"
    models.constant(root / "stable" / "model.keras", 1.0)
    models.constant(root / "better" / "model.keras", 2.0)
    spec = {
        "model": {"uri": "pvc://models/stable/model.keras"},
        "canary": {"model": {"uri": "pvc://models/better/model.keras"}, "trafficPercent": 50},
    }
    with operator(cluster):
        cluster.create(
            KMS,
            {
                "apiVersion": "kerasoperator.dev/v1alpha1",
                "kind": "KerasModelService",
                "metadata": {"name": "digits"},
                "spec": spec,
            },
        )
        cluster.wait_for(lambda: canary_status(cluster).get("state") == "Progressing", 180, "the canary takes traffic")

        cluster.patch(KMS, "digits", {"spec": {"canary": {"trafficPercent": 0}}})
        cluster.wait_for(lambda: healthy_reason(cluster) == "NoTraffic", 60, "paused")
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "digits-canary") is None, 60, "the canary's pods gone")

        cluster.patch(KMS, "digits", {"spec": {"canary": {"trafficPercent": 50}}})
        cluster.wait_for(lambda: canary_status(cluster).get("state") == "Progressing", 180, "the canary resumed")
        assert cluster.get(DEPLOYMENTS, "digits-canary") is not None
        assert healthy_reason(cluster) != "NoTraffic"
        assert "trafficPercent is 0" not in canary_status(cluster)["message"]
