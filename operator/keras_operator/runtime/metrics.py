"""The operator's own Prometheus metrics (kopf has none): reconciles, their duration, phase changes."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server

RECONCILES = Counter(
    "keras_operator_reconciles", "Handler runs by kind, handler and result.", ["kind", "handler", "result"]
)
DURATION = Histogram(
    "keras_operator_reconcile_duration_seconds", "Handler run time by kind and handler.", ["kind", "handler"]
)
TRANSITIONS = Counter(
    "keras_operator_phase_transitions", "Phase changes written to a resource's status.", ["kind", "phase"]
)

_started: set[int] = set()
_lock = threading.Lock()


def serve(port: int) -> None:
    """Expose /metrics on `port` once per process (0: off). kopf may restart the operator in-process."""
    if not port:
        return
    with _lock:
        if port not in _started:
            start_http_server(port, registry=REGISTRY)
            _started.add(port)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def instrumented(kind: str, handler: str) -> Callable[[F], F]:
    """Count and time a kopf handler; errors are counted and re-raised for kopf to retry."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except Exception:
                RECONCILES.labels(kind, handler, "error").inc()
                raise
            finally:
                DURATION.labels(kind, handler).observe(time.perf_counter() - started)
            RECONCILES.labels(kind, handler, "ok").inc()
            return result

        return wrapper  # type: ignore[return-value]

    return decorate
