"""The server's Prometheus metrics: request counts and latency, batches, queues, model versions."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from keras_server.repository import Repository

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


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
        self.handler_errors = Counter(
            "keras_server_handler_errors",
            "Batches the --handler failed, by method (preprocess, postprocess) and the HTTP status its "
            "requests got (400: values preprocess refused; 500: the handler's fault).",
            ["stage", "code"],
            registry=self.registry,
        )
        self.queue_depth.set_function(lambda: sum(b.depth for b in repository.batchers))
        self.held_bytes.set_function(lambda: sum(b.held_bytes for b in repository.batchers))
        self.queued_rows.set_function(lambda: sum(b.queued_rows for b in repository.batchers))
        self.registry.register(VersionStates(repository))

    async def expose(self, request: web.Request) -> web.Response:
        """GET /metrics."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


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
