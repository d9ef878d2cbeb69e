"""Serving figures for status.metrics from the pods' Prometheus text (pure)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

INFERENCE_ENDPOINTS = (":predict", "/infer")


def _inference(endpoint: str) -> bool:
    return endpoint.endswith(INFERENCE_ENDPOINTS)


def _samples(text: str) -> list[Any]:
    """Every sample of one pod's /metrics, or none when the text is not Prometheus' format: a pod that
    answers garbage (or a proxy's error page) must not stop the status of the whole service."""
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def summarize(texts: list[str]) -> dict[str, Any]:
    """Requests, errors and latency quantiles over inference endpoints, summed across pods."""
    requests = errors = 0.0
    buckets: dict[float, float] = defaultdict(float)
    for sample in (s for text in texts for s in _samples(text)):
        endpoint = sample.labels.get("endpoint", "")
        if not _inference(endpoint):
            continue
        if sample.name == "keras_server_requests_total":
            requests += sample.value
            if int(sample.labels.get("code", "0")) >= 400:
                errors += sample.value
        elif sample.name == "keras_server_request_duration_seconds_bucket":
            buckets[float(sample.labels["le"])] += sample.value
    out: dict[str, Any] = {"requestsTotal": int(requests), "errorsTotal": int(errors)}
    for key, q in (("latencyP50Ms", 0.5), ("latencyP99Ms", 0.99)):
        value = quantile(buckets, q)
        if value is not None:
            out[key] = round(value * 1000, 3)
    return out


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Like PromQL's histogram_quantile: linear interpolation within the bucket holding the rank."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] == 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # the rank lies above the highest finite bucket
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 0.0)
        lower_bound, lower_count = bound, count
    return None
