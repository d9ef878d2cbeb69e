"""Model server throughput and latency against peers and the physical limit.

Usage: python bench/serving.py [--seconds 5] [--repeats 3] [--concurrency 1 8 32] [--servers ...]

For each model (the digits MLP and a small CNN), each server answers the same TF Serving REST
requests (`/v1/models/digits:predict`, one example per request) under `wrk` at each concurrency:
  (a) ours, batching on   (b) ours, maxBatchSize 1   (c) KServe 0.21's Python model server with a
  plain Keras predict (in its own venv, made on first use)   (a+h) ours as (a) with a handler that
  does nothing (bench/handler_code/identity.py): what pre/post-processing in the server's process costs
  by itself   plus a constant-response server: the most wrk can drive here, so figures can be read
  against what the client itself allows.
(d) the limit — the model called in-process on large batches, no HTTP — comes from bench/models.py.
A second scenario sends 1,024 examples per request, the batch where (d) peaks (JSON, and the Open
Inference binary extension for ours), to compare rows/s with (d). wrk, the server and the model
share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, free_port, machine, machine_line, median, publish, table

ROOT = HERE.parent
KSERVE_VENV = ROOT / ".cache" / "venv-kserve"
KSERVE_VERSION = "0.21.0"
BIN = Path(sys.executable).parent
HANDLERS = HERE / "handler_code"
CONSTANT_SERVER = """
import sys
from aiohttp import web
async def answer(request):
    await request.read()
    return web.json_response({"predictions": [[0.1] * 10]})
app = web.Application()
app.router.add_post("/v1/models/digits:predict", answer)
app.router.add_post("/v2/models/digits/infer", answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
Command = Callable[[Path, int], list[str]]


def ours(max_batch_size: int, *extra: str) -> Command:
    def command(model: Path, port: int) -> list[str]:
        return [
            str(BIN / "keras-server"),
            "--model-uri",
            str(model),
            "--model-name",
            "digits",
            "--max-batch-size",
            str(max_batch_size),
            "--max-latency-ms",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ]

    return command


def kserve(model: Path, port: int) -> list[str]:
    return [str(KSERVE_VENV / "bin" / "python"), str(HERE / "kserve_server.py"), "digits", str(model), str(port)]


def constant(model: Path, port: int) -> list[str]:
    return [sys.executable, "-c", CONSTANT_SERVER, str(port)]


SERVERS: dict[str, tuple[str, Command]] = {
    "ceiling": ("constant response (wrk's ceiling)", constant),
    "ours": ("(a) ours, batching (32 rows, 2 ms)", ours(32)),
    "ours-single": ("(b) ours, maxBatchSize 1", ours(1)),
    "ours-handler": ("(a+h) ours as (a), identity handler", ours(32, "--handler", "identity:Identity")),
    # Large requests run in chunks of maxBatchSize (a shape warm-up compiled, never a new one): a server meant
    # for 1,024-row requests is configured for them, as TF Serving's max_batch_size would be.
    "ours-large": ("(a') ours, batching (1,024 rows, 2 ms)", ours(1024)),
    "kserve": (f"(c) KServe {KSERVE_VERSION} Python server", kserve),
}


def ensure_kserve() -> None:
    """KServe pins libraries our project does not (python-dateutil among them): a venv of its own,
    with the same TensorFlow and Keras as ours, made once."""
    python = KSERVE_VENV / "bin" / "python"
    if python.exists():
        return
    print(f"creating {KSERVE_VENV} for KServe {KSERVE_VERSION} (once; a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(KSERVE_VENV)], check=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("tensorflow", "keras", "numpy")]
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"kserve=={KSERVE_VERSION}", *pins], check=True)


@contextlib.contextmanager
def server(cmd: list[str], port: int, path: str, body: bytes, headers: dict[str, str]) -> Iterator[int]:
    # The handlers' folder on every server's path (only (a+h) uses it), as spec.code's is in a pod.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HANDLERS), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
            with contextlib.suppress(OSError):
                req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers)
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within 180 s: {' '.join(cmd)}")
            time.sleep(0.3)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def lua_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """wrk posts `body` (read from a file, so binary bodies survive) with `headers`."""
    data = path.with_suffix(".body")
    data.write_bytes(body)
    lines = [
        'wrk.method = "POST"',
        f'local f = io.open("{data}", "rb"); wrk.body = f:read("*a"); f:close()',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, seconds: float, connections: int, script: Path) -> dict[str, float]:
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "errors": float(errors.group(1) if errors else 0)
        + sum(float(g) for g in (socket_errors.groups() if socket_errors else ())),
    }


