"""The HTTP server (aiohttp), assembled: the routes of both protocols, health and metrics, behind one
middleware that answers errors as JSON, keeps the drain's count and writes the access log.

aiohttp because it is already the stack of kopf and kmock here, needs no extra server process
model, and its handlers stay on one event loop while model calls run in the batcher's thread.

The parts: `metrics` (Prometheus), `access_log`, `middleware`, `bodies` (reading bodies, JSON coding
off the loop), `context` (what the routes share), `tfserving`, `inference_v2`, `health`.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from keras_server.access_log import AccessLog
from keras_server.batching import Arrays, Batcher
from keras_server.bodies import Bodies
from keras_server.config import ServerConfig
from keras_server.context import Context
from keras_server.handler import Handler, HandlerError
from keras_server.health import Health
from keras_server.inference_v2 import InferenceV2
from keras_server.metrics import Metrics
from keras_server.middleware import middleware
from keras_server.protocol import Drain
from keras_server.repository import Repository, Slot, Version
from keras_server.tfserving import TfServing

__all__ = ["BATCHER", "DRAIN", "METRICS", "REPOSITORY", "Metrics", "ServerConfig", "Slot", "create_app"]

BATCHER = web.AppKey("batcher", Batcher)  # the latest version's when the app was made (tests read it)
METRICS = web.AppKey("metrics", Metrics)
DRAIN = web.AppKey("drain", Drain)
REPOSITORY = web.AppKey("repository", Repository)
CONTEXT = web.AppKey("context", Context)


def model_call(version: Version, handler: Handler | None, metrics: Metrics) -> Callable[[Arrays], Arrays]:
    """What a version's batcher calls with each batch: the model, or the handler around it."""
    if handler is None:
        return version.predict

    def call(inputs: Arrays) -> Arrays:
        try:
            return handler.run(version.loaded().inputs, version.predict, inputs)
        except HandlerError as exc:
            metrics.handler_errors.labels(exc.stage, str(exc.status)).inc()
            raise

    return call


def make_batcher(config: ServerConfig, metrics: Metrics, version: Version, handler: Handler | None = None) -> Batcher:
    """A version's batcher, as the repository makes one for each version it loads."""
    return Batcher(
        model_call(version, handler, metrics),
        max_batch_size=config.max_batch_size,
        max_latency=config.max_latency_ms / 1000,
        max_queue=config.max_queue,
        max_bytes=config.max_queued_bytes,
        max_rows=config.max_queued_rows,
        on_batch=metrics.batch_size.observe,
        on_drop=metrics.dropped.inc,
    )


def create_app(repository: Repository, config: ServerConfig, handler: Handler | None = None) -> web.Application:
    """`handler`: the loaded --handler, around every model call."""
    metrics = Metrics(repository)
    repository.bind(lambda version: make_batcher(config, metrics, version, handler))
    drain = Drain()
    context = Context(repository, config, Bodies(config.max_request_bytes, config.offload_bytes), handler)

    app = web.Application(
        middlewares=[middleware(config.max_request_bytes, drain, AccessLog(metrics, config.access_log))],
        client_max_size=config.max_request_bytes,
    )
    app[METRICS], app[REPOSITORY], app[DRAIN], app[CONTEXT] = metrics, repository, drain, context
    if repository.latest is not None and repository.latest.batcher is not None:
        app[BATCHER] = repository.latest.batcher
    tfs, v2 = TfServing(context), InferenceV2(context)
    # aiohttp tries routes in order: the hot ones first.
    app.router.add_routes(tfs.hot_routes() + v2.hot_routes())
    app.router.add_routes(tfs.routes() + v2.routes() + Health(context).routes())
    app.router.add_get("/metrics", metrics.expose)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


async def on_startup(app: web.Application) -> None:
    app[REPOSITORY].start()


async def on_shutdown(app: web.Application) -> None:
    app[REPOSITORY].stop_ready()  # readiness fails first, so the Service stops sending new requests


async def on_cleanup(app: web.Application) -> None:
    await app[REPOSITORY].close()
    app[CONTEXT].bodies.close()
