"""Stores that fail the way real ones do now and then: a web server answering 503, a TCP port that resets
every connection. Each counts the requests it saw, so a test can tell that the trainer retried."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Flaky:
    """Answers 503 to the first `failures` requests (all of them with failures=-1), then serves `files`."""

    def __init__(self, files: dict[str, Path], failures: int) -> None:
        self.files, self.failures, self.requests = files, failures, 0
        self.lock = threading.Lock()
        self.url = ""

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        with self.lock:
            self.requests += 1
            failing = self.failures < 0 or self.requests <= self.failures
        if failing:
            handler.send_response(503)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        path = self.files.get(handler.path.split("?")[0])
        if path is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data = path.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)


@contextlib.contextmanager
def flaky_http(files: dict[str, Path] | None = None, failures: int = -1) -> Iterator[Flaky]:
    """A local web server, as `flaky.url`; files maps URL paths ("/d.npz") to local files."""
    flaky = Flaky(files or {}, failures)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            flaky._answer(self, body=True)

        def do_HEAD(self) -> None:
            flaky._answer(self, body=False)

        do_PUT = do_POST = do_DELETE = do_GET

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    flaky.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield flaky
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def resetting_port() -> Iterator[tuple[str, list[int]]]:
    """A port that accepts connections and resets each one at once. -> (its http:// URL, [connections])."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    seen = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen[0] += 1
            # SO_LINGER 0: close() sends RST, what a crashed proxy or a dropped NAT entry looks like.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", seen
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
