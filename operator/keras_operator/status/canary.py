"""A canary rollout's state, one step at a time, and its judgement (pure functions).

The state lives in status.canary, so a restarted operator carries on where the last one stopped:
Starting (the canary's pods are not ready yet: it takes no traffic) -> Progressing (it takes its share;
each analysis window is judged) -> RolledBack (a window was unhealthy), or with autoPromote -> Promoting
(the stable Deployment rolls to the canary's model while both still serve) -> Promoted (the stable side
serves it; the canary's pods go). RolledBack and Promoted hold for as long as the two models compared
stay the same: only a new canary model (or its removal) starts over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from keras_operator.api.model_service import CanaryAnalysis, CanaryState
from keras_operator.status import conditions
from keras_operator.status.events import Event
from keras_operator.status.serving_metrics import Totals

DECIDED: frozenset[str] = frozenset({"RolledBack", "Promoting", "Promoted"})
NO_TRAFFIC = "NoTraffic"  # CanaryHealthy's reason while trafficPercent is 0: paused, not judged


@dataclass(frozen=True)
class Verdict:
    """One analysis window: healthy, unhealthy (the canary loses) or inconclusive (too few requests)."""

    outcome: Literal["healthy", "unhealthy", "inconclusive"]
    reason: str
    message: str


def _percent(rate: float) -> str:
    return f"{rate * 100:.1f} %"


def judge(stable: Totals, canary: Totals, analysis: CanaryAnalysis, missing: Sequence[str] = ()) -> Verdict:
    """The canary against the stable side over one window, by the spec's thresholds. A window is judged only
    on whole data: metrics of every pod (`missing`: pods whose share is unknown), and at least minRequests on
    each side (a side with no requests has no error rate; taking it as 0 % would roll back a canary whose
    clients err as often as the stable side's)."""
    if missing:
        return Verdict(
            "inconclusive",
            "MetricsMissing",
            f"no metrics for the whole window from pod(s) {', '.join(missing)} (a failed scrape, or a pod "
            "not ready at one end): not judged",
        )
    if canary.requests < analysis.min_requests:
        return Verdict(
            "inconclusive",
            "TooFewRequests",
            f"the canary answered {int(canary.requests)} requests in the last window, fewer than "
            f"{analysis.min_requests}: not judged",
        )
    if stable.requests < analysis.min_requests:
        return Verdict(
            "inconclusive",
            "TooFewStableRequests",
            f"the stable side answered {int(stable.requests)} requests in the last window, fewer than "
            f"{analysis.min_requests}: nothing to compare the canary with, not judged",
        )
    canary_rate = canary.errors / canary.requests
    stable_rate = stable.errors / stable.requests
    if canary_rate - stable_rate > analysis.max_error_rate_increase:
        return Verdict(
            "unhealthy",
            "ErrorRate",
            f"the canary's error rate {_percent(canary_rate)} exceeds the stable side's {_percent(stable_rate)} by "
            f"more than {_percent(analysis.max_error_rate_increase)}",
        )
    canary_p99, stable_p99 = canary.p99_ms(), stable.p99_ms()
    if (
        canary_p99 is not None
        and stable_p99 is not None
        and canary_p99 > stable_p99 * analysis.max_p99_ratio
        and canary_p99 - stable_p99 > analysis.min_p99_increase_ms
    ):
        return Verdict(
            "unhealthy",
            "Latency",
            f"the canary's p99 latency {canary_p99:.1f} ms is more than {analysis.max_p99_ratio}x the stable "
            f"side's {stable_p99:.1f} ms",
        )
    return Verdict(
        "healthy",
        "Healthy",
        f"error rate {_percent(canary_rate)} (stable {_percent(stable_rate)}), p99 "
        f"{'-' if canary_p99 is None else f'{canary_p99:.1f}'} ms (stable "
        f"{'-' if stable_p99 is None else f'{stable_p99:.1f}'} ms)",
    )


@dataclass(frozen=True, kw_only=True)
class Step:
    """What the rollout does now."""

    state: CanaryState
    message: str
    healthy: dict[str, Any]
    """The CanaryHealthy condition."""
    canary_runs: bool = False
    """Whether the canary Deployment should exist."""
    stable_serves_canary: bool = False
    """Whether the stable Deployment runs the canary's model (Promoting, Promoted)."""
    canary_percent: int = 0
    """The canary's share of the traffic to set (weights, or pods behind the Service)."""
    healthy_intervals: int = 0
    events: list[Event] = field(default_factory=list)


def step(
    *,
    previous: dict[str, Any],
    previous_healthy: dict[str, Any] | None,
    comparing: str,
    percent: int,
    analysis: CanaryAnalysis,
    canary_ready: bool,
    stable_on_canary: bool,
    verdict: Verdict | None,
) -> Step:
    """The next step from the last status.canary (`previous`), the canary's readiness, whether the stable
    Deployment finished rolling to the canary's model, and the verdict of a window that just closed (None
    when none did)."""
    same = previous.get("comparing") == comparing
    state = previous.get("state") if same else None
    intervals = int(previous.get("healthyIntervals") or 0) if same else 0
    kept_healthy = previous_healthy if same and previous_healthy else None

    def healthy(status: str, reason: str, message: str) -> dict[str, Any]:
        return conditions.condition("CanaryHealthy", status, reason, message)

    # trafficPercent 0 pauses the canary (RolledBack, CanaryHealthy NoTraffic); a pause is no verdict, so a
    # share given back starts the canary over. A rollback by a verdict holds through a pause and after it.
    paused = state == "RolledBack" and (kept_healthy or {}).get("reason") == NO_TRAFFIC
    if percent == 0 and (state != "RolledBack" or paused):
        message = "trafficPercent is 0: the canary takes no traffic and runs no pods"
        return Step(state="RolledBack", message=message, healthy=healthy("Unknown", NO_TRAFFIC, message))
    if paused:
        state, intervals, kept_healthy = None, 0, None
    if state == "RolledBack":
        held = kept_healthy or healthy("False", "RolledBack", "rolled back")
        return Step(
            state="RolledBack", message=str(previous.get("message") or ""), healthy=held, healthy_intervals=intervals
        )

    def promoted(message: str, events: list[Event]) -> Step:
        return Step(
            state="Promoted",
            message=message,
            healthy=healthy("True", "Promoted", message),
            stable_serves_canary=True,
            healthy_intervals=intervals,
            events=events,
        )

    if state == "Promoted":
        return promoted(str(previous.get("message") or "promoted: the stable side serves the canary's model"), [])
    if state == "Promoting":
        if stable_on_canary:
            message = "promoted: the stable side serves the canary's model; the canary's pods are removed"
            return promoted(message, [("Normal", "CanaryPromoted", message)])
        message = "promoting: the stable Deployment is rolling to the canary's model"
        return Step(
            state="Promoting",
            message=message,
            healthy=healthy("True", "Promoting", message),
            canary_runs=True,
            stable_serves_canary=True,
            canary_percent=percent,
            healthy_intervals=intervals,
        )
    if not canary_ready:
        message = "waiting for the canary's pods to be ready; it takes no traffic until then"
        return Step(
            state="Starting", message=message, healthy=healthy("Unknown", "Starting", message), canary_runs=True
        )
    if verdict is None or verdict.outcome == "inconclusive":
        current = kept_healthy or healthy("Unknown", "Waiting", "no analysis window has closed yet")
        if verdict is not None:
            current = healthy(current["status"], verdict.reason, verdict.message)
        message = f"taking {percent} % of the traffic; {intervals} healthy window(s) in a row"
        return Step(
            state="Progressing",
            message=message,
            healthy=current,
            canary_runs=True,
            canary_percent=percent,
            healthy_intervals=intervals,
        )
    if verdict.outcome == "unhealthy":
        message = f"rolled back: {verdict.message}"
        return Step(
            state="RolledBack",
            message=message,
            healthy=healthy("False", verdict.reason, verdict.message),
            events=[("Warning", "CanaryRolledBack", message)],
        )
    intervals += 1
    if analysis.auto_promote and intervals >= analysis.successful_intervals:
        message = f"promoting after {intervals} healthy windows: {verdict.message}"
        return Step(
            state="Promoting",
            message=message,
            healthy=healthy("True", "Healthy", verdict.message),
            canary_runs=True,
            stable_serves_canary=True,
            canary_percent=percent,
            healthy_intervals=intervals,
            events=[("Normal", "CanaryPromoting", message)],
        )
    message = f"taking {percent} % of the traffic; {intervals} healthy window(s) in a row"
    return Step(
        state="Progressing",
        message=message,
        healthy=healthy("True", "Healthy", verdict.message),
        canary_runs=True,
        canary_percent=percent,
        healthy_intervals=intervals,
    )


def side(
    model_uri: str | None,
    deployment: dict[str, Any] | None,
    percent: int | None,
    window: Totals | None,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """One side's entry of status.canary: the last closed window's figures stay until the next closes."""
    status = (deployment or {}).get("status") or {}
    out: dict[str, Any] = {
        "modelUri": model_uri,
        "replicas": int(status.get("replicas") or 0),
        "readyReplicas": int(status.get("readyReplicas") or 0),
        "trafficPercent": percent,
    }
    if window is not None:
        out.update(requests=int(window.requests), errorRate=window.error_rate(), latencyP99Ms=window.p99_ms())
    else:
        out.update({k: (previous or {}).get(k) for k in ("requests", "errorRate", "latencyP99Ms")})
    return {k: v for k, v in out.items() if v is not None}


def pods_split(stable_ready: int, canary_ready: int) -> tuple[int, int]:
    """(stable %, canary %) of the requests when the one Service spreads them over both sides' ready pods."""
    total = stable_ready + canary_ready
    if total == 0:
        return 0, 0
    canary = round(100 * canary_ready / total)
    return 100 - canary, canary
