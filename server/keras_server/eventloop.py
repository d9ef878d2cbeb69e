"""The model server's event loop: uvloop where it is installed, asyncio's own otherwise.

The server's event loop is its bottleneck with small requests (one core at 100 % while the model
thread idles, bench/README.md): uvloop's transports and scheduling in C take ~10 % off each request.
`KERAS_SERVER_UVLOOP=0` keeps asyncio's loop (an escape hatch, and the benchmark's A/B switch).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is wanted and importable; None: asyncio's default."""
    if os.environ.get("KERAS_SERVER_UVLOOP", "1").strip().lower() in ("0", "false", "no"):
        return None
    try:
        import uvloop
    except ImportError:  # not built for every platform (Windows): the server still runs
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
