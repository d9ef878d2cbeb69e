"""The HTTP server (aiohttp): routes of both protocols, errors as JSON, metrics, access logs.

aiohttp because it is already the stack of kopf and kmock here, needs no extra server process
model, and its handlers stay on one event loop while model calls run in the batcher's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import numpy as np
import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from keras_common import __version__
from keras_server import codec, examples
from keras_server.batching import Arrival, Batcher, Overloaded
from keras_server.config import ServerConfig
from keras_server.model import TensorSpec
from keras_server.protocol import Drain, request_id
from keras_server.repository import Repository, Slot, Version

__all__ = ["BATCHER", "DRAIN", "METRICS", "REPOSITORY", "ServerConfig", "Slot", "create_app"]

log = structlog.get_logger("keras_server")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


P = ParamSpec("P")
T = TypeVar("T")


class Metrics:
    def __init__(self, repository: Repository) -> None:
        self.registry = CollectorRegistry()
        # `version`: the version that answered ("" when none did, e.g. an unknown model). Consumers that
        # read by endpoint and code sum over it.
        self.requests = Counter(
            "keras_server_requests",
            "Requests by endpoint, HTTP status code and model version.",
            ["endpoint", "code", "version"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keras_server_request_duration_seconds",
            "Request latency by endpoint and model version.",
            ["endpoint", "version"],
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
            "keras_server_model_load_seconds",
            "Time to load and warm up the model (its latest version loaded).",
            registry=self.registry,
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
        self.queue_depth.set_function(lambda: sum(b.depth for b in repository.batchers))
        self.held_bytes.set_function(lambda: sum(b.held_bytes for b in repository.batchers))
        self.queued_rows.set_function(lambda: sum(b.queued_rows for b in repository.batchers))
        self.registry.register(VersionStates(repository))


class VersionStates(Collector):
    """keras_server_model_version_state{version,state} 1 for each version the server knows, read at scrape."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "keras_server_model_version_state",
            "1 for the state each model version is in (START, LOADING, AVAILABLE, UNLOADING, END).",
            labels=["version", "state"],
        )
        for number, version in sorted(self.repository.versions.items()):
            family.add_metric([str(number), version.state], 1.0)
        yield family


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


def tfs_version_status(version: Version) -> dict[str, Any]:
    failed = version.state == "END" and bool(version.error)
    return {
        "version": version.name,
        "state": version.state,
        "status": {"error_code": "UNKNOWN" if failed else "OK", "error_message": version.error if failed else ""},
    }


BATCHER = web.AppKey("batcher", Batcher)  # the latest version's when the app was made (tests read it)
METRICS = web.AppKey("metrics", Metrics)
DRAIN = web.AppKey("drain", Drain)
REPOSITORY = web.AppKey("repository", Repository)
ROUTED = web.RequestKey("routed", str)  # the version a request went to, for the metrics
CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer
# TF Serving's model paths: the model (latest version), a version by number, a version by label. A name
# never holds ':' (what follows it is the method) nor '/'.
V1_MODEL = "/v1/models/{name:[^/:]+}"
V1_PATHS = (V1_MODEL, V1_MODEL + "/versions/{version:[^/:]+}", V1_MODEL + "/labels/{label:[^/:]+}")
# Body encodings aiohttp decodes itself (zlib, in bounded steps; the decoded body is what
# max_request_bytes limits, so a small bomb gets a 413). Others would reach the JSON parser undecoded.
CONTENT_ENCODINGS = ("identity", "gzip", "deflate")


