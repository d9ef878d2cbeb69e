"""The HTTP server (aiohttp): routes of both protocols, errors as JSON, metrics, access logs.

aiohttp because it is already the stack of kopf and kmock here, needs no extra server process
model, and its handlers stay on one event loop while model calls run in the batcher's thread.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from keras_operator import __version__
from keras_trainer.serving import codec
from keras_trainer.serving.batching import Arrival, Batcher, Overloaded
from keras_trainer.serving.model import ServedModel

log = structlog.get_logger("keras_server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServerConfig:
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_request_bytes: int = 10 * 1024 * 1024
    max_queue: int = 1024


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


def create_app(slot: Slot, config: ServerConfig) -> web.Application:
    metrics = Metrics()
    batcher = Batcher(
        slot.predict,
        max_batch_size=config.max_batch_size,
        max_latency=config.max_latency_ms / 1000,
        max_queue=config.max_queue,
        on_batch=metrics.batch_size.observe,
    )
    metrics.queue_depth.set_function(lambda: batcher.depth)

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
        except Exception as exc:  # a bug or a model failure, never bad input: still JSON
            log.exception("request_failed", path=request.path)
            response = error(500, f"internal error: {type(exc).__name__}: {exc}")
        elapsed = time.perf_counter() - started
        endpoint = _endpoint(request)
        metrics.requests.labels(endpoint, str(response.status)).inc()
        metrics.latency.labels(endpoint).observe(elapsed)
        log.info(
            "request", method=request.method, path=request.path, status=response.status, ms=round(elapsed * 1000, 2)
        )
        return response

    async def read_body(request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > config.max_request_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=config.max_request_bytes, actual_size=length)
        return await request.read()

    def parse_json(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise codec.RequestError(400, f"the body is not valid JSON: {exc}") from exc

    async def read_json(request: web.Request) -> Any:
        return parse_json(await read_body(request))

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

    async def tfs_predict(request: web.Request) -> web.Response:
        check_model(request)
        arrival = batcher.arrive()
        try:
            inputs, fmt = codec.parse_tfs(await read_json(request), slot.loaded().inputs)
            return json_response(codec.encode_tfs(await run(arrival, inputs), fmt))
        finally:
            arrival.leave()

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

    async def infer(request: web.Request) -> web.Response:
        check_model(request)
        arrival = batcher.arrive()
        try:
            header, binary = codec.split_binary(await read_body(request), request.headers.get(codec.BINARY_HEADER))
            parsed = codec.parse_v2(parse_json(header), slot.loaded().inputs, binary)
            outputs = await run(arrival, parsed.inputs)
        finally:
            arrival.leave()
        response, section = codec.encode_v2(outputs, slot.name, slot.version, parsed)
        if not section:
            return json_response(response)
        text = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
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
