"""Model server throughput and latency, with and without dynamic batching, against the client's ceiling.

Usage: .venv/bin/python -P bench/serving.py [--seconds 10] [--connections 32]
Needs `wrk` (Debian package). Everything runs on this machine: wrk, the servers and the model share
the cores, so figures are reported next to a baseline measured in the same run: a server that
answers every request with a constant (what wrk can drive at most here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRA_ENV = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_SERVER_ENV", "").split() if "=" in kv)
CONSTANT_SERVER = """
from aiohttp import web
async def answer(request):
    await request.read()
    return web.json_response({"predictions": [[0.1] * 10]})
app = web.Application()
app.router.add_post("/v1/models/digits:predict", answer)
web.run_app(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(path: Path) -> None:
    """The digits CNN of the shared reference figures: 8x8x1 input, about 20k parameters."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.save(path)
    print(f"model: {model.count_params()} parameters")


@contextlib.contextmanager
def server(cmd: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **EXTRA_ENV})
    try:
        deadline = time.monotonic() + 120
        body = json.dumps({"instances": [[[[0.0]] * 8] * 8]}).encode()
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/digits:predict", data=body)
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"server did not start: {cmd}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def wrk(port: int, seconds: int, connections: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/v1/models/digits:predict",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": pct("50"), "p99": pct("99"), "non2xx": float(errors.group(1)) if errors else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    model = work / "digits.keras"
    build_model(model)
    script = work / "post.lua"
    body = json.dumps({"instances": [[[[0.5]] * 8] * 8]})
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
    )
    trainer = str(Path(sys.executable).parent / "keras-trainer")
    runs: list[tuple[str, list[str]]] = [
        ("constant response (client ceiling)", [sys.executable, "-P", "-c", CONSTANT_SERVER]),
        (
            "keras server, batching off (maxBatchSize 1)",
            [trainer, "serve", "--model-uri", str(model), "--model-name", "digits", "--max-batch-size", "1"],
        ),
        (
            "keras server, batching on (maxBatchSize 32, maxLatencyMs 2)",
            [
                trainer,
                "serve",
                "--model-uri",
                str(model),
                "--model-name",
                "digits",
                "--max-batch-size",
                "32",
                "--max-latency-ms",
                "2",
            ],
        ),
    ]
    results = []
    for label, cmd in runs:
        port = free_port()
        full = [*cmd, str(port)] if "-c" in cmd else [*cmd, "--host", "127.0.0.1", "--port", str(port)]
        with server(full, port):
            wrk(port, 2, args.connections, script)  # warm-up
            results.append((label, wrk(port, args.seconds, args.connections, script)))
        print(f"{label}: {results[-1][1]}", flush=True)
    ceiling = results[0][1]["rps"]
    lines = [
        f"wrk -t2 -c{args.connections} -d{args.seconds}s, one example per request, on this 2-core machine "
        "(wrk and the server share it).",
        "",
        "| server | requests/s | vs ceiling | p50 ms | p99 ms | non-2xx |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in results:
        lines.append(
            f"| {label} | {r['rps']:.0f} | {r['rps'] / ceiling:.2f} | {r['p50']:.2f} | {r['p99']:.2f} "
            f"| {r['non2xx']:.0f} |"
        )
    off, on = results[1][1], results[2][1]
    lines += [
        "",
        f"batching on / off: {on['rps'] / off['rps']:.2f}x requests/s, p99 {on['p99']:.2f} ms vs {off['p99']:.2f} ms",
    ]
    report = "\n".join(lines)
    print(report)
    (HERE / f"results-serving-c{args.connections}.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
