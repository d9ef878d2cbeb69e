"""The HTTP server (aiohttp): routes of both protocols, errors as JSON, metrics, access logs.

aiohttp because it is already the stack of kopf and kmock here, needs no extra server process
model, and its handlers stay on one event loop while model calls run in the batcher's thread.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from keras_operator import __version__
from keras_trainer.serving import codec
from keras_trainer.serving.batching import Arrival, Batcher, Overloaded
from keras_trainer.serving.model import ServedModel, TensorSpec

log = structlog.get_logger("keras_server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


P = ParamSpec("P")
T = TypeVar("T")
MIB = 1024 * 1024


def env_int(name: str, default: int) -> int:
    """A non-negative whole number from the environment: the server flags the CLI does not carry."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class ServerConfig:
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_request_bytes: int = 10 * MIB
    max_queue: int = 1024
    # Bytes of request bodies held at once, from arrival to answer: the count of requests alone would
    # let 1,024 bodies of 10 MiB in. 0: no limit.
    max_queued_bytes: int = field(default_factory=lambda: env_int("KERAS_SERVER_MAX_QUEUED_BYTES", 256 * MIB))
    # Rows waiting for the model (how long the queue takes to drain depends on the model). 0: no limit.
    max_queued_rows: int = field(default_factory=lambda: env_int("KERAS_SERVER_MAX_QUEUED_ROWS", 0))
    # Bodies (and answers) from this size are parsed (and written) in a thread: a few MiB of JSON keep
    # the event loop 50+ ms, stalling probes and the batcher's deadlines. Below it, the thread hop costs
    # more than it saves.
    offload_bytes: int = field(default_factory=lambda: env_int("KERAS_SERVER_OFFLOAD_BYTES", 64 * 1024))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "keras_server_requests",
            "Requests by endpoint and HTTP status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keras_server_request_duration_seconds",
            "Request latency by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "keras_server_batch_size",
            "Rows per model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "keras_server_queue_depth", "Requests waiting for a model call.", registry=self.registry
        )
        self.load_seconds = Gauge(
            "keras_server_model_load_seconds", "Time to load and warm up the model.", registry=self.registry
        )
        self.held_bytes = Gauge(
            "keras_server_held_request_bytes",
            "Bytes of request bodies admitted and not yet answered.",
            registry=self.registry,
        )
        self.queued_rows = Gauge("keras_server_queued_rows", "Rows waiting for a model call.", registry=self.registry)
        self.dropped = Counter(
            "keras_server_dropped_requests",
            "Requests whose client went away before the model ran them: their work was skipped.",
            registry=self.registry,
        )


