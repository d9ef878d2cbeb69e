"""The canary's part of one reconcile, decided once: the rollout's next step (status.canary.step), the
canary's share of the requests, its pod count and what the Service NAME selects. The builders and the status
report take these figures from the plan; nothing downstream re-derives them from the spec.

How the share becomes traffic is a `TrafficSplit`: by pods (one Service over both sides' pods, the canary's
pods in proportion to trafficPercent) or by a Gateway API HTTPRoute (per-side Services, weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from keras_operator.api.model_service import Canary, KerasModelServiceSpec
from keras_operator.builders.serving_manifests import DeploymentModel, ServiceTarget
from keras_operator.status import canary as canary_status
from keras_operator.status import conditions
from keras_operator.status.serving_metrics import Totals

SplitName = Literal["Pods", "HTTPRoute"]


def ready_replicas(deployment: dict[str, Any] | None) -> int:
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


def canary_pods(stable_replicas: int, percent: int) -> int:
    """Canary pods giving about `percent` of the requests next to `stable_replicas` stable pods."""
    if percent >= 100:
        return max(stable_replicas, 1)
    return max(1, round(stable_replicas * percent / (100 - percent)))


class TrafficSplit(Protocol):
    name: ClassVar[SplitName]
    by_route: ClassVar[bool]
    """Whether the split needs per-side Services and an HTTPRoute."""

    def layout(self, canary: Canary, stable_replicas: int, share: int) -> tuple[int, ServiceTarget]:
        """(canary pods, what the Service NAME selects) for a canary taking `share` percent now."""
        ...

    def shares(self, plan: CanaryPlan, stable: dict[str, Any] | None, canary: dict[str, Any] | None) -> tuple[int, int]:
        """(stable %, canary %) of the requests as the cluster splits them now, for status.canary."""
        ...


class SplitByPods:
    """One Service over both sides' pods: the canary's pods in proportion to trafficPercent (the canary's
    alone at 100 %); the share is what the ready pods make it."""

    name: ClassVar[SplitName] = "Pods"
    by_route: ClassVar[bool] = False

    def layout(self, canary: Canary, stable_replicas: int, share: int) -> tuple[int, ServiceTarget]:
        replicas = canary_pods(stable_replicas, canary.traffic_percent)
        return replicas, "stable" if share == 0 else "canary" if share >= 100 else "both"

    def shares(self, plan: CanaryPlan, stable: dict[str, Any] | None, canary: dict[str, Any] | None) -> tuple[int, int]:
        serving_canary = canary if plan.canary_runs and plan.service_target != "stable" else None
        stable_ready = 0 if plan.service_target == "canary" else ready_replicas(stable)
        return canary_status.pods_split(stable_ready, ready_replicas(serving_canary))


class SplitByRoute:
    """Per-side Services and an HTTPRoute weighting them: the canary runs its own replica count, the Service
    NAME keeps the stable side, and the share is the route's weight."""

    name: ClassVar[SplitName] = "HTTPRoute"
    by_route: ClassVar[bool] = True

    def layout(self, canary: Canary, stable_replicas: int, share: int) -> tuple[int, ServiceTarget]:
        return canary.replicas, "stable"

    def shares(self, plan: CanaryPlan, stable: dict[str, Any] | None, canary: dict[str, Any] | None) -> tuple[int, int]:
        return 100 - plan.canary_share, plan.canary_share


def traffic_split(setting: str) -> TrafficSplit:
    """The split the operator's --traffic-split setting names (httproute, or pods)."""
    return SplitByRoute() if setting == "httproute" else SplitByPods()


@dataclass(frozen=True, kw_only=True)
class CanaryPlan:
    """The canary's part of one reconcile: the models compared, the step of the rollout, and the split."""

    canary_model: DeploymentModel | None
    """What the canary serves; None while its KerasTrainingJob has not succeeded."""
    comparing: str
    """`stable => canary`, as status.canary.comparing: a new value starts the rollout over."""
    step: canary_status.Step
    split: TrafficSplit
    canary_share: int
    """The canary's share of the requests to set now, in percent (0 while it runs no pods)."""
    canary_replicas: int
    service_target: ServiceTarget
    """What the Service NAME selects."""
    windows: tuple[Totals, Totals] | None = None
    """(stable, canary) of an analysis window that just closed."""
    decided_now: bool = False
    """A window's verdict just decided a rollback or promotion: it is stored before it is carried out."""

    @property
    def canary_runs(self) -> bool:
        """Whether the canary Deployment should exist."""
        return self.step.canary_runs and self.canary_model is not None

    @property
    def routes_traffic(self) -> bool:
        """Whether per-side Services and the HTTPRoute should exist."""
        return self.split.by_route and self.canary_model is not None

    def stable_model(self, stable: DeploymentModel) -> DeploymentModel:
        """What the stable Deployment serves: its own model, or the canary's once promoting."""
        if self.step.stable_serves_canary and self.canary_model is not None:
            return DeploymentModel(self.canary_model.model_uri, self.canary_model.versions)
        return stable


def undecided(previous: dict[str, Any], comparing: str) -> bool:
    """Whether the rollout comparing these models has no stored decision yet (a window is still worth judging)."""
    before = previous.get("canary") or {}
    return before.get("comparing") != comparing or before.get("state") not in canary_status.DECIDED


def plan(
    *,
    spec: KerasModelServiceSpec,
    previous: dict[str, Any],
    split: TrafficSplit,
    canary_model: DeploymentModel | None,
    comparing: str,
    waiting: str,
    canary_ready: bool,
    stable_on_canary: bool,
    stable_replicas: int,
    verdict: canary_status.Verdict | None,
    windows: tuple[Totals, Totals] | None,
) -> CanaryPlan:
    """The canary's plan from the last status (`previous`), what the cluster shows now, and the verdict of a
    window that just closed (None when none did). `waiting` says why there is no canary model yet."""
    assert spec.canary is not None
    step = canary_status.step(
        previous=previous.get("canary") or {},
        previous_healthy=conditions.get(previous.get("conditions"), "CanaryHealthy"),
        comparing=comparing,
        percent=spec.canary.traffic_percent,
        analysis=spec.canary.analysis,
        canary_ready=canary_ready,
        stable_on_canary=stable_on_canary,
        verdict=verdict,
    )
    if canary_model is None:
        step = canary_status.Step(state="Starting", message=waiting, healthy=step.healthy)
    share = step.canary_percent if step.canary_runs else 0
    replicas, target = split.layout(spec.canary, stable_replicas, share)
    return CanaryPlan(
        canary_model=canary_model,
        comparing=comparing,
        step=step,
        split=split,
        canary_share=share,
        canary_replicas=replicas,
        service_target=target,
        windows=windows,
        decided_now=verdict is not None and step.state in canary_status.DECIDED,
    )
