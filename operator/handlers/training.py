"""kopf handlers for KerasTrainingJob: thin wrappers around training_controller."""

from __future__ import annotations

from typing import Any

import kopf
import structlog

from keras_operator import metrics, training_controller, training_status
from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.training import PLURAL
from keras_operator.settings import Settings

SETTINGS = Settings.from_env()
RESOURCE = (GROUP, VERSION, PLURAL)
log = structlog.get_logger("keras_operator.training")


def apply_outcome(outcome: training_controller.Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    current = body.get("status") or {}
    phase = outcome.status.get("phase")
    if phase and phase != current.get("phase"):
        metrics.TRANSITIONS.labels(body.get("kind", ""), phase).inc()
    for key, value in outcome.status.items():
        # Only what changed: a refresh that finds nothing new sends no PATCH (and wakes no watcher).
        if current.get(key) != value:
            patch.status[key] = value
    for kind, reason, message in outcome.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    meta = body.get("metadata", {})
    log.info(
        "status",
        namespace=meta.get("namespace"),
        name=meta.get("name"),
        phase=outcome.status.get("phase"),
        message=outcome.status.get("message"),
    )


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@metrics.instrumented("KerasTrainingJob", "reconcile")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    outcome = await training_controller.reconcile(dict(body), Settings.from_env())
    apply_outcome(outcome, body, patch)


def _active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in training_status.TERMINAL and bool(status.get("jobName"))


# The reconcile that set jobName has just looked at the Job: the first refresh can wait an interval.
@kopf.timer(*RESOURCE, interval=SETTINGS.sync_interval, initial_delay=SETTINGS.sync_interval, when=_active)
@metrics.instrumented("KerasTrainingJob", "refresh")
async def refresh(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    outcome = await training_controller.sync(dict(body))
    apply_outcome(outcome, body, patch)


@kopf.on.delete(*RESOURCE, optional=True)
def deleted(name: str, namespace: str, **_: Any) -> None:
    # Nothing to clean up by hand: the Job and ConfigMap carry owner references.
    log.info("deleted", namespace=namespace, name=name)
