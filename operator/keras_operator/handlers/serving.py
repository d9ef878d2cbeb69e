"""kopf handlers for KerasModelService: thin wrappers around serving_controller."""

from __future__ import annotations

from typing import Any

import kopf

from keras_operator.api.common import GROUP, VERSION
from keras_operator.api.serving import PLURAL
from keras_operator.controllers import serving as serving_controller
from keras_operator.handlers.common import SETTINGS, apply_outcome
from keras_operator.runtime import metrics
from keras_operator.runtime.settings import Settings

RESOURCE = (GROUP, VERSION, PLURAL)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@metrics.instrumented("KerasModelService", "reconcile")
async def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    outcome = await serving_controller.reconcile(dict(body), Settings.from_env(), scrape=False)
    apply_outcome(outcome, body, patch)


# Level-triggered: the referenced training finishing, pods becoming ready and serving figures
# all show up here within one interval.
@kopf.timer(*RESOURCE, interval=SETTINGS.sync_interval, initial_delay=SETTINGS.sync_interval)
@metrics.instrumented("KerasModelService", "refresh")
async def refresh(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    outcome = await serving_controller.reconcile(dict(body), Settings.from_env())
    apply_outcome(outcome, body, patch)


@kopf.on.delete(*RESOURCE, optional=True)
def deleted(name: str, namespace: str, **_: Any) -> None:
    pass  # the Deployment, Service and HPA carry owner references
