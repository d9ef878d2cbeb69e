"""SIGTERM on a real server process: what is on its way is answered, then the process exits promptly."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

from helpers import models
from helpers.server import model_server

BODY = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()


def request(path: str, body: bytes, length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def test_keepalive_request_written_at_sigterm_is_answered_with_connection_close(tmp_path: Path) -> None:
    path = models.single(tmp_path / "m.keras")
    with model_server(path, "m", "--drain-seconds", "5", log_file=tmp_path / "log") as (url, proc):
        sock = connect(url)
        sock.sendall(request("/v1/models/m:predict", BODY))
        status, headers, _ = read_response(sock)
        assert status == 200
        assert headers.get("connection", "").lower() != "close"
        # The next request on the kept-alive connection leaves as the signal arrives.
        proc.send_signal(signal.SIGTERM)
        sock.sendall(request("/v1/models/m:predict", BODY))
        status, headers, body = read_response(sock)
        assert status == 200, body
        assert headers["connection"].lower() == "close"
        assert len(json.loads(body)["predictions"]) == 1
        assert sock.recv(1) == b""  # then the server closes it
        sock.close()
        started = time.monotonic()
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 5  # idle: out once the linger is over, not the drain deadline


def test_slow_upload_in_progress_at_sigterm_gets_a_503_with_retry_after(tmp_path: Path) -> None:
    path = models.single(tmp_path / "m.keras")
    with model_server(path, "m", "--drain-seconds", "2", log_file=tmp_path / "log") as (url, proc):
        sock = connect(url)
        sock.sendall(request("/v1/models/m:predict", BODY[:10], length=len(BODY)))  # the rest never comes
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status, headers, body = read_response(sock)
        assert status == 503, body
        assert headers["retry-after"] == "1"
        assert headers["connection"].lower() == "close"
        assert "shutting down" in json.loads(body)["error"]
        assert time.monotonic() - signalled < 5
        sock.close()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 6  # not the old 25 s
    log = (tmp_path / "log").read_text()
    assert '"cut_off": 1' in log


def test_idle_server_exits_promptly(tmp_path: Path) -> None:
    path = models.single(tmp_path / "m.keras")
    with model_server(path, "m", log_file=tmp_path / "log") as (_url, proc):
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 4
