"""A canary's rollback is stored (status written) before it is carried out, and a retry after a failed
status write comes to the same decision (issue #24): the controller's reconcile against a fake API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from keras_operator.controllers import serving_reconciler
from keras_operator.runtime.settings import Settings
from keras_operator.status.serving_metrics import Totals

STABLE, CANARY = "pvc://models/stable.keras", "pvc://models/canary.keras"
COMPARING = f"{STABLE} => {CANARY}"


def metrics(requests: int, code: str) -> str:
    return (
        "# TYPE keras_server_requests_total counter\n"
        f'keras_server_requests_total{{endpoint="/v1/models/digits:predict",code="{code}"}} {requests}\n'
    )


class FakeApi:
    """What the reconcile asks of the API server: pods and their /metrics, applies and deletes."""

    def __init__(self) -> None:
        self.canary_code = "500"
        self.deleted: list[tuple[str, str]] = []
        self.applied: list[tuple[str, str]] = []

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        name = "digits-canary-0" if "canary" in selector else "digits-0"
        return [{"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}]

    async def pod_proxy_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        return metrics(100, self.canary_code) if "canary" in pod else metrics(400, "200")

    async def apply(self, obj: dict[str, Any], *_: Any) -> tuple[dict[str, Any], str]:
        self.applied.append((obj["kind"], obj["metadata"]["name"]))
        return obj, "updated"

    async def delete_owned(self, kind: str, namespace: str, name: str, uid: str | None) -> bool:
        self.deleted.append((kind, name))
        return True


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


def view(
    status: dict[str, Any], window: serving_reconciler.Window | None, **analysis: Any
) -> serving_reconciler.ObservedService:
    resource = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits", "namespace": "default", "uid": "kms-uid", "generation": 1},
        "spec": {
            "model": {"uri": STABLE},
            "canary": {"model": {"uri": CANARY}, "trafficPercent": 20, "analysis": {"intervalSeconds": 10, **analysis}},
        },
        "status": status,
    }
    ready = {"status": {"replicas": 1, "readyReplicas": 1}}
    deployment = {"metadata": {"name": "digits", "generation": 1}, "spec": {"replicas": 1}, **ready}
    canary = {"metadata": {"name": "digits-canary", "generation": 1}, "spec": {"replicas": 1}, **ready}
    return serving_reconciler.ObservedService(
        resource=resource, deployment=deployment, canary_deployment=canary, window=window, hpa_absent=True
    )


def open_window() -> serving_reconciler.Window:
    """A window opened long enough ago to close now, every pod read at its start."""
    started = time.monotonic() - 60
    return serving_reconciler.Window(
        COMPARING, started, {"digits-0": Totals()}, {"digits-canary-0": Totals()}, (frozenset(), frozenset())
    )


def test_a_rollback_is_stored_before_the_canary_is_deleted_and_a_failed_write_decides_again(api: FakeApi) -> None:
    progressing = {"modelUri": STABLE, "canary": {"state": "Progressing", "comparing": COMPARING}}
    window = open_window()

    deciding = view(progressing, window)
    decided = asyncio.run(serving_reconciler.reconcile(deciding, Settings(), api))
    assert api.deleted == []
    assert api.applied == []
    assert decided.status["canary"]["state"] == "RolledBack"
    assert decided.requeue_after == 0  # carried out by the next reconcile, once stored

    # The status write failed: the handler keeps the status and the window it had; the retry decides again.
    retried = asyncio.run(serving_reconciler.reconcile(view(progressing, window), Settings(), api))
    assert retried.status["canary"]["state"] == "RolledBack"
    assert api.deleted == []

    # Stored: the next reconcile carries it out from the stored decision (and again after a failure).
    for _ in range(2):
        acting = asyncio.run(serving_reconciler.reconcile(view(decided.status, None), Settings(), api))
        assert acting.status["canary"]["state"] == "RolledBack"
        assert acting.requeue_after is None
    assert api.deleted == [("Deployment", "digits-canary"), ("Deployment", "digits-canary")]


def test_a_promotion_is_stored_before_the_stable_deployment_rolls(api: FakeApi) -> None:
    api.canary_code = "200"
    progressing = {"modelUri": STABLE, "canary": {"state": "Progressing", "comparing": COMPARING}}
    promote = {"autoPromote": True, "successfulIntervals": 1}
    decided = asyncio.run(serving_reconciler.reconcile(view(progressing, open_window(), **promote), Settings(), api))
    assert api.applied == []
    assert decided.status["canary"]["state"] == "Promoting"
    acting = asyncio.run(serving_reconciler.reconcile(view(decided.status, None, **promote), Settings(), api))
    assert acting.status["canary"]["state"] == "Promoting"
    assert ("Deployment", "digits") in api.applied