def create_app(repository: Repository, config: ServerConfig) -> web.Application:
    metrics = Metrics(repository)

    def make_batcher(version: Version) -> Batcher:
        return Batcher(
            version.predict,
            max_batch_size=config.max_batch_size,
            max_latency=config.max_latency_ms / 1000,
            max_queue=config.max_queue,
            max_bytes=config.max_queued_bytes,
            max_rows=config.max_queued_rows,
            on_batch=metrics.batch_size.observe,
            on_drop=metrics.dropped.inc,
        )

    repository.bind(make_batcher)
    drain = Drain()
    # Not the loop's default executor: model loading uses that, and two threads are enough to keep
    # large bodies off the loop (the bytes budget bounds how many wait for them).
    codec_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")

    # The metrics' children by (endpoint, status, version): labels() takes a lock and builds keys on every
    # call. Bounded: endpoints are the routes' templates, versions those served.
    children: dict[tuple[str, int, str], tuple[Any, Any]] = {}
    log_from = {"all": 0, "errors": 400, "off": 1000}[config.access_log]

    def observed(request: web.Request, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        endpoint = _endpoint(request)
        version = request.get(ROUTED, "")
        child = children.get((endpoint, status, version))
        if child is None:
            child = children[endpoint, status, version] = (
                metrics.requests.labels(endpoint, str(status), version),
                metrics.latency.labels(endpoint, version),
            )
        child[0].inc()
        child[1].observe(elapsed)
        if status >= log_from:
            log.info("request", method=request.method, path=request.path, status=status, ms=round(elapsed * 1000, 2))

    @web.middleware
    async def observe(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        started = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        drain.in_flight.add(task)
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, f"the request body is larger than {config.max_request_bytes} bytes")
        except web.HTTPException as exc:  # 404 / 405 from routing
            response = error(exc.status, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except codec.RequestError as exc:
            response = error(exc.status, exc.message)
            if exc.status == 415:  # a body aiohttp may fail to decode while it reads past it: no reuse
                response.force_close()
        except Overloaded as exc:
            response = error(503, str(exc))
        except web.RequestPayloadError:
            response = error(400, "the body could not be read: broken chunked encoding, compression or length")
            response.force_close()  # the rest of the body cannot be read past: the connection is done
        except asyncio.CancelledError:
            if task in drain.cut:  # the drain deadline, not a client gone: it gets an answer
                task.uncancel()
                response = error(503, "the server is shutting down; send the request again")
            else:
                # The client went away (aiohttp cancels the handler): nobody reads an answer, but it is counted.
                observed(request, CLIENT_GONE, started)
                raise
        except Exception:  # a bug or a model failure, never bad input: still JSON, without the exception
            rid = request_id()
            log.exception("request_failed", path=request.path, request_id=rid)
            response = error(500, f"internal error (request id {rid})")
        finally:
            drain.in_flight.discard(task)
        if response.status == 503 and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = "1"
        if drain.draining:
            response.force_close()  # Connection: close, so the client sends its next request elsewhere
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
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in CONTENT_ENCODINGS:
            raise codec.RequestError(
                415, f"unsupported Content-Encoding {encoding[:50]!r}; one of {', '.join(CONTENT_ENCODINGS)}"
            )
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

    def check_name(request: web.Request) -> None:
        name = request.match_info["name"]
        if name != repository.name:
            raise codec.RequestError(404, f"model {name!r} not found; this server serves {repository.name!r}")

    def check_model(request: web.Request) -> Version:
        """The available version the request goes to. The caller announces the request to its batcher
        before any await: from then on the version stays loaded until the request is answered."""
        check_name(request)
        info = request.match_info
        version = repository.route(info.get("version"), info.get("label"))
        request[ROUTED] = version.name
        return version

    def named(request: web.Request) -> Version | None:
        """The version a status or metadata request names, in any state; None: the model as a whole."""
        check_name(request)
        info = request.match_info
        version, label = info.get("version"), info.get("label")
        return None if version is None and label is None else repository.find(version, label)

    async def run(version: Version, arrival: Arrival, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        version.loaded()
        if config.max_rows_per_request is not None:
            rows = next(iter(inputs.values())).shape[0]
            if rows > config.max_rows_per_request:
                raise codec.RequestError(
                    400, f"the request has {rows} rows; this server takes {config.max_rows_per_request} rows at most"
                )
        return await arrival.submit(inputs)

    def output_bytes(outputs: dict[str, np.ndarray]) -> int:
        return sum(a.nbytes for a in outputs.values())

    # --- TensorFlow Serving REST ---

    async def tfs_status(request: web.Request) -> web.Response:
        one = named(request)
        listed = [one] if one is not None else [v for _, v in sorted(repository.versions.items(), reverse=True)]
        return json_response({"model_version_status": [tfs_version_status(v) for v in listed]})

    async def tfs_metadata(request: web.Request) -> web.Response:
        one = named(request)
        if one is None:
            one = repository.route(None, None)
        model = one.loaded()
        signature = {
            "inputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.inputs},
            "outputs": {s.name: codec.tfs_tensor_metadata(s) for s in model.outputs},
            "method_name": "tensorflow/serving/predict",
        }
        return json_response(
            {
                "model_spec": {"name": model.name, "signature_name": "", "version": one.name},
                "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}},
            }
        )

    def decode_tfs(body: bytes, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], codec.TfsFormat]:
        return codec.parse_tfs(parse_json(body), specs)

    def render_tfs(outputs: dict[str, np.ndarray], fmt: codec.TfsFormat) -> bytes:
        return orjson.dumps(codec.encode_tfs(outputs, fmt), option=orjson.OPT_SERIALIZE_NUMPY)

    async def tfs_predict(request: web.Request) -> web.Response:
        version = check_model(request)
        arrival = version.batcher.arrive()  # type: ignore[union-attr]  # an available version has one
        try:
            body = await read_body(request, arrival)
            inputs, fmt = await off_loop(len(body), decode_tfs, body, version.loaded().inputs)
            outputs = await run(version, arrival, inputs)
            text = await off_loop(output_bytes(outputs), render_tfs, outputs, fmt)
        finally:
            arrival.leave()
        return web.Response(body=text, content_type="application/json")

    def decode_examples(body: bytes, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
        return examples.parse_examples(parse_json(body), specs)

    async def tfs_examples(request: web.Request, task: examples.Task) -> web.Response:
        """Classify and Regress: examples in, through the same batcher as predict."""
        version = check_model(request)
        examples.check(task, version.loaded().outputs)  # before any work: a model that cannot is a 400
        arrival = version.batcher.arrive()  # type: ignore[union-attr]
        try:
            body = await read_body(request, arrival)
            inputs = await off_loop(len(body), decode_examples, body, version.loaded().inputs)
            outputs = await run(version, arrival, inputs)
            result = examples.result(task, outputs)
        finally:
            arrival.leave()
        return json_response(result)

    async def tfs_classify(request: web.Request) -> web.Response:
        return await tfs_examples(request, "classify")

    async def tfs_regress(request: web.Request) -> web.Response:
        return await tfs_examples(request, "regress")

    # --- Open Inference Protocol v2 ---

    async def live(request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        return json_response({"ready": repository.ready}, status=200 if repository.ready else 503)

    async def server_metadata(request: web.Request) -> web.Response:
        return json_response(
            {"name": "keras-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def model_ready(request: web.Request) -> web.Response:
        one = named(request)
        if one is None:
            is_ready = repository.ready
        else:
            is_ready = (
                not repository.draining and one.state == "AVAILABLE" and one.model is not None and one.model.ready
            )
        return json_response({"name": repository.name, "ready": is_ready}, status=200 if is_ready else 503)

    async def model_metadata(request: web.Request) -> web.Response:
        one = named(request)
        if one is None:
            one = repository.route(None, None)
        model = one.loaded()
        return json_response(
            {
                "name": repository.name,
                "versions": [v.name for v in repository.available()],
                "platform": "keras",
                "inputs": [codec.v2_tensor_metadata(s) for s in model.inputs],
                "outputs": [codec.v2_tensor_metadata(s) for s in model.outputs],
            }
        )

    def decode_v2(body: bytes, header_length: str | None, specs: list[TensorSpec]) -> codec.V2Request:
        header, binary = codec.split_binary(body, header_length)
        return codec.parse_v2(parse_json(header), specs, binary)

    def render_v2(outputs: dict[str, np.ndarray], parsed: codec.V2Request, version: str) -> tuple[bytes, bytes]:
        response, section = codec.encode_v2(outputs, repository.name, version, parsed)
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), section

    async def infer(request: web.Request) -> web.Response:
        version = check_model(request)
        arrival = version.batcher.arrive()  # type: ignore[union-attr]
        try:
            body = await read_body(request, arrival)
            header_length = request.headers.get(codec.BINARY_HEADER)
            parsed = await off_loop(len(body), decode_v2, body, header_length, version.loaded().inputs)
            outputs = await run(version, arrival, parsed.inputs)
            text, section = await off_loop(output_bytes(outputs), render_v2, outputs, parsed, version.name)
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
        repository.start()

    async def on_shutdown(app: web.Application) -> None:
        repository.stop_ready()  # readiness fails first, so the Service stops sending new requests

    async def on_cleanup(app: web.Application) -> None:
        await repository.close()
        codec_executor.shutdown(wait=False, cancel_futures=True)

    app = web.Application(middlewares=[observe], client_max_size=config.max_request_bytes)
    app[METRICS], app[REPOSITORY], app[DRAIN] = metrics, repository, drain
    if repository.latest is not None and repository.latest.batcher is not None:
        app[BATCHER] = repository.latest.batcher
    # aiohttp tries routes in order: the hot ones first.
    app.router.add_post(V1_MODEL + ":predict", tfs_predict)
    app.router.add_post("/v2/models/{name}/infer", infer)
    for path in V1_PATHS:
        if path != V1_MODEL:
            app.router.add_post(path + ":predict", tfs_predict)
        app.router.add_post(path + ":classify", tfs_classify)
        app.router.add_post(path + ":regress", tfs_regress)
        app.router.add_get(path, tfs_status)
        app.router.add_get(path + "/metadata", tfs_metadata)
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
