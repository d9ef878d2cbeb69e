"""Operator-wide kopf set-up: login, persistence under our own prefix, logging, health probe."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import structlog

from keras_operator.api.common import GROUP
from keras_operator.runtime import lifecycle, logs, metrics
from keras_operator.runtime.settings import Settings


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    settings = Settings.from_env()
    if settings.api_server:
        return kopf.ConnectionInfo(server=settings.api_server, insecure=True, default_namespace="default")
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = Settings.from_env()
    logs.configure(ours.log_format, ours.log_level, stdlib=True)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # kopf logs a line per handler run (per watch event, per epoch of every training): debug only.
    if ours.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # kopf's bookkeeping lives under our own prefix, never in the public status.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Events come from our own transitions, not kopf's log lines
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    metrics.serve(ours.metrics_port)
    structlog.get_logger("keras_operator").info(
        "operator_started", namespaces=list(ours.namespaces) or "all", metrics_port=ours.metrics_port
    )


@kopf.on.probe(id="ready")
def ready(**_: Any) -> bool:
    return True


@kopf.on.cleanup()
def release_stop_flag(**_: Any) -> None:
    lifecycle.STOP.set()  # see runtime/lifecycle.py: otherwise the process waits for SIGKILL
