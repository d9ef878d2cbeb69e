"""The operator process: `keras-operator` runs kopf with the handlers of every kind, and with leader
election acts only while it holds the Lease (the other replicas wait to take over).

Every replica serves the admission webhook (when configured) for as long as it runs.
A standby replica answers its liveness probe from `StandbyHealth` until it leads; that server is closed
before kopf serves /healthz on the same port. On a clean exit the leader releases the Lease once kopf
has returned and its API calls under way have ended; a leader that lost it exits 1 without touching it."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

from keras_operator.handlers import progress, serving, setup, training  # noqa: F401  (importing registers the handlers)
from keras_operator.runtime import lifecycle
from keras_operator.runtime.settings import Settings

if TYPE_CHECKING:
    from keras_operator.handlers.admission import WebhookServer
    from keras_operator.runtime.leader import Elector


@contextmanager
def _signals_set(event: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT end a standby's wait cleanly (kopf installs its own handlers once it runs)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main() -> None:
    settings = Settings.from_env()
    webhook = _start_webhook(settings)
    try:
        _run(settings)
    finally:
        if webhook is not None:
            webhook.close()


def _start_webhook(settings: Settings) -> WebhookServer | None:
    """The admission webhook, served by every replica from the start (a standby answers as well as the leader)."""
    if not settings.webhook_port:
        return None
    if not settings.webhook_cert_dir:
        raise SystemExit("KERAS_OPERATOR_WEBHOOK_CERT_DIR: required with KERAS_OPERATOR_WEBHOOK_PORT (HTTPS only)")
    from keras_common import logs
    from keras_operator.handlers.admission import WebhookServer

    logs.configure(settings.log_format, settings.log_level)
    return WebhookServer(settings.webhook_port, settings.webhook_cert_dir).start()


def _run(settings: Settings) -> None:
    import kopf

    lost = threading.Event()
    stop = threading.Event()
    lifecycle.STOP.clear()
    lifecycle.LOST.clear()
    elector: Elector | None = None
    if settings.leader_election:
        from keras_common import logs
        from keras_operator.runtime import kube
        from keras_operator.runtime.leader import Elector, StandbyHealth, lease_client

        logs.configure(settings.log_format, settings.log_level)
        held = elector = Elector(
            lease_client(kube.api_client()),
            settings.lease_namespace,
            settings.lease_name,
            settings.identity,
            settings.lease_seconds,
        )
        health = StandbyHealth(held, settings.liveness_port).start() if settings.liveness_port else None
        try:
            with _signals_set(stop):
                leading = held.acquire(stop)
        finally:
            if health is not None:
                health.close()  # kopf listens on this port from now on
        if not leading:
            return  # stopped while standing by

        from keras_operator.runtime.liveness import WorkLiveness

        work = WorkLiveness.for_timeout((training.QUEUE, serving.QUEUE), settings.api_timeout)

        def keep() -> None:
            held.keep(stop, lost, alive=work.alive)
            if lost.is_set():
                lifecycle.LOST.set()  # writes still asked for are refused (runtime/kube.py)
                lifecycle.STOP.set()  # a replica that lost the Lease stops acting at once

        threading.Thread(target=keep, daemon=True, name="lease").start()
    try:
        kopf.run(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
            standalone=True,  # exclusivity comes from the Lease (or a single replica), not kopf peering
            stop_flag=lifecycle.STOP,
        )
    finally:
        # kopf has returned, so no handler runs any more; but a call it cancelled may still be under way in
        # the API client's threads. The Lease stays held (and renewed) until they are done: no write of
        # this replica may follow the release.
        idle = elector is not None and not lost.is_set() and _api_calls_done(timeout=elector.duration)
        stop.set()
        if elector is not None and idle and not lost.is_set():
            elector.release()  # the next replica may take over at its next attempt
    if lost.is_set():
        sys.exit(1)  # restarted by Kubernetes, it waits for the Lease again


def _api_calls_done(timeout: float) -> bool:
    """Wait for the calls in the API client's threads to end; False when one is still under way after
    `timeout` (then the Lease is left to expire, as if this replica had died)."""
    from keras_operator.runtime import kube

    drain = threading.Thread(target=kube._threads().shutdown, kwargs={"wait": True}, daemon=True, name="api-drain")
    drain.start()
    drain.join(timeout)
    return not drain.is_alive()


if __name__ == "__main__":
    main()
