"""The operator process: `keras-operator` runs kopf with the handlers of every kind, and with leader
election acts only while it holds the Lease (the other replicas wait to take over).

The composition root: the settings are read here once, logging is configured before anything logs, the
credentials are found once (runtime/credentials.py), and the run's API client, metrics and each kind's
object (its indexes' derived state, work queue and status writer) are made here and handed to the handlers
in kopf's memo. Nothing of an operator run lives at module level, so a second run in the same process (the
tests start several) starts from nothing.

Every replica serves the admission webhook (when configured) for as long as it runs.
A standby replica answers its liveness probe from `StandbyHealth` until it leads; that server is closed
before kopf serves /healthz on the same port. On a clean exit the leader releases the Lease once kopf
has returned and its API calls under way have ended; a leader that lost it exits 1 without touching it."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import kopf
import structlog

from keras_operator.endpoints.progress_server import ProgressEndpoint
from keras_operator.handlers import serving_handlers, setup, training_handlers
from keras_operator.runtime import credentials
from keras_operator.runtime.credentials import Credentials, NoCredentials
from keras_operator.runtime.kube import Api
from keras_operator.runtime.metrics import Metrics
from keras_operator.runtime.settings import Settings

if TYPE_CHECKING:
    from keras_operator.endpoints.webhook import WebhookServer
    from keras_operator.runtime.leader import Elector

INDENT = {"initial_indent": " " * 6, "subsequent_indent": " " * 6, "break_on_hyphens": False}


def parser() -> argparse.ArgumentParser:
    """No options: everything is set by the environment (the Helm chart sets it), listed in the help."""
    variables = "\n".join(
        f"  {name}\n" + textwrap.fill(doc + (f" (default: {default})" if default else ""), 100, **INDENT)
        for name, doc, default in Settings.described()
    )
    return argparse.ArgumentParser(
        prog="keras-operator",
        description="The Keras Operator: trains (KerasTrainingJob) and serves (KerasModelService) Keras models "
        "on Kubernetes. It takes no arguments; it reads its settings from the environment.",
        epilog=f"environment variables:\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def compose(
    settings: Settings,
    login: Credentials,
    stop: threading.Event | None = None,
    lost: threading.Event | None = None,
) -> kopf.Memo:
    """Everything one operator run holds, made once: kopf hands it to every handler as `memo`. `lost` is set
    when the run loses the Lease: its API client refuses writes from then on."""
    api, metrics = Api(login, settings.api_timeout, lost), Metrics()
    trainings = training_handlers.Training(settings, api, metrics)
    return kopf.Memo(
        settings=settings,
        api=api,
        metrics=metrics,
        training=trainings,
        serving=serving_handlers.Serving(settings, api, metrics),
        progress=ProgressEndpoint(trainings, settings, api),
        stop=stop if stop is not None else threading.Event(),
    )


@kopf.on.startup()
async def on_startup(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    if "settings" not in memo:
        # `kopf run -m keras_operator.main` (the tests' in-process operator): kopf brings an empty memo.
        ours = Settings.from_env()
        setup.configure_logging(ours)
        try:
            memo.update(compose(ours, credentials.find(ours.api_server)))
        except NoCredentials as exc:
            raise kopf.PermanentError(str(exc)) from None
    ours = cast(Settings, memo["settings"])
    setup.configure(settings, ours)
    cast(Metrics, memo["metrics"]).serve(ours.metrics_port)
    training_handlers.of(memo).start()
    serving_handlers.of(memo).start()
    await cast(ProgressEndpoint, memo["progress"]).start()
    structlog.get_logger("keras_operator").info(
        "operator_started", namespaces=list(ours.namespaces) or "all", metrics_port=ours.metrics_port
    )


@kopf.on.cleanup()
async def on_cleanup(memo: kopf.Memo, **_: Any) -> None:
    # kopf waits on its stop flag in an executor thread, which asyncio joins without a timeout at shutdown:
    # a flag nobody sets would hold the process until SIGKILL (in a pod, the whole grace period).
    cast(threading.Event, memo["stop"]).set()
    await cast(ProgressEndpoint, memo["progress"]).close()
    await training_handlers.of(memo).close()
    await serving_handlers.of(memo).close()
    # Last: the reconciles just cancelled may have left writes under way, which it waits for.
    await cast(Api, memo["api"]).close()
    cast(Metrics, memo["metrics"]).close()


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


def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(argv)  # --help, or a usage error (exit 2) for any argument
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    setup.configure_logging(settings)  # first: every line of the process in one format
    try:
        # Once, at the start: kopf would retry a missing login every minute, forever.
        login = credentials.find(settings.api_server)
    except NoCredentials as exc:
        raise SystemExit(f"error: {exc}") from None
    webhook = _start_webhook(settings)
    try:
        _run(settings, login)
    finally:
        if webhook is not None:
            webhook.close()


def _start_webhook(settings: Settings) -> WebhookServer | None:
    """The admission webhook, served by every replica from the start (a standby answers as well as the leader)."""
    if not settings.webhook_port:
        return None
    if not settings.webhook_cert_dir:
        raise SystemExit("KERAS_OPERATOR_WEBHOOK_CERT_DIR: required with KERAS_OPERATOR_WEBHOOK_PORT (HTTPS only)")
    from keras_operator.endpoints.webhook import WebhookServer

    return WebhookServer(settings.webhook_port, settings.webhook_cert_dir).start()


def _run(settings: Settings, login: Credentials) -> None:
    lost = threading.Event()  # the Lease is lost: the API client refuses writes still asked for
    stop = threading.Event()
    kopf_stop = threading.Event()  # kopf's stop flag: set when the Lease is lost, and at every shutdown
    memo = compose(settings, login, kopf_stop, lost)
    api = cast(Api, memo["api"])
    elector: Elector | None = None
    if settings.leader_election:
        from keras_operator.runtime.leader import Elector, StandbyHealth, lease_client

        held = elector = Elector(
            lease_client(login),
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

        work = WorkLiveness.for_timeout(
            (training_handlers.of(memo).queue, serving_handlers.of(memo).queue), settings.api_timeout
        )

        def keep() -> None:
            held.keep(stop, lost, alive=work.alive)
            if lost.is_set():
                kopf_stop.set()  # a replica that lost the Lease stops acting at once

        threading.Thread(target=keep, daemon=True, name="lease").start()
    # kopf runs on a loop that outlives kopf.run (which would close a loop of its own making): the writes its
    # shutdown left under way are awaited on it before the Lease is released.
    runner = asyncio.Runner()
    try:
        kopf.run(
            loop=runner.get_loop(),
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz",
            standalone=True,  # exclusivity comes from the Lease (or a single replica), not kopf peering
            stop_flag=kopf_stop,
            memo=memo,
        )
    finally:
        # kopf has returned, so no handler runs any more; but a write whose reconcile it cancelled may still
        # be under way. The Lease stays held (and renewed) until they are done: no write of this replica may
        # follow the release.
        try:
            idle = elector is not None and not lost.is_set() and _api_calls_done(runner, api, elector.duration)
            if elector is not None and idle and not lost.is_set():
                elector.release()  # the next replica may take over at its next attempt
        finally:
            stop.set()
            runner.close()
    if lost.is_set():
        sys.exit(1)  # restarted by Kubernetes, it waits for the Lease again


def _api_calls_done(runner: asyncio.Runner, api: Api, timeout: float) -> bool:
    """Wait on kopf's loop for the API writes still under way to end; False when one still is after
    `timeout`, or one was cut off half-way (then the Lease is left to expire, as if this replica had died)."""
    return runner.run(api.settle(timeout))


if __name__ == "__main__":
    main()
