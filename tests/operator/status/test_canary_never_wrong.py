"""The canary's state machine and judgement where they must never be wrong (issue #24), table-driven: each
row is a sequence of reconciles, every step's result stored as the next one's previous status."""

from __future__ import annotations

from typing import Any

import pytest

from keras_operator.api.model_service import CanaryAnalysis
from keras_operator.status import canary, serving_metrics
from keras_operator.status.serving_metrics import Totals

ANALYSIS = CanaryAnalysis(min_requests=20, max_error_rate_increase=0.01, max_p99_ratio=1.5, min_p99_increase_ms=5)
HEALTHY = canary.Verdict("healthy", "Healthy", "fine")
UNHEALTHY = canary.Verdict("unhealthy", "ErrorRate", "errors")
QUIET = canary.Verdict("inconclusive", "TooFewRequests", "quiet")

# One reconcile: (trafficPercent, canary pods ready, verdict of a window that closed).
Tick = tuple[int, bool, canary.Verdict | None]


def replay(ticks: list[Tick]) -> list[canary.Step]:
    """Run the reconciles in order, each from the status.canary and CanaryHealthy the one before stored."""
    previous: dict[str, Any] = {}
    healthy: dict[str, Any] | None = None
    steps = []
    for percent, ready, verdict in ticks:
        step = canary.step(
            previous=previous,
            previous_healthy=healthy,
            comparing="a => b",
            percent=percent,
            analysis=ANALYSIS,
            canary_ready=ready,
            stable_on_canary=False,
            verdict=verdict,
        )
        steps.append(step)
        previous = {
            "state": step.state,
            "comparing": "a => b",
            "healthyIntervals": step.healthy_intervals,
            "message": step.message,
        }
        healthy = step.healthy
    return steps


@pytest.mark.parametrize(
    ("scenario", "ticks", "state", "runs", "healthy_reason"),
    [
        (
            "paused then resumed: starts over",
            [(10, True, HEALTHY), (0, False, None), (10, False, None)],
            "Starting",
            True,
            "Starting",
        ),
        (
            "paused then resumed with its pods ready: takes its share again",
            [(10, True, None), (0, False, None), (10, False, None), (10, True, QUIET)],
            "Progressing",
            True,
            "TooFewRequests",
        ),
        (
            "paused then resumed: healthy windows count from zero",
            [(10, True, HEALTHY), (10, True, HEALTHY), (0, False, None), (10, True, HEALTHY)],
            "Progressing",
            True,
            "Healthy",
        ),
        (
            "paused: stays paused",
            [(10, True, None), (0, False, None), (0, False, None)],
            "RolledBack",
            False,
            "NoTraffic",
        ),
        (
            "rolled back by a verdict, then paused and resumed: the rollback holds",
            [(10, True, UNHEALTHY), (0, False, None), (10, True, HEALTHY)],
            "RolledBack",
            False,
            "ErrorRate",
        ),
    ],
)
def test_a_paused_canary_resumes_and_a_rolled_back_one_stays_rolled_back(
    scenario: str, ticks: list[Tick], state: str, runs: bool, healthy_reason: str
) -> None:
    last = replay(ticks)[-1]
    assert (last.state, last.canary_runs, last.healthy["reason"]) == (state, runs, healthy_reason), scenario
    if healthy_reason != "NoTraffic":
        assert "trafficPercent is 0" not in last.healthy["message"] + last.message, scenario


def test_a_resumed_canary_counts_its_healthy_windows_from_zero() -> None:
    steps = replay([(10, True, HEALTHY), (10, True, HEALTHY), (0, False, None), (10, True, HEALTHY)])
    assert [s.healthy_intervals for s in steps] == [1, 2, 0, 1]


def window(requests: int, errors: int = 0, seconds: float = 0.002) -> Totals:
    """`requests` answered in `seconds` each (cumulative buckets like the server's histogram)."""
    bounds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, float("inf"))
    return Totals(requests, errors, {b: float(requests if seconds <= b else 0) for b in bounds})


@pytest.mark.parametrize(
    ("scenario", "stable", "canary_", "missing", "outcome", "reason"),
    [
        ("both sides measured, same client error rate", window(200, 10), window(50, 2), (), "healthy", "Healthy"),
        (
            "the stable side answered nothing: no 0 % to compare with",
            window(0),
            window(50, 2),
            (),
            "inconclusive",
            "TooFewStableRequests",
        ),
        (
            "trafficPercent 100: the stable side takes no requests",
            window(0),
            window(500, 5),
            (),
            "inconclusive",
            "TooFewStableRequests",
        ),
        ("a stable pod's scrape failed", window(200, 10), window(50, 2), ("iris-a",), "inconclusive", "MetricsMissing"),
        (
            "a canary pod's scrape failed, the canary erring",
            window(200),
            window(50, 50),
            ("iris-canary-a",),
            "inconclusive",
            "MetricsMissing",
        ),
        ("a quiet canary", window(200), window(19, 19), (), "inconclusive", "TooFewRequests"),
        ("an erring canary, both sides measured", window(200, 1), window(50, 10), (), "unhealthy", "ErrorRate"),
    ],
)
def test_a_window_with_missing_or_insufficient_data_is_not_judged(
    scenario: str, stable: Totals, canary_: Totals, missing: tuple[str, ...], outcome: str, reason: str
) -> None:
    verdict = canary.judge(stable, canary_, ANALYSIS, missing)
    assert (verdict.outcome, verdict.reason) == (outcome, reason), scenario
    for pod in missing:
        assert pod in verdict.message


A, B = window(100, 1), window(200, 2)


@pytest.mark.parametrize(
    ("scenario", "before", "listed_before", "now", "requests", "missing"),
    [
        ("every pod read at both ends", {"a": A, "b": A}, {"a", "b"}, {"a": B, "b": B}, 200, []),
        ("a scrape failed at the end", {"a": A, "b": A}, {"a", "b"}, {"a": B, "b": None}, 100, ["b"]),
        ("a scrape failed at the start", {"a": A, "b": None}, {"a", "b"}, {"a": B, "b": B}, 100, ["b"]),
        ("a pod unready at the end", {"a": A, "b": A}, {"a", "b"}, {"a": B}, 100, ["b"]),
        ("a pod unready at the start", {"a": A}, {"a", "b"}, {"a": B, "b": B}, 100, ["b"]),
        ("a pod made during the window counts from zero", {"a": A}, {"a"}, {"a": B, "b": A}, 200, []),
        ("a pod unready at both ends took no requests", {"a": A}, {"a", "b"}, {"a": B}, 100, []),
    ],
)
def test_a_pod_without_metrics_at_either_end_is_reported_missing_not_dropped(
    scenario: str,
    before: dict[str, Totals | None],
    listed_before: set[str],
    now: dict[str, Totals | None],
    requests: int,
    missing: list[str],
) -> None:
    total, unknown = serving_metrics.window_totals(before, listed_before, now)
    assert (total.requests, unknown) == (requests, missing), scenario
