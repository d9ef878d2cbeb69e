"""HTTP below the routes: errors of aiohttp's own parser as JSON, and the state of a draining server.

aiohttp answers a request its parser refuses (a bad method, an over-long URL or header, broken
chunking) before any middleware runs, from `RequestHandler.handle_error`, always as a text/plain 400.
The only hook is the connection's handler class, which `web.Server` makes: `Runner` makes a server
whose connections answer those errors as every other error here, `{"error": ...}` with the status
that says what was wrong.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_request import BaseRequest

log = structlog.get_logger("keras_server")

# The request line and each header field. Different sizes on purpose: the parser reports both as
# LineTooLong, and its limit is how a URL too long (414) is told from a header too long (431).
MAX_LINE_SIZE = 16 * 1024
MAX_FIELD_SIZE = 8190  # aiohttp's default
ALLOWED_METHODS = "GET, HEAD, POST"


def request_id() -> str:
    """Names a failure in the answer and the log, so the answer need not carry the exception."""
    return uuid.uuid4().hex[:16]


def parser_error(exc: BaseException | None, status: int) -> tuple[int, str]:
    """(status, message) for what aiohttp's parser refused. The parser's own text quotes raw bytes
    of the request back; the message keeps only its first line (what was wrong)."""
    if isinstance(exc, LineTooLong):
        if exc.args[1:2] == (MAX_LINE_SIZE,):
            return 414, f"the request line (method, URL, version) is longer than {MAX_LINE_SIZE} bytes"
        return 431, f"a request header is longer than {MAX_FIELD_SIZE} bytes"
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in exc.message:
            return 400, "HTTPS traffic on an HTTP port"
        return 405, f"unknown HTTP method; this server takes {ALLOWED_METHODS}"
    if isinstance(exc, HttpProcessingError):
        first = (exc.message or "").strip().split("\n")[0].rstrip(":").strip() or "bad request"
        if first.startswith("Too many headers"):
            return 431, "too many request headers"
        return 400, f"malformed HTTP request: {first[:200]}"
    return status, "bad request"


class JsonErrorHandler(web.RequestHandler):
    """A connection whose own error answers (parser errors, failures outside the app) are JSON."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp's own: an answer has begun, only closing is left
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            rid = request_id()
            log.error("request_failed", request_id=rid, status=status, exc_info=exc)
            text = f"internal error (request id {rid})"
        else:
            status, text = parser_error(exc, status)
            log.info("bad_http_request", status=status, error=text)
        response = web.Response(body=orjson.dumps({"error": text}), status=status, content_type="application/json")
        if status == 405:
            response.headers["Allow"] = ALLOWED_METHODS
        response.force_close()  # the parser's state after a refused message is unknown
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections are JsonErrorHandlers, with this server's header limits."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_LINE_SIZE)
        kwargs.setdefault("max_field_size", MAX_FIELD_SIZE)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app; its request factory and handler
        return JsonErrorServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )


class Drain:
    """Shutdown state the middleware reads on every request (one attribute) and `serve` drives.

    Requests in flight are the middleware's tasks: from headers read (a slow upload included) to the
    answer. At the drain deadline the ones left are cancelled and answered 503 with Retry-After.
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.cut: set[asyncio.Task[Any]] = set()

    def cut_off(self) -> int:
        """Cancel what is still in flight; each is answered 503 by the middleware. Returns how many."""
        tasks = [t for t in self.in_flight if not t.done()]
        self.cut.update(tasks)
        for task in tasks:
            task.cancel()
        return len(tasks)
