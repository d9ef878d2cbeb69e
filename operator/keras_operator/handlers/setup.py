"""Operator-wide kopf set-up: login, persistence under our own prefix, logging, health probe.

The settings are the ones main.py read once and put in kopf's memo (`memo["settings"]`)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, cast

import kopf

from keras_common import __version__, logs
from keras_operator.api.common import GROUP
from keras_operator.runtime.kube import Api
from keras_operator.runtime.settings import Settings

# kopf's requests name the operator first: kopf's own writes (Events about failing handlers) carry no
# fieldManager, and the API server then records the User-Agent's first word as their manager.
KOPF_USER_AGENT = f"keras-operator/{__version__} kopf/{kopf.__version__}"


class _Identified(kopf.ConnectionInfo):
    """kopf keeps a User-Agent its connection already has (else it sends `kopf/VERSION`)."""

    def as_http_headers(self) -> dict[str, str]:
        return {**super().as_http_headers(), "User-Agent": KOPF_USER_AGENT}


def _identified(info: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo | None:
    if info is None:
        return None
    return _Identified(**{f.name: getattr(info, f.name) for f in dataclasses.fields(info)})


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo | None:
    """The credentials main.py found once, as the run's API client uses them (a plain `def`: kopf runs it in
    a thread, and fetching a token may run an exec plugin)."""
    return _identified(cast(Api, memo["api"]).credentials.for_kopf())


def configure_logging(ours: Settings) -> None:
    """One log format for the whole process, kopf's and the libraries' records too: called first thing."""
    logs.configure(ours.log_format, ours.log_level, stdlib=True)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    # kopf logs a line per handler run (per watch event, per epoch of every training): debug only.
    if ours.log_level != "debug":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def configure(settings: kopf.OperatorSettings, ours: Settings) -> None:
    """kopf's own settings, at its startup (main.py)."""
    # kopf's bookkeeping lives under our own prefix, never in the public status.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Events come from our own transitions, not kopf's log lines
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    if ours.named_namespaces:
        # kopf would list the cluster's namespaces to match them, which the chart's namespaced mode does not
        # grant: each start and failover then waited out ~54 s of refused retries before serving anything.
        # Scanning off, kopf watches exactly the named ones (and no longer watches CRDs: ours are installed
        # before the operator starts; a new CRD version is served after the rollout that ships it).
        settings.scanning.disabled = True


@kopf.on.probe(id="ready")
def ready(**_: Any) -> bool:
    return True