def json_response(data: Any, status: int = 200) -> web.Response:
    # orjson writes numpy arrays itself: the outputs of a batch never become Python lists.
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status, content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def _endpoint(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


class Slot:
    """The served model's name from the start; the model itself once it has loaded and warmed up."""

    def __init__(self, name: str, version: str = "1") -> None:
        self.name, self.version = name, version
        self.model: ServedModel | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None and self.model.ready

    def loaded(self) -> ServedModel:
        if self.model is None or not self.model.ready:
            raise codec.RequestError(503, "the model is still loading")
        return self.model

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Not loaded(): requests admitted before a shutdown began are still answered.
        if self.model is None:
            raise codec.RequestError(503, "the model is still loading")
        return self.model.predict(inputs)


BATCHER = web.AppKey("batcher", Batcher)
METRICS = web.AppKey("metrics", Metrics)
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer


def create_app(slot: Slot, config: ServerConfig) -> web.Application:
    metrics = Metrics()
    batcher = Batcher(
        slot.predict,
        max_batch_size=config.max_batch_size,
        max_latency=config.max_latency_ms / 1000,
        max_queue=config.max_queue,
        max_bytes=config.max_queued_bytes,
        max_rows=config.max_queued_rows,
        on_batch=metrics.batch_size.observe,
        on_drop=metrics.dropped.inc,
    )
    metrics.queue_depth.set_function(lambda: batcher.depth)
    metrics.held_bytes.set_function(lambda: batcher.held_bytes)
    metrics.queued_rows.set_function(lambda: batcher.queued_rows)
    # Not the loop's default executor: model loading uses that, and two threads are enough to keep
    # large bodies off the loop (the bytes budget bounds how many wait for them).
    codec_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")

    def observed(request: web.Request, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        endpoint = _endpoint(request)
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        log.info("request", method=request.method, path=request.path, status=status, ms=round(elapsed * 1000, 2))

    @web.middleware
    async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, f"the request body is larger than {config.max_request_bytes} bytes")
        except web.HTTPException as exc:  # 404 / 405 from routing
            response = error(exc.status, exc.reason)
        except codec.RequestError as exc:
            response = error(exc.status, exc.message)
        except Overloaded as exc:
            response = error(503, str(exc))
            response.headers["Retry-After"] = "1"
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): nobody reads an answer, but it is counted.
            observed(request, CLIENT_GONE, started)
            raise
        except Exception as exc:  # a bug or a model failure, never bad input: still JSON
            log.exception("request_failed", path=request.path)
            response = error(500, f"internal error: {type(exc).__name__}: {exc}")
        observed(request, response.status, started)
        return response

    async def off_loop(size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args) in a codec thread when `size` bytes make it long enough to stall the loop.

        Parsing holds the GIL for its Python parts, but the interpreter hands it back to the loop every
        switch interval (5 ms), so probes and batch deadlines keep their pace.
        """
        if size < config.offload_bytes:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(codec_executor, lambda: fn(*args, **kwargs))

    async def read_body(request: web.Request, arrival: Arrival) -> bytes:
        length = request.content_length
        if length is not None:
            if length > config.max_request_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=config.max_request_bytes, actual_size=length)
            arrival.admit(length)  # before reading: a refused body is never buffered
            return await request.read()
        body = await request.read()  # chunked: its size is known once read (at most client_max_size)
        arrival.admit(len(body))
        return body

    def parse_json(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise codec.RequestError(400, f"the body is not valid JSON: {exc}") from exc

    def check_model(request: web.Request) -> None:
        name = request.match_info["name"]
        if name != slot.name:
            raise codec.RequestError(404, f"model {name!r} not found; this server serves {slot.name!r}")
        version = request.match_info.get("version")
        if version is not None and version != slot.version:
            raise codec.RequestError(404, f"model {name!r} has no version {version!r}; it has {slot.version!r}")

    async def run(arrival: Arrival, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        slot.loaded()
        return await arrival.submit(inputs)

    def output_bytes(outputs: dict[str, np.ndarray]) -> int:
        return sum(a.nbytes for a in outputs.values())

    # --- TensorFlow Serving REST ---

    async def tfs_status(request: web.Request) -> web.Response:
        check_model(request)
        state = "AVAILABLE" if slot.ready else "LOADING"
        return json_response(
            {
                "model_version_status": [
                    {"version": slot.version, "state": state, "status": {"error_code": "OK", "error_message": ""}}
                ]
            }
        )

    async def tfs_metadata(request: web.Request) -> web.Response:
        check_model(request)
        model = slot.loaded()
        signature = {
            "inputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.inputs},
            "outputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.outputs},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response(
            {
                "model_spec": {"name": model.name, "signature_name": "", "version": model.version},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            }
        )

    def decode_tfs(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], codec.TfsFormat]:
        return codec.parse_tfs(parse_json(body), specs)

    def render_tfs(outputs: dict[str, np.ndarray], fmt: codec.TfsFormat) -> bytes:
        return orjson.dumps(codec.encode_tfs(outputs, fmt), option=orjson.OPT_SERIALIZE_NUMPY)

    async def tfs_predict(request: web.Request) -> web.Response:
        check_model(request)
        arrival = batcher.arrive()
        try:
            body = await read_body(request, arrival)
            inputs, fmt = await off_loop(len(body), decode_tfs, body, slot.loaded().inputs)
            outputs = await run(arrival, inputs)
            text = await off_loop(output_bytes(outputs), render_tfs, outputs, fmt)
        finally:
            arrival.leave()
        return web.Response(body=text, content_type="application/json")

    # --- Open Inference Protocol v2 ---

    async def live(request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        return json_response({"ready": slot.ready}, status=200 if slot.ready else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return json_response(
            {"name": "keras-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def model_ready(request: web.Request) -> web.Response:
        check_model(request)
        return json_response({"name": slot.name, "ready": slot.ready}, status=200 if slot.ready else 503)

    async def model_metadata(request: web.Request) -> web.Response:
        check_model(request)
        model = slot.loaded()
        return json_response(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": "keras",
                "inputs": [codec.v2_tensor_metadata(s) for s in model.inputs],
                "outputs": [codec.v2_tensor_metadata(s) for s in model.outputs],
            }
        )

    def decode_v2(body: bytes, header_length: str | None, specs: list[TensorSpec]) -> codec.V2Request:
        header, binary = codec.split_binary(body, header_length)
        return codec.parse_v2(parse_json(header), specs, binary)

    def render_v2(outputs: dict[str, np.ndarray], parsed: codec.V2Request) -> tuple[bytes, bytes]:
        response, section = codec.encode_v2(outputs, slot.name, slot.version, parsed)
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), section

    async def infer(request: web.Request) -> web.Response:
        check_model(request)
        arrival = batcher.arrive()
        try:
            body = await read_body(request, arrival)
            header_length = request.headers.get(codec.BINARY_HEADER)
            parsed = await off_loop(len(body), decode_v2, body, header_length, slot.loaded().inputs)
            outputs = await run(arrival, parsed.inputs)
            text, section = await off_loop(output_bytes(outputs), render_v2, outputs, parsed)
        finally:
            arrival.leave()
        if not section:
            return web.Response(body=text, content_type="application/json")
        return web.Response(
            body=text + section, content_type="application/octet-stream", headers={codec.BINARY_HEADER: str(len(text))}
        )

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def on_startup(app: web.Application) -> None:
        batcher.start()

    async def on_shutdown(app: web.Application) -> None:
        if slot.model is not None:
            slot.model.ready = False  # readiness fails first, so the Service stops sending new requests

    async def on_cleanup(app: web.Application) -> None:
        await batcher.close()
        codec_executor.shutdown(wait=False, cancel_futures=True)

    app = web.Application(middlewares=[observe], client_max_size=config.max_request_bytes)
    app[BATCHER], app[METRICS] = batcher, metrics
    # aiohttp tries routes in order: the hot ones first.
    app.router.add_post("/v1/models/{name}:predict", tfs_predict)
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_post("/v1/models/{name}/versions/{version}:predict", tfs_predict)
    app.router.add_get("/v1/models/{name}", tfs_status)
    app.router.add_get("/v1/models/{name}/versions/{version}", tfs_status)
    app.router.add_get("/v1/models/{name}/metadata", tfs_metadata)
    app.router.add_get("/v1/models/{name}/versions/{version}/metadata", tfs_metadata)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/{name}", model_metadata)
    app.router.add_get("/v2/models/{name}/ready", model_ready)
    app.router.add_get("/v2/models/{name}/versions/{version}", model_metadata)
    app.router.add_get("/v2/models/{name}/versions/{version}/ready", model_ready)
    app.router.add_post("/v2/models/{name}/versions/{version}/infer", infer)
    app.router.add_get("/metrics", prometheus)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
