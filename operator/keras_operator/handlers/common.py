"""What the handlers of every kind share: the settings read at import (timer intervals need them)
and how a controller's Outcome becomes a status patch, Events and a log line."""

from __future__ import annotations

import kopf
import structlog

from keras_operator.controllers.outcome import Outcome
from keras_operator.runtime import metrics
from keras_operator.runtime.settings import Settings

SETTINGS = Settings.from_env()


class Current:
    """The settings of the running operator, read again at each start (tests start several in one process)."""

    settings = SETTINGS


log = structlog.get_logger("keras_operator.handlers")


def apply_outcome(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
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
        kind=body.get("kind"),
        namespace=meta.get("namespace"),
        name=meta.get("name"),
        phase=outcome.status.get("phase"),
        message=outcome.status.get("message"),
    )
