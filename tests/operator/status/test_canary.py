"""Canary rollouts: the judgement of a window, the steps of the rollout, the objects for each split."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.manifests import validate_k8s
from keras_operator.api.model_service import CanaryAnalysis, KerasModelServiceSpec
from keras_operator.api.wire import CANARY_LABEL, MODEL_SERVICE_LABEL, SERVING_LABEL
from keras_operator.builders.serving_manifests import (
    DeploymentModel,
    build_deployment,
    build_route,
    build_service,
    stable_side,
)
from keras_operator.controllers.canary_plan import canary_pods
from keras_operator.status import canary
from keras_operator.status.serving_metrics import Totals

ANALYSIS = CanaryAnalysis(min_requests=20, max_error_rate_increase=0.01, max_p99_ratio=1.5, min_p99_increase_ms=5)


def window(requests: int, errors: int = 0, seconds: float = 0.002) -> Totals:
    """`requests` answered in `seconds` each (cumulative buckets like the server's histogram)."""
    bounds = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, float("inf"))
    return Totals(requests, errors, {b: float(requests if seconds <= b else 0) for b in bounds})


def test_a_canary_that_errors_loses() -> None:
    verdict = canary.judge(window(200, 1), window(50, 10), ANALYSIS)
    assert verdict.outcome == "unhealthy"
    assert verdict.reason == "ErrorRate"
    assert "20.0 %" in verdict.message
    assert "0.5 %" in verdict.message


def test_a_slower_canary_loses_only_past_both_thresholds() -> None:
    assert canary.judge(window(200, seconds=0.004), window(50, seconds=0.2), ANALYSIS).reason == "Latency"
    # 2 ms against 4 ms is twice as slow, but by less than min_p99_increase_ms: histogram noise, not a loss.
    assert canary.judge(window(200, seconds=0.002), window(50, seconds=0.004), ANALYSIS).outcome == "healthy"


def test_a_quiet_window_is_not_judged() -> None:
    verdict = canary.judge(window(200), window(19, 19), ANALYSIS)
    assert verdict.outcome == "inconclusive"
    assert "19 requests" in verdict.message


def test_counters_of_a_restarted_pod_count_from_zero() -> None:
    before, after = window(100, 5), window(30, 1)
    assert after.since(before) == after
    grown = window(150, 7).since(before)
    assert (grown.requests, grown.errors) == (50, 2)


def run(previous: dict[str, Any], **kw: Any) -> canary.Step:
    args: dict[str, Any] = {
        "previous": previous,
        "previous_healthy": None,
        "comparing": "a => b",
        "percent": 20,
        "analysis": ANALYSIS,
        "canary_ready": True,
        "stable_on_canary": False,
        "verdict": None,
    }
    return canary.step(**{**args, **kw})


HEALTHY = canary.Verdict("healthy", "Healthy", "fine")
UNHEALTHY = canary.Verdict("unhealthy", "ErrorRate", "errors")


def test_no_traffic_until_the_canary_is_ready() -> None:
    step = run({}, canary_ready=False)
    assert (step.state, step.canary_runs, step.canary_percent) == ("Starting", True, 0)
    assert run({}).canary_percent == 20


def test_one_unhealthy_window_rolls_back_and_the_decision_holds() -> None:
    step = run({"state": "Progressing", "comparing": "a => b", "healthyIntervals": 3}, verdict=UNHEALTHY)
    assert (step.state, step.canary_runs, step.canary_percent) == ("RolledBack", False, 0)
    assert step.healthy["status"] == "False"
    assert step.healthy["reason"] == "ErrorRate"
    assert step.events[0][:2] == ("Warning", "CanaryRolledBack")
    stored = {"state": step.state, "comparing": "a => b", "message": step.message}
    held = run(stored, verdict=HEALTHY)
    assert (held.state, held.canary_runs, held.events) == ("RolledBack", False, [])
    # A new canary model is a new comparison: it starts over.
    assert run(stored, comparing="a => c").state == "Progressing"


def test_healthy_windows_promote_only_with_auto_promote() -> None:
    analysis = ANALYSIS.model_copy(update={"auto_promote": True, "successful_intervals": 2})
    first = run({}, verdict=HEALTHY, analysis=analysis)
    assert (first.state, first.healthy_intervals) == ("Progressing", 1)
    stored = {"state": first.state, "comparing": "a => b", "healthyIntervals": 1}
    second = run(stored, verdict=HEALTHY, analysis=analysis)
    assert (second.state, second.stable_serves_canary, second.canary_runs) == ("Promoting", True, True)
    assert run(stored, verdict=HEALTHY).state == "Progressing"  # without autoPromote: never
    promoting = {"state": "Promoting", "comparing": "a => b", "healthyIntervals": 2}
    assert run(promoting).state == "Promoting"  # the stable side has not rolled to the canary's model yet
    done = run(promoting, stable_on_canary=True)
    assert (done.state, done.canary_runs, done.stable_serves_canary) == ("Promoted", False, True)
    assert done.events[0][1] == "CanaryPromoted"


