"""The operator's own Prometheus metrics (kopf has none): reconciles, their duration, phase changes.

One `Metrics` per operator run, made by main.py, in a registry of its own: a second run in the same process
(the tests start many) counts from zero and serves its own /metrics, and nothing is registered at import."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIServer

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "keras_operator_reconciles",
            "Handler runs by kind, handler and result.",
            ["kind", "handler", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "keras_operator_reconcile_duration_seconds",
            "Handler run time by kind and handler.",
            ["kind", "handler"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "keras_operator_phase_transitions",
            "Phase changes written to a resource's status.",
            ["kind", "phase"],
            registry=self.registry,
        )
        self._server: WSGIServer | None = None

    @contextmanager
    def run_of(self, kind: str, handler: str) -> Iterator[None]:
        """Count and time one handler run; an error is counted and goes on (for kopf or the queue to retry)."""
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.reconciles.labels(kind, handler, "error").inc()
            raise
        finally:
            self.duration.labels(kind, handler).observe(time.perf_counter() - started)
        self.reconciles.labels(kind, handler, "ok").inc()

    def transition(self, kind: str, phase: str) -> None:
        self.transitions.labels(kind, phase).inc()

    def serve(self, port: int) -> None:
        """Expose /metrics on `port` (0: off) until `close`."""
        if not port or self._server is not None:
            return
        try:
            self._server, _ = start_http_server(port, registry=self.registry)
        except OSError as exc:  # a port taken is a setting to fix: stop with why, not retry every minute
            raise kopf.PermanentError(
                f"the metrics endpoint cannot listen on port {port}: {exc} "
                "(KERAS_OPERATOR_METRICS_PORT; 0 turns it off)"
            ) from exc

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
