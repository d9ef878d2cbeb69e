"""Runs the model server: listen at once (liveness), load and warm up (then readiness), watch a base folder
for new versions, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import signal
import time
from pathlib import Path

import structlog
from aiohttp import web

from keras_server.app import DRAIN, METRICS, REPOSITORY, Metrics, ServerConfig, create_app
from keras_server.handler import Handler, HandlerLoadError
from keras_server.handler import load as load_handler
from keras_server.model import ServedModel
from keras_server.protocol import Runner
from keras_server.repository import Repository
from keras_server.watcher import Loader, Watcher
from keras_trainer import storage, usercode
from keras_trainer.errors import SpecError, TransientError

log = structlog.get_logger("keras_server")
# What aiohttp's own shutdown may still take once the drain is over (answers being written, a 503 to a
# slow upload whose rest aiohttp reads a moment before closing): the drain itself is `drain_seconds`.
SHUTDOWN_TIMEOUT = 2.0
# After SIGTERM, idle kept-alive connections stay open this long: a request a client wrote as the signal
# came is answered (with Connection: close) instead of meeting a closed connection.
LINGER_SECONDS = 1.0
POLL_SECONDS = 0.05


class CannotListen(OSError):
    """host:port cannot be had (in use, or not this process' to take): a setting to change, not a crash."""


async def listen(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` at host:port (port 0: any free port, then see `runner.addresses`)."""
    runner = Runner(
        app,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        # aiohttp lets a handler run on after its client disconnects unless told otherwise: a request
        # whose client gave up would still wait in the queue and take a model call nobody reads.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(f"port {port} is in use on {host} (another server? choose one with --port)") from exc
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return runner


def loader(name: str, config: ServerConfig, metrics: Metrics) -> Loader:
    def load(uri: str, version: str, staging: Path | None) -> ServedModel:
        started = time.perf_counter()
        model = ServedModel.load(uri, name, version, staging)
        model.warm_up(config.max_batch_size, config.batch_sizes)
        # TensorFlow and Keras leave millions of long-lived objects; a full collection scanning them
        # stalls the event loop for 100+ ms. Freezing them keeps collections to what requests allocate.
        gc.freeze()
        metrics.load_seconds.set(time.perf_counter() - started)
        log.info(
            "version_loaded",
            model=name,
            version=version,
            load_seconds=round(time.perf_counter() - started, 3),
            inputs=[(s.name, s.dtype.name, list(s.shape)) for s in model.inputs],
            batch_sizes=list(model.batch_sizes),
        )
        return model

    return load


def handler_for(ref: str, uri: str) -> Handler:
    """--handler, imported from the path, or else from the code recorded with the model's run: a service
    by trainingJobRef has no code of its own, and its handler may sit beside the training's layers."""
    try:
        return load_handler(ref)
    except HandlerLoadError:
        try:
            code = usercode.recorded(uri)
        except (storage.StorageError, TransientError, SpecError):
            code = None  # no recorded code to try: the first reason stands
        if code is None:
            raise
    try:
        usercode.activate(code, "recorded code")
    except SpecError as exc:
        raise HandlerLoadError(f"handler {ref}: {exc}") from None
    return load_handler(ref)


async def serve(uri: str, name: str, host: str, port: int, config: ServerConfig) -> int:
    """Raises HandlerLoadError, before listening, when config.handler cannot be loaded: that is found out
    in a second, not after the model's load."""
    handler = handler_for(config.handler, uri) if config.handler is not None else None
    repository = Repository(name, dict(config.version_labels))
    app = create_app(repository, config, handler)
    runner = await listen(app, host, port)
    log.info("listening", host=host, port=port, model=name, uri=uri)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    watcher = Watcher(repository, uri, config.model_versions, loader(name, config, app[METRICS]))
    try:
        if not await start(watcher, config):
            await runner.cleanup()
            return 1
        watching = None
        if not watcher.single and config.version_poll_seconds:
            watching = loop.create_task(watcher.watch(config.version_poll_seconds))
        await stop.wait()
        log.info("shutting_down", queued=sum(b.depth for b in repository.batchers))
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await drain(runner, app, config.drain_seconds)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


async def drain(runner: web.AppRunner, app: web.Application, seconds: float) -> None:
    """Readiness fails, no new connections; requests in flight finish (or get a 503 with Retry-After once
    `seconds` have passed), every answer from now on says Connection: close; then the server stops."""
    state, repository = app[DRAIN], app[REPOSITORY]
    state.draining = True
    repository.stop_ready()
    for site in list(runner.sites):
        await site.stop()  # the listening socket only: open connections stay
    loop = asyncio.get_running_loop()
    started = loop.time()
    cut = 0
    while state.in_flight or loop.time() - started < LINGER_SECONDS:
        if loop.time() - started >= seconds:
            cut = state.cut_off()
            break
        await asyncio.sleep(POLL_SECONDS)
    log.info("drained", seconds=round(loop.time() - started, 3), cut_off=cut)
    await runner.cleanup()  # closes idle connections, writes the last answers, then stops the batchers


async def start(watcher: Watcher, config: ServerConfig) -> bool:
    """Load what the URI holds; False when the server can never become ready (it should stop)."""
    repository, uri = watcher.repository, watcher.uri
    started = time.perf_counter()
    try:
        await watcher.start()
    except (storage.StorageError, TransientError) as exc:
        log.error("model_load_failed", uri=uri, error=str(exc))
        return False
    if not repository.available() and (watcher.single or not config.version_poll_seconds):
        # Nothing will be tried again: a server that can never become ready says so and stops.
        errors = [f"version {v.name}: {v.error}" for v in repository.versions.values()] or [f"no versions in {uri}"]
        log.error("model_load_failed", uri=uri, error="; ".join(errors))
        return False
    log.info(
        "ready" if repository.ready else "waiting_for_versions",
        model=repository.name,
        versions=[v.name for v in repository.available()],
        load_seconds=round(time.perf_counter() - started, 3),
    )
    return True
