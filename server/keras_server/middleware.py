"""Around every request: any failure answered as JSON, the drain's bookkeeping, the access log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from keras_server import codec
from keras_server.access_log import AccessLog
from keras_server.batching import Overloaded
from keras_server.protocol import Drain, request_id
from keras_server.responses import error

log = structlog.get_logger("keras_server")

CLIENT_GONE = 499  # nginx's code for a client that closed the connection before the answer
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Observe:
    """The app's middleware (made one by `middleware()`)."""

    def __init__(self, max_request_bytes: int, drain: Drain, access_log: AccessLog) -> None:
        self.max_request_bytes = max_request_bytes
        self.drain = drain
        self.access_log = access_log

    async def __call__(self, request: web.Request, handler: Handler) -> Any:
        started = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        drain = self.drain
        drain.in_flight.add(task)
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = error(413, f"the request body is larger than {self.max_request_bytes} bytes")
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
                self.access_log.record(request, CLIENT_GONE, started)
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
        self.access_log.record(request, response.status, started)
        return response


def middleware(max_request_bytes: int, drain: Drain, access_log: AccessLog) -> Observe:
    return web.middleware(Observe(max_request_bytes, drain, access_log))
