"""Request bodies read within their limits, and JSON coding big enough to stall the loop done off it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import numpy as np
import orjson
from aiohttp import web

from keras_server import codec
from keras_server.batching import Arrival

P = ParamSpec("P")
T = TypeVar("T")

# Body encodings aiohttp decodes itself (zlib, in bounded steps; the decoded body is what
# max_request_bytes limits, so a small bomb gets a 413). Others would reach the JSON parser undecoded.
CONTENT_ENCODINGS = ("identity", "gzip", "deflate")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise codec.RequestError(400, f"the body is not valid JSON: {exc}") from exc


def output_bytes(outputs: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in outputs.values())


class Bodies:
    def __init__(self, max_request_bytes: int, offload_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.offload_bytes = offload_bytes
        # Not the loop's default executor: model loading uses that, and two threads are enough to keep
        # large bodies off the loop (the bytes budget bounds how many wait for them).
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="codec")

    async def read(self, request: web.Request, arrival: Arrival) -> bytes:
        """The body, admitted to `arrival`'s budget before it is buffered when its length is known."""
        encoding = request.headers.get("Content-Encoding")
        if encoding is not None and encoding.strip().lower() not in CONTENT_ENCODINGS:
            raise codec.RequestError(
                415, f"unsupported Content-Encoding {encoding[:50]!r}; one of {', '.join(CONTENT_ENCODINGS)}"
            )
        length = request.content_length
        if length is not None:
            if length > self.max_request_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_request_bytes, actual_size=length)
            arrival.admit(length)  # before reading: a refused body is never buffered
            return await request.read()
        body = await request.read()  # chunked: its size is known once read (at most client_max_size)
        arrival.admit(len(body))
        return body

    async def off_loop(self, size: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn(*args) in a codec thread when `size` bytes make it long enough to stall the loop.

        Parsing holds the GIL for its Python parts, but the interpreter hands it back to the loop every
        switch interval (5 ms), so probes and batch deadlines keep their pace.
        """
        if size < self.offload_bytes:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