def test_inconclusive_windows_neither_count_nor_reset() -> None:
    stored = {"state": "Progressing", "comparing": "a => b", "healthyIntervals": 2}
    step = run(stored, verdict=canary.Verdict("inconclusive", "TooFewRequests", "quiet"))
    assert (step.state, step.healthy_intervals) == ("Progressing", 2)


def test_traffic_percent_zero_turns_the_canary_off() -> None:
    step = run({"state": "Progressing", "comparing": "a => b"}, percent=0)
    assert (step.state, step.canary_runs) == ("RolledBack", False)


@pytest.mark.parametrize(
    ("stable", "percent", "pods"), [(1, 10, 1), (9, 10, 1), (4, 20, 1), (3, 50, 3), (6, 25, 2), (2, 100, 2)]
)
def test_canary_pods_for_a_share(stable: int, percent: int, pods: int) -> None:
    assert canary_pods(stable, percent) == pods


def test_pods_split_is_the_share_of_ready_pods() -> None:
    assert canary.pods_split(3, 1) == (75, 25)
    assert canary.pods_split(0, 0) == (0, 0)


def owner() -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u-1"},
    }


SPEC = KerasModelServiceSpec.model_validate(
    {
        "model": {"uri": "s3://models/digits", "versionPolicy": {"specific": [1]}, "versionLabels": {"stable": 1}},
        "replicas": 3,
        "canary": {"model": {"version": 2}, "trafficPercent": 25, "resources": {"cpu": "2"}},
    }
)


def test_the_two_deployments_never_select_each_others_pods() -> None:
    stable = build_deployment(owner(), SPEC, stable_side(SPEC, "s3://models/digits"), "img")
    side = DeploymentModel("s3://models/digits", "specific:2", canary=True)
    canary_dep = build_deployment(owner(), SPEC, side, "img", replicas=1)
    stable_pods = stable["spec"]["template"]["metadata"]["labels"]
    canary_pods = canary_dep["spec"]["template"]["metadata"]["labels"]
    assert stable["spec"]["selector"]["matchLabels"] == {MODEL_SERVICE_LABEL: "digits"}
    assert canary_dep["spec"]["selector"]["matchLabels"] == {CANARY_LABEL: "digits"}
    assert MODEL_SERVICE_LABEL not in canary_pods
    assert CANARY_LABEL not in stable_pods
    assert stable_pods[SERVING_LABEL] == canary_pods[SERVING_LABEL] == "digits"
    # Both Deployments carry the resource's label: the operator's watch finds them.
    assert canary_dep["metadata"]["labels"][MODEL_SERVICE_LABEL] == "digits"
    assert canary_dep["metadata"]["name"] == "digits-canary"
    assert canary_dep["spec"]["replicas"] == 1
    args = canary_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-versions") + 1] == "specific:2"
    stable_args = stable["spec"]["template"]["spec"]["containers"][0]["args"]
    assert stable_args[stable_args.index("--model-versions") + 1] == "specific:1"
    assert stable_args[stable_args.index("--version-label") + 1] == "stable=1"
    assert canary_dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2"}
    for obj in (stable, canary_dep):
        validate_k8s(obj)


def test_service_selectors_follow_the_split() -> None:
    assert build_service(owner(), SPEC)["spec"]["selector"] == {MODEL_SERVICE_LABEL: "digits"}
    assert build_service(owner(), SPEC, "both")["spec"]["selector"] == {SERVING_LABEL: "digits"}
    side = build_service(owner(), SPEC, "canary", "digits-canary")
    assert side["metadata"]["name"] == "digits-canary"
    assert side["spec"]["selector"] == {CANARY_LABEL: "digits"}
    validate_k8s(side)


def test_the_route_weights_and_its_parent() -> None:
    mesh = build_route(owner(), SPEC, 25, None)
    assert mesh["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "digits", "port": 8080}]
    backends = mesh["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("digits-stable", 75), ("digits-canary", 25)]
    assert mesh["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    gateway = build_route(owner(), SPEC, 25, "infra/public")
    assert gateway["spec"]["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "infra"}
    ]


@pytest.mark.parametrize(("split", "kinds"), [("pods", 3), ("httproute", 6)])
def test_render_shows_both_sides(split: str, kinds: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kerasop render` of a canary: both Deployments, and the route and per-side Services when split by one."""
    from helpers.manifests import ROOT
    from kerasop.cli import load_resources, render_objects

    monkeypatch.setenv("KERAS_OPERATOR_TRAFFIC_SPLIT", split)
    resources = load_resources(str(ROOT / "examples" / "digits-canary.yaml"))
    objects = render_objects(resources[0], resources, "ml")
    assert len(objects) == kinds
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    canary_dep = by_name[("Deployment", "digits-rollout-canary")]
    args = canary_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--model-versions") + 1] == "specific:2"
    if split == "pods":
        assert canary_dep["spec"]["replicas"] == 1  # 10 % next to 3 stable pods: one pod, as close as whole pods get
        assert by_name[("Service", "digits-rollout")]["spec"]["selector"] == {SERVING_LABEL: "digits-rollout"}
    else:
        route = by_name[("HTTPRoute", "digits-rollout")]
        assert [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] == [90, 10]
    for obj in objects:
        if obj["kind"] != "HTTPRoute":
            validate_k8s(obj)
