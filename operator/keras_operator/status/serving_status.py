"""KerasModelService status from the model resolution and the Deployment (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_operator.status import conditions


@dataclass(frozen=True)
class Resolution:
    """Which model to serve, or why there is none yet."""

    model_uri: str | None
    reason: str
    message: str
    failed: bool = False


@dataclass(frozen=True)
class CanaryReport:
    """status.canary and the CanaryReady and CanaryHealthy conditions."""

    status: dict[str, Any]
    conditions: list[dict[str, Any]]


CANARY_CONDITIONS = ("CanaryReady", "CanaryHealthy")


def invalid(
    message: str, previous: dict[str, Any], generation: int | None, now: str, reason: str = "InvalidSpec"
) -> dict[str, Any]:
    return conditions.invalid_status(
        message, previous, generation, now, conditions.condition("Ready", False, reason, message), reason
    )


def with_canary(
    status: dict[str, Any], canary: CanaryReport | None, generation: int | None, now: str
) -> dict[str, Any]:
    """`status` with status.canary and the canary's conditions, or without either when there is no canary."""
    status = dict(status)
    if canary is None or not status.get("modelUri"):
        status.pop("canary", None)
        status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") not in CANARY_CONDITIONS]
        return status
    status["canary"] = canary.status
    status["conditions"] = conditions.merge(status.get("conditions"), canary.conditions, generation, now)
    return status


def observe(
    *,
    resolution: Resolution,
    deployment: dict[str, Any] | None,
    url: str,
    selector: str,
    metrics: dict[str, Any] | None,
    previous: dict[str, Any],
    generation: int | None,
    now: str,
) -> dict[str, Any]:
    valid = conditions.condition("Valid", True, "SpecValid")
    status: dict[str, Any] = {"observedGeneration": generation, "url": url, "selector": selector}
    if resolution.model_uri is None:
        phase = "Failed" if resolution.failed else "Pending"
        updates = [
            valid,
            conditions.condition("ModelResolved", False, resolution.reason, resolution.message),
            conditions.condition("Ready", False, resolution.reason, resolution.message),
        ]
        return {
            **status,
            "phase": phase,
            "message": resolution.message,
            "conditions": conditions.merge(previous.get("conditions"), updates, generation, now),
        }

    resolved = conditions.condition("ModelResolved", True, resolution.reason, resolution.message)
    status["modelUri"] = resolution.model_uri
    if deployment is None:
        message = "creating the Deployment"
        return {
            **status,
            "phase": "Pending",
            "message": message,
            "conditions": conditions.merge(
                previous.get("conditions"),
                [valid, resolved, conditions.condition("Ready", False, "Creating", message)],
                generation,
                now,
            ),
        }

    dep_status = deployment.get("status") or {}
    dep_conditions = dep_status.get("conditions") or []
    desired = (deployment.get("spec") or {}).get("replicas", 1)
    ready = int(dep_status.get("readyReplicas") or 0)
    status["replicas"] = int(dep_status.get("replicas") or 0)
    status["readyReplicas"] = ready
    available = conditions.get(dep_conditions, "Available")
    progressing = conditions.get(dep_conditions, "Progressing")
    available_cond = conditions.condition(
        "Available",
        (available or {}).get("status", "Unknown"),
        (available or {}).get("reason", "NoStatus"),
        (available or {}).get("message", ""),
    )
    generation_seen = dep_status.get("observedGeneration")
    rolled_out = (
        generation_seen is not None
        and generation_seen >= (deployment["metadata"].get("generation") or 0)
        and int(dep_status.get("updatedReplicas") or 0) >= desired
    )
    if progressing and progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        phase, reason = "Failed", "ProgressDeadlineExceeded"
        message = f"the Deployment made no progress: {progressing.get('message', '')}".strip()
    elif desired == 0:
        phase, reason, message = "Pending", "ScaledToZero", "scaled to zero replicas"
    elif rolled_out and ready >= 1 and available and available.get("status") == "True":
        phase, reason, message = "Ready", "Serving", f"{ready}/{desired} replicas ready at {url}"
    else:
        phase, reason = "Loading", "ModelLoading"
        message = f"{ready}/{desired} replicas ready; pods are starting or loading the model"
    status.update(phase=phase, message=message)
    if metrics is not None:
        status["metrics"] = metrics
    elif previous.get("metrics"):
        status["metrics"] = previous["metrics"]
    status["conditions"] = conditions.merge(
        previous.get("conditions"),
        [valid, resolved, available_cond, conditions.condition("Ready", phase == "Ready", reason, message)],
        generation,
        now,
    )
    return status