def tfs_body(shape: list[int], rows: int) -> bytes:
    example: Any = 0.5
    for dim in reversed(shape):
        example = [example] * dim
    return json.dumps({"instances": [example] * rows}).encode()


def v2_binary_body(shape: list[int], rows: int) -> tuple[bytes, dict[str, str]]:
    """An Open Inference request with the binary tensor extension (what tritonclient sends by default)."""
    count = rows
    for dim in shape:
        count *= dim
    data = struct.pack(f"<{count}f", *([0.5] * count))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [rows, *shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + data, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


@dataclass(frozen=True)
class Scenario:
    protocol: str
    path: str
    body: bytes
    headers: dict[str, str]
    rows: int  # examples per request
    concurrency: list[int]


def scenarios(key: str, shape: list[int], args: argparse.Namespace) -> list[Scenario]:
    v1, json_headers = "/v1/models/digits:predict", {"Content-Type": "application/json"}
    found = [Scenario("TF Serving JSON", v1, tfs_body(shape, 1), json_headers, 1, args.concurrency)]
    if key in ("ceiling", "ours-handler"):
        return found
    big = tfs_body(shape, args.big_rows)
    found.append(Scenario("TF Serving JSON", v1, big, json_headers, args.big_rows, [args.big_concurrency]))
    if key == "ours-large":
        found.pop(0)  # one example per request is (a)'s scenario
    if key in ("ours", "ours-large"):
        body, headers = v2_binary_body(shape, args.big_rows)
        v2 = "/v2/models/digits/infer"
        found.append(Scenario("Open Inference binary", v2, body, headers, args.big_rows, [args.big_concurrency]))
    return found


def measure(
    label: str, cmd: list[str], port: int, plan: list[Scenario], args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """One server process, every scenario against it; median of `args.repeats` wrk runs per cell."""
    cells = []
    first = plan[0]
    with server(cmd, port, first.path, first.body, first.headers):
        for index, scenario in enumerate(plan):
            script = lua_script(work / f"req-{port}-{index}.lua", scenario.body, scenario.headers)
            url = f"http://127.0.0.1:{port}{scenario.path}"
            for connections in scenario.concurrency:
                wrk(url, 1, connections, script)  # warm-up: connections, caches, batch shapes
                runs = [wrk(url, args.seconds, connections, script) for _ in range(args.repeats)]
                cell = {
                    "server": label,
                    "protocol": scenario.protocol,
                    "rows_per_request": scenario.rows,
                    "concurrency": connections,
                    "runs": runs,
                    **{key: median([r[key] for r in runs]) for key in ("rps", "p50_ms", "p99_ms", "errors")},
                }
                print(
                    f"  {label}, {scenario.protocol}, {scenario.rows} rows, c={connections}: {cell['rps']:.0f} req/s, "
                    f"p50 {cell['p50_ms']:.2f} ms, p99 {cell['p99_ms']:.2f} ms",
                    flush=True,
                )
                cells.append(cell)
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument(
        "--big-rows", type=int, default=1024, help="examples per request in the rows/s scenario (as (d)'s best batch)"
    )
    parser.add_argument("--big-concurrency", type=int, default=4)
    parser.add_argument("--limit-seconds", type=float, default=3.0, help="per in-process measurement")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is needed: apt-get install wrk", file=sys.stderr)
        return 2
    if "kserve" in args.servers:
        ensure_kserve()
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print("building the models and measuring the in-process limit (d)", flush=True)
    limits = json.loads(
        subprocess.run(
            [sys.executable, str(HERE / "models.py"), str(work), "--seconds", str(args.limit_seconds)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    results: dict[str, Any] = {"machine": machine(), "limits": limits, "models": {}}
    for kind in args.models:
        print(f"{kind}: {limits[kind]['parameters']} parameters", flush=True)
        cells: list[dict[str, Any]] = []
        for key in args.servers:
            label, command = SERVERS[key]
            port = free_port()
            plan = scenarios(key, limits[kind]["input_shape"], args)
            cells += measure(label, command(work / f"{kind}.keras", port), port, plan, args, work)
        results["models"][kind] = cells
    summary = summarize(results, args)
    results["summary"] = summary
    publish("serving", results, render(results, summary, args), args.out)
    return 0


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    top = max(args.concurrency)
    ours_label, kserve_label, ceiling_label = SERVERS["ours"][0], SERVERS["kserve"][0], SERVERS["ceiling"][0]
    handler_label = SERVERS["ours-handler"][0]
    for kind, cells in results["models"].items():
        one = {(c["server"], c["concurrency"]): c for c in cells if c["rows_per_request"] == 1}
        entry: dict[str, Any] = {}
        a, c = one.get((ours_label, top)), one.get((kserve_label, top))
        if a and c:
            entry["ours_vs_kserve_rps"] = a["rps"] / c["rps"]
            entry["ours_vs_kserve_p99"] = a["p99_ms"] / c["p99_ms"]
        # The handler's cost: (a+h) against (a), same process layout, same run, at each concurrency.
        ratios = {
            n: one[(handler_label, n)]["rps"] / one[(ours_label, n)]["rps"]
            for n in args.concurrency
            if (handler_label, n) in one and (ours_label, n) in one
        }
        if ratios:
            entry["handler_vs_ours_rps"] = ratios
        ceiling = one.get((ceiling_label, top))
        if a and ceiling:
            entry["ours_vs_ceiling_rps"] = a["rps"] / ceiling["rps"]
        limit = results["limits"][kind]["limit"]
        ours_labels = {ours_label, SERVERS["ours-large"][0]}
        best = max((c["rps"] * c["rows_per_request"] for c in cells if c["server"] in ours_labels), default=0.0)
        entry.update(ours_best_rows_per_s=best, limit_rows_per_s=limit, ours_vs_limit_rows=best / limit)
        summary[kind] = entry
    return summary


def render(results: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"wrk, {args.seconds:g} s per run, median of {args.repeats} runs per cell; {machine_line(results['machine'])}.",
        "",
    ]
    top = max(args.concurrency)
    for kind, cells in results["models"].items():
        limits = results["limits"][kind]
        lines += [f"**{kind}** ({limits['parameters']:,} parameters, input {limits['input_shape']})", ""]
        rows = [
            [
                c["server"],
                c["protocol"],
                c["rows_per_request"],
                c["concurrency"],
                c["rps"],
                c["rps"] * c["rows_per_request"],
                c["p50_ms"],
                c["p99_ms"],
                int(c["errors"]),
            ]
            for c in cells
        ]
        header = ["server", "protocol", "rows/request", "clients", "requests/s", "rows/s", "p50 ms", "p99 ms", "errors"]
        lines += [table(header, rows), ""]
        batches = list(next(iter(limits["calls"].values())))
        limit_rows = [[way, *by_batch.values()] for way, by_batch in limits["calls"].items()]
        lines += [table(["in-process call, no HTTP: rows/s at batch", *batches], limit_rows), ""]
        s = summary[kind]
        if "ours_vs_kserve_rps" in s:
            lines.append(
                f"- (a)/(c) at {top} clients, one example per request: {s['ours_vs_kserve_rps']:.2f}x requests/s "
                f"(target ≥ 3), p99 {s['ours_vs_kserve_p99']:.2f}x KServe's (target ≤ 1)"
            )
        if "ours_vs_ceiling_rps" in s:
            lines.append(
                f"- (a) at {top} clients, one example per request: {s['ours_vs_ceiling_rps']:.2f} of the "
                "constant-response server's requests/s (target ≥ 0.4)"
            )
        if "handler_vs_ours_rps" in s:
            at = ", ".join(f"{r:.2f} at {n} clients" for n, r in s["handler_vs_ours_rps"].items())
            lines.append(f"- (a+h)/(a) requests/s, one example per request: {at} (target ≥ 0.9)")
        lines.append(
            f"- ours' best rows/s ((a) or (a')) {s['ours_best_rows_per_s']:,.0f} = {s['ours_vs_limit_rows']:.2f} "
            f"of (d)'s {s['limit_rows_per_s']:,.0f} (target ≥ 0.5)"
        )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
