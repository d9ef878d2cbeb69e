"""The admission webhook's HTTPS server: AdmissionReview in, AdmissionReview out (controllers/admission.py).

Not a kopf handler: main.py serves it in every replica, leader or standby, from the process'
start, for as long as it runs. The API server calls whichever replica its Service picks, and a standby's
answer is as good as the leader's (the check reads nothing from the cluster). It runs in threads of its
own, so a burst of applies never delays a reconcile's event loop. The certificate is read again when
its files change: cert-manager renews it in place.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from keras_operator.controllers.admission import BadReview, review

log = structlog.get_logger("keras_operator.admission.server")

PATH = "/validate"
# An AdmissionReview holds the object and, on an update, its old version: the API server stores
# objects of at most 1.5 MiB (etcd's default request limit), so twice that and a margin is plenty.
MAX_BODY = 4 * 1024 * 1024
REQUEST_TIMEOUT = 10.0  # seconds a connection may take to send its request (the API server's own limit is 30)
READ_CHUNK = 64 * 1024
# The webhook shares the operator pod's memory (256 MiB in the chart): a parsed body takes about ten
# times its size, so only this many are read and checked at once; the others wait their turn (our
# resources are a few KB: checking one takes milliseconds). Connections beyond MAX_CONNECTIONS are
# closed at once rather than given a thread each.
CONCURRENT_CHECKS = 2
MAX_CONNECTIONS = 64


class Certificate:
    """A server-side TLS context from DIR/tls.crt and DIR/tls.key, built again when either file changes."""

    def __init__(self, cert_dir: str | Path, check_every: float = 1.0) -> None:
        self.files = (Path(cert_dir) / "tls.crt", Path(cert_dir) / "tls.key")
        self.check_every = check_every
        self._lock = threading.Lock()
        self._stamp: tuple[float, ...] | None = None
        self._checked = 0.0
        self._context = self._load()

    def _mtimes(self) -> tuple[float, ...]:
        return tuple(os.stat(f).st_mtime for f in self.files)  # follows the Secret volume's ..data symlink

    def _load(self) -> ssl.SSLContext:
        stamp = self._mtimes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*self.files)
        self._stamp = stamp
        return context

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return self._context
        with self._lock:
            self._checked = now
            try:
                if self._mtimes() != self._stamp:
                    self._context = self._load()
                    log.info("webhook_certificate_reloaded", file=str(self.files[0]))
            except (OSError, ssl.SSLError) as exc:  # half-written during a swap: keep the old one, retry later
                log.warning("webhook_certificate_unreadable", error=str(exc))
        return self._context


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"  # the API server keeps its connections alive

    def do_POST(self) -> None:
        if self.path.split("?")[0] != PATH:
            self._answer(404, {"error": f"no such path; the webhook answers POST {PATH}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._answer(411, {"error": "Content-Length: required"})
            return
        if not 0 <= length <= MAX_BODY:
            self._answer(413, {"error": f"the body is larger than {MAX_BODY} bytes"})
            self.close_connection = True
            return
        try:
            with self.server.checks:
                body = self._read(length)
                if body is None:
                    self._answer(408, {"error": f"the body did not arrive within {REQUEST_TIMEOUT:g} s"})
                    self.close_connection = True
                    return
                document = json.loads(body)
                answer = review(document)
        except (ValueError, BadReview) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self._answer(400, {"error": str(exc) if isinstance(exc, BadReview) else "the body is not JSON"})
            return
        result = answer["response"]
        if not result["allowed"]:
            request = document["request"]
            log.info(
                "admission_refused",
                kind=(request.get("kind") or {}).get("kind"),
                namespace=request.get("namespace"),
                name=request.get("name"),
                operation=request.get("operation"),
                message=result["status"]["message"],
            )
        self._answer(200, answer)

    def _read(self, length: int) -> bytes | None:
        """The body, or None when it takes longer than REQUEST_TIMEOUT in all: the socket's timeout bounds
        each read only, and a client trickling bytes would otherwise hold a check slot for ever."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        chunks: list[bytes] = []
        left = length
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(min(left, READ_CHUNK))
                if not chunk:
                    raise BadReview(f"the body ended before its Content-Length ({length} bytes)")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            return None
        finally:
            self.connection.settimeout(REQUEST_TIMEOUT)
        return b"".join(chunks)

    def do_GET(self) -> None:
        self._answer(405, {"error": f"the webhook answers POST {PATH}"})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per refusal (above) says what matters; the API server calls on every apply


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    certificate: Certificate
    checks: threading.BoundedSemaphore
    connections: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)  # the API server's call fails; its failurePolicy decides
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        # The handshake happens on the handler's thread (first read), so a slow client never holds accept().
        return self.certificate.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("webhook_connection_failed", client=str(client_address))  # TLS or network errors of a client


class WebhookServer:
    """The webhook on `port` (0: any free port, see `.port`) until `close()`."""

    def __init__(self, port: int, cert_dir: str | Path, host: str = "0.0.0.0") -> None:
        self.server = _Server((host, port), _Handler, bind_and_activate=False)
        self.server.certificate = Certificate(cert_dir)
        self.server.checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)
        self.server.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.server.allow_reuse_address = True
        self.server.server_bind()
        self.server.server_activate()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="admission-webhook")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> WebhookServer:
        self._thread.start()
        log.info("webhook_serving", port=self.port, path=PATH)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
