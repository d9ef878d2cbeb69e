"""Runs the model server: listen at once (liveness), load and warm up (then readiness), drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import time

import structlog
from aiohttp import web

from keras_trainer.serving.app import BATCHER, METRICS, ServerConfig, Slot, create_app
from keras_trainer.serving.model import ModelLoadError, ServedModel

log = structlog.get_logger("keras_server")
SHUTDOWN_TIMEOUT = 25.0  # below Kubernetes' default 30 s grace period


async def listen(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` at host:port (port 0: any free port, then see `runner.addresses`)."""
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        # aiohttp lets a handler run on after its client disconnects unless told otherwise: a request
        # whose client gave up would still wait in the queue and take a model call nobody reads.
        handler_cancellation=True,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(uri: str, name: str, host: str, port: int, config: ServerConfig) -> int:
    slot = Slot(name)
    app = create_app(slot, config)
    runner = await listen(app, host, port)
    log.info("listening", host=host, port=port, model=name, uri=uri)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.perf_counter()
    try:
        model = await loop.run_in_executor(None, ServedModel.load, uri, name)
        await loop.run_in_executor(None, model.warm_up, config.max_batch_size)
    except ModelLoadError as exc:
        log.error("model_load_failed", uri=uri, error=str(exc))
        await runner.cleanup()
        return 1
    # TensorFlow and Keras leave millions of long-lived objects; a full collection scanning them stalls
    # the event loop for 100+ ms. Freezing them keeps collections to what requests allocate.
    gc.freeze()
    app[METRICS].load_seconds.set(time.perf_counter() - started)
    slot.model = model
    log.info(
        "ready",
        model=name,
        load_seconds=round(time.perf_counter() - started, 3),
        inputs=[(s.name, s.dtype.name, list(s.shape)) for s in model.inputs],
    )
    await stop.wait()
    log.info("shutting_down", queued=app[BATCHER].depth)
    model.ready = False
    await runner.cleanup()  # stops listening, lets in-flight requests finish, then stops the batcher
    log.info("stopped")
    return 0
