"""Start `keras-server` as a real process on a free local port."""

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
from typing import Any


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
def model_server(
    model: Path, name: str, *extra: str, log_file: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`log_file`: where the server's output goes instead of a pipe, for tests that send more requests
    than a pipe nobody reads can hold lines for (a full pipe blocks the server's event loop)."""
    port = free_port()
    cmd = [
        str(Path(sys.executable).parent / "keras-server"),
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
    output = open(log_file, "w") if log_file is not None else subprocess.PIPE  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_file.read_text() if log_file else proc.stdout.read() if proc.stdout else ""
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
        if log_file is not None:
            output.close()  # type: ignore[union-attr]


def captured_serve(monkeypatch: Any) -> list[Any]:
    """Replace the model server's `serve` with one that records the ServerConfig `keras-server` built and
    returns 0: the flags' effect, without loading a model."""
    from keras_server import server

    seen: list[Any] = []

    async def fake_serve(uri: str, name: str, host: str, port: int, config: Any) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(server, "serve", fake_serve)
    return seen
