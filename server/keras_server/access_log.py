"""Each answered request counted in the metrics (endpoint, status, version) and, from a status on, logged."""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web

from keras_server.metrics import Metrics

log = structlog.get_logger("keras_server")

ROUTED = web.RequestKey("routed", str)  # the version a request went to, for the metrics
# --access-log: the lowest status logged.
LOG_FROM = {"all": 0, "errors": 400, "off": 1000}


def endpoint(request: web.Request) -> str:
    """The route's template (bounded, unlike paths), or "unmatched"."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


class AccessLog:
    def __init__(self, metrics: Metrics, access_log: str) -> None:
        self.metrics = metrics
        self.log_from = LOG_FROM[access_log]
        # The metrics' children by (endpoint, status, version): labels() takes a lock and builds keys on
        # every call. Bounded: endpoints are the routes' templates, versions those served.
        self.children: dict[tuple[str, int, str], tuple[Any, Any]] = {}

    def record(self, request: web.Request, status: int, started: float) -> None:
        """`request` was answered with `status`; it began at perf_counter() `started`."""
        elapsed = time.perf_counter() - started
        path = endpoint(request)
        version = request.get(ROUTED, "")
        child = self.children.get((path, status, version))
        if child is None:
            child = self.children[path, status, version] = (
                self.metrics.requests.labels(path, str(status), version),
                self.metrics.latency.labels(path, version),
            )
        child[0].inc()
        child[1].observe(elapsed)
        if status >= self.log_from:
            log.info("request", method=request.method, path=request.path, status=status, ms=round(elapsed * 1000, 2))
