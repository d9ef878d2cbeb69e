"""Start `keras-trainer serve` as a real process on a free local port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# One port for the whole session: the operator starts its metrics server once per process.
OPERATOR_METRICS_PORT = free_port()


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def post_json(url: str, body: object, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@contextlib.contextmanager
def model_server(model: Path, name: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "keras-trainer"),
        "serve",
        "--model-uri",
        str(model),
        "--model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    env = {**os.environ, "KERAS_OPERATOR_LOG_FORMAT": "json"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            with contextlib.suppress(OSError):
                if get_json(f"{url}/v2/health/ready")[0] == 200:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the model server did not become ready")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
