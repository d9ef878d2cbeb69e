"""kopf handlers for KerasTrainingJob: thin wrappers around training_controller."""

from __future__ import annotations

from typing import Any

import kopf
import structlog

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.training import PLURAL
from keras_operator.controllers import training as training_controller
from keras_operator.handlers.common import SETTINGS, apply_outcome
from keras_operator.runtime import metrics
from keras_operator.runtime.settings import Settings
from keras_operator.status import training as training_status

RESOURCE = (GROUP, VERSION, PLURAL)
log = structlog.get_logger("keras_operator.training")


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
