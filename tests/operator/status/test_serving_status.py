"""KerasModelService status decisions and the serving figures summed from /metrics (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from keras_operator.status.serving_metrics import quantile, summarize
from keras_operator.status.serving_status import Resolution, observe

NOW = "2026-01-01T00:00:00Z"
RESOLVED = Resolution("s3://b/m.keras", "ModelURI", "serving s3://b/m.keras")


def deployment(
    ready: int, conditions: list[dict[str, Any]], generation: int = 1, seen: int = 1, replicas: int = 2
) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": seen,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "conditions": conditions,
        },
    }


def status(dep: dict[str, Any] | None, resolution: Resolution = RESOLVED) -> dict[str, Any]:
    return observe(
        resolution=resolution,
        deployment=dep,
        url="http://x.ns.svc.cluster.local:8080",
        selector="k=v",
        metrics=None,
        previous={},
        generation=3,
        now=NOW,
    )


AVAILABLE = {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}
PROGRESSING = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}


def test_ready_when_available_and_rolled_out() -> None:
    s = status(deployment(2, [AVAILABLE, PROGRESSING]))
    assert s["phase"] == "Ready"
    assert s["readyReplicas"] == 2
    assert {c["type"]: c["status"] for c in s["conditions"]} == {
        "Valid": "True",
        "ModelResolved": "True",
        "Available": "True",
        "Ready": "True",
    }


def test_loading_while_a_new_generation_rolls_out() -> None:
    assert status(deployment(2, [AVAILABLE, PROGRESSING], generation=2, seen=1))["phase"] == "Loading"
    assert status(deployment(0, [{"type": "Available", "status": "False"}]))["phase"] == "Loading"


def test_progress_deadline_exceeded_is_failed() -> None:
    stuck = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "x" has timed out progressing.',
    }
    s = status(deployment(0, [stuck]))
    assert s["phase"] == "Failed"
    assert "timed out progressing" in s["message"]


def test_unresolved_and_failed_models() -> None:
    waiting = status(None, Resolution(None, "TrainingNotFinished", "waiting for digits: Running"))
    assert waiting["phase"] == "Pending"
    failed = status(None, Resolution(None, "TrainingFailed", "digits failed", failed=True))
    assert failed["phase"] == "Failed"
    assert "modelUri" not in failed


def test_scaled_to_zero() -> None:
    assert status(deployment(0, [AVAILABLE], replicas=0))["phase"] == "Pending"


METRICS = """
keras_server_requests_total{code="200",endpoint="/v1/models/{name}:predict"} 90.0
keras_server_requests_total{code="400",endpoint="/v2/models/{name}/infer"} 10.0
keras_server_requests_total{code="200",endpoint="/v2/health/ready"} 500.0
keras_server_request_duration_seconds_bucket{endpoint="/v1/models/{name}:predict",le="0.005"} 50.0
keras_server_request_duration_seconds_bucket{endpoint="/v1/models/{name}:predict",le="0.01"} 90.0
keras_server_request_duration_seconds_bucket{endpoint="/v1/models/{name}:predict",le="+Inf"} 90.0
keras_server_request_duration_seconds_bucket{endpoint="/v2/models/{name}/infer",le="0.005"} 0.0
keras_server_request_duration_seconds_bucket{endpoint="/v2/models/{name}/infer",le="0.01"} 5.0
keras_server_request_duration_seconds_bucket{endpoint="/v2/models/{name}/infer",le="+Inf"} 10.0
keras_server_request_duration_seconds_bucket{endpoint="/v2/health/ready",le="0.005"} 500.0
keras_server_request_duration_seconds_bucket{endpoint="/v2/health/ready",le="+Inf"} 500.0
"""


def test_summarize_counts_inference_only_across_pods() -> None:
    out = summarize([METRICS, METRICS])
    assert out["requestsTotal"] == 200
    assert out["errorsTotal"] == 20
    # 200 observations: 100 below 5 ms, 190 below 10 ms, 10 above.
    assert out["latencyP50Ms"] == pytest.approx(5.0)
    assert out["latencyP99Ms"] == pytest.approx(10.0)


def test_quantile_interpolates_like_promql() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, float("inf"): 30.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.125)
    assert quantile({}, 0.5) is None


def test_a_pod_answering_garbage_does_not_stop_the_summary() -> None:
    garbage = 'keras_server_requests_total{code="200"} 2.0\\nnot prometheus'  # what a mis-decoded body looked like
    assert summarize([garbage, METRICS]) == summarize([METRICS])
    assert summarize(["<html>502 Bad Gateway</html>"]) == {"requestsTotal": 0, "errorsTotal": 0}
