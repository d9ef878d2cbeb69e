"""Serving figures for status.metrics from the pods' Prometheus text (pure)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

INFERENCE_ENDPOINTS = (":predict", "/infer", ":classify", ":regress")


def _inference(endpoint: str) -> bool:
    return endpoint.endswith(INFERENCE_ENDPOINTS)


def _samples(text: str) -> list[Any]:
    """Every sample of one pod's /metrics, or none when the text is not Prometheus' format: a pod that
    answers garbage (or a proxy's error page) must not stop the status of the whole service."""
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


@dataclass(frozen=True)
class Totals:
    """One pod's (or a sum of pods') inference counters since the server started."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: Mapping[float, float] = field(default_factory=dict)  # upper bound -> cumulative count

    def __add__(self, other: Totals) -> Totals:
        merged = dict(self.buckets)
        for bound, count in other.buckets.items():
            merged[bound] = merged.get(bound, 0.0) + count
        return Totals(self.requests + other.requests, self.errors + other.errors, merged)

    def since(self, before: Totals | None) -> Totals:
        """What happened after `before` was read; all of it when the counters went back (a restarted server)."""
        if before is None or self.requests < before.requests:
            return self
        return Totals(
            self.requests - before.requests,
            self.errors - before.errors,
            {b: c - before.buckets.get(b, 0.0) for b, c in self.buckets.items()},
        )

    def p99_ms(self) -> float | None:
        value = quantile(dict(self.buckets), 0.99)
        return None if value is None else round(value * 1000, 3)

    def error_rate(self) -> float | None:
        return round(self.errors / self.requests, 4) if self.requests else None


def totals(text: str) -> Totals:
    """Requests, errors (4xx and 5xx) and the latency histogram of the inference endpoints in one pod's text."""
    requests = errors = 0.0
    buckets: dict[float, float] = defaultdict(float)
    for sample in _samples(text):
        endpoint = sample.labels.get("endpoint", "")
        if not _inference(endpoint):
            continue
        if sample.name == "keras_server_requests_total":
            requests += sample.value
            if int(sample.labels.get("code", "0")) >= 400:
                errors += sample.value
        elif sample.name == "keras_server_request_duration_seconds_bucket":
            buckets[float(sample.labels["le"])] += sample.value
    return Totals(requests, errors, dict(buckets))


def window_totals(
    before: Mapping[str, Totals | None], listed_before: Set[str], now: Mapping[str, Totals | None]
) -> tuple[Totals, list[str]]:
    """What one side's pods answered over a window, from each ready pod's counters at its start (`before`)
    and its end (`now`; None: the pod was ready but its scrape failed), and the pods whose share is unknown.

    A pod's share is unknown when its scrape failed at either end, when it was ready at the start but not at
    the end (unready, or gone: what it answered meanwhile was never read), or ready at the end after being
    unready at the start (`listed_before`: its counters then were not read). Summing the others would judge
    a part as the whole. A pod that did not exist at the start counts from zero."""
    total, missing = Totals(), []
    for pod in sorted(before.keys() | now.keys()):
        start, end = before.get(pod), now.get(pod)
        if end is None or (start is None and (pod in before or pod in listed_before)):
            missing.append(pod)
        else:
            total += end.since(start)
    return total, missing


def summarize(texts: list[str]) -> dict[str, Any]:
    """Requests, errors and latency quantiles over inference endpoints, summed across pods."""
    total = sum((totals(t) for t in texts), Totals())
    out: dict[str, Any] = {"requestsTotal": int(total.requests), "errorsTotal": int(total.errors)}
    for key, q in (("latencyP50Ms", 0.5), ("latencyP99Ms", 0.99)):
        value = quantile(dict(total.buckets), q)
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
