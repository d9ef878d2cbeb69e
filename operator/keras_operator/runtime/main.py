"""The operator process: `keras-operator` runs kopf with the handlers of every kind, and with leader
election acts only while it holds the Lease (the other replicas wait to take over)."""

from __future__ import annotations

import sys
import threading

from keras_operator.handlers import progress, serving, setup, training  # noqa: F401  (importing registers the handlers)
from keras_operator.runtime import lifecycle
from keras_operator.runtime.settings import Settings


def main() -> None:
    import kopf

    settings = Settings.from_env()
    lost = threading.Event()
    stop = threading.Event()
    lifecycle.STOP.clear()
    if settings.leader_election:
        from keras_operator.runtime import kube, logs
        from keras_operator.runtime.leader import Elector

        logs.configure(settings.log_format, settings.log_level)
        elector = Elector(
            kube.api_client(), settings.lease_namespace, settings.lease_name, settings.identity, settings.lease_seconds
        )
        elector.acquire(stop)

        def keep() -> None:
            elector.keep(stop, lost)
            if lost.is_set():
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
        stop.set()
    if lost.is_set():
        sys.exit(1)  # restarted by Kubernetes, it waits for the Lease again


if __name__ == "__main__":
    main()
