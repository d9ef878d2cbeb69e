"""Model server throughput and latency against peers and the physical limit.

Usage: python bench/serving.py [--seconds 5] [--repeats 3] [--concurrency 1 8 32] [--servers ...]

For each model (the digits MLP and a small CNN), each server answers the same TF Serving REST
requests (`/v1/models/digits:predict`, one example per request) under `wrk` at each concurrency:
  (a) ours, batching on   (b) ours, maxBatchSize 1   (c) KServe 0.21's Python model server with a
  plain Keras predict (in its own venv, made on first use)   (a+h) ours as (a) with a handler that
  does nothing (bench/handler_code/identity.py), measured beside (a) in turns: what pre/post-processing
  in the server's process costs by itself   plus a constant-response server: the most wrk can drive
  here, so figures can be read against what the client itself allows.
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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: float, connections: int, script: Path, pid: int | None = None) -> dict[str, float]:
    """`pid`: the server's, whose CPU time per request is measured too (`cpu_us_per_request`): on a shared
    machine it moves much less with other tenants' load than requests/s does."""
    threads = min(2, connections)
    before = cpu_seconds(pid) if pid is not None else 0.0
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = parse_wrk(out)
    if pid is not None and result["requests"]:
        result["cpu_us_per_request"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
    return result


def parse_wrk(out: str) -> dict[str, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return {
        "rps": rps,
        "requests": float(requests.group(1) if requests else 0),
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


@dataclass(frozen=True)
class Side:
    """A server measured: its label in the tables, its command, its port."""

    label: str
    cmd: list[str]
    port: int

    def url(self, scenario: Scenario) -> str:
        return f"http://127.0.0.1:{self.port}{scenario.path}"


def new_side(key: str, model: Path) -> Side:
    label, command = SERVERS[key]
    port = free_port()
    return Side(label, command(model, port), port)


def cell(label: str, scenario: Scenario, connections: int, runs: list[dict[str, float]]) -> dict[str, Any]:
    found = {
        "server": label,
        "protocol": scenario.protocol,
        "rows_per_request": scenario.rows,
        "concurrency": connections,
        "runs": runs,
        **{key: median([r[key] for r in runs]) for key in ("rps", "p50_ms", "p99_ms", "errors")},
        "cpu_us_per_request": median([r.get("cpu_us_per_request", 0.0) for r in runs]),
    }
    print(
        f"  {label}, {scenario.protocol}, {scenario.rows} rows, c={connections}: {found['rps']:.0f} req/s, "
        f"p50 {found['p50_ms']:.2f} ms, p99 {found['p99_ms']:.2f} ms",
        flush=True,
    )
    return found


def measure(
    main: Side, plan: list[Scenario], args: argparse.Namespace, work: Path, partner: Side | None = None
) -> list[dict[str, Any]]:
    """One server process, every scenario against it; median of `args.repeats` wrk runs per cell.

    A `partner` server runs beside it and answers the first scenario (one example per request) in wrk
    runs taken in turn with the main server's, the order alternating: on a shared machine, load that
    drifts during the run then falls on both alike (measured one after the other, (a+h)/(a) moved
    between 0.67 and 1.14 from run to run)."""
    cells = []
    first = plan[0]
    with contextlib.ExitStack() as stack:
        sides = [main] if partner is None else [main, partner]
        pids = {
            side.label: stack.enter_context(server(side.cmd, side.port, first.path, first.body, first.headers))
            for side in sides
        }
        for index, scenario in enumerate(plan):
            script = lua_script(work / f"req-{main.port}-{index}.lua", scenario.body, scenario.headers)
            together = sides if index == 0 else [main]
            for connections in scenario.concurrency:
                for side in together:
                    wrk(side.url(scenario), 1, connections, script)  # warm-up: connections, caches, batch shapes
                runs: dict[str, list[dict[str, float]]] = {side.label: [] for side in together}
                for repeat in range(args.repeats):
                    for side in together if repeat % 2 == 0 else together[::-1]:
                        run = wrk(side.url(scenario), args.seconds, connections, script, pids[side.label])
                        runs[side.label].append(run)
                cells += [cell(side.label, scenario, connections, runs[side.label]) for side in together]
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
        # (a+h) is measured beside (a), in turns, when both are asked for: its figure is a ratio to (a).
        paired = "ours" in args.servers and "ours-handler" in args.servers
        for key in args.servers:
            if paired and key == "ours-handler":
                continue
            model = work / f"{kind}.keras"
            partner = new_side("ours-handler", model) if paired and key == "ours" else None
            plan = scenarios(key, limits[kind]["input_shape"], args)
            cells += measure(new_side(key, model), plan, args, work, partner)
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
        # The handler's cost: (a+h) against (a) at each concurrency, the median of the ratios of runs taken
        # in turns (each pair saw about the same load from the machine's other tenants).
        pairs = {
            n: zip(one[(ours_label, n)]["runs"], one[(handler_label, n)]["runs"], strict=True)
            for n in args.concurrency
            if (handler_label, n) in one and (ours_label, n) in one
        }
        ratios = {n: median([h["rps"] / a["rps"] for a, h in runs]) for n, runs in pairs.items()}
        if ratios:
            entry["handler_vs_ours_rps"] = ratios
            # What (a+h) can answer per CPU-second of the server against (a): the capacity ratio of a busy pod.
            entry["handler_vs_ours_cpu"] = {
                n: one[(ours_label, n)]["cpu_us_per_request"] / one[(handler_label, n)]["cpu_us_per_request"]
                for n in ratios
                if one[(handler_label, n)]["cpu_us_per_request"]
            }
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
                c.get("cpu_us_per_request", 0.0),
                int(c["errors"]),
            ]
            for c in cells
        ]
        header = [
            *("server", "protocol", "rows/request", "clients", "requests/s", "rows/s", "p50 ms", "p99 ms"),
            *("server CPU µs/request", "errors"),
        ]
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
            lines.append(
                f"- (a+h)/(a) requests/s, one example per request, median of the runs' ratios: {at} (target ≥ 0.9)"
            )
            per_cpu = ", ".join(f"{r:.2f} at {n} clients" for n, r in s.get("handler_vs_ours_cpu", {}).items())
            if per_cpu:
                lines.append(f"- (a+h)/(a) requests per server CPU-second (steadier under other load): {per_cpu}")
        lines.append(
            f"- ours' best rows/s ((a) or (a')) {s['ours_best_rows_per_s']:,.0f} = {s['ours_vs_limit_rows']:.2f} "
            f"of (d)'s {s['limit_rows_per_s']:,.0f} (target ≥ 0.5)"
        )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
