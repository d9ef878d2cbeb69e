"""Operator throughput: create N KerasTrainingJobs on the emulated cluster and time their Jobs.

Usage: python bench/operator_load.py [--counts 100 1000] [--repeats 3]

Three processes share the machine: the emulated API server (bench/emulated_api.py), the operator
under test, and this script, which creates the resources and watches Jobs appear. Each count is run
with the real operator (`keras-operator`) and with the baseline (bench/baseline_operator.py: a
kopf operator that only creates one Job per resource), alternating, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import HERE, free_port, machine, machine_line, median, percentile, publish, table

from helpers.jobs import tiny_job

BIN = Path(sys.executable).parent
KTJ_PATH = "/apis/kerasoperator.dev/v1alpha1/namespaces/default/kerastrainingjobs"
JOBS_WATCH = "/apis/batch/v1/jobs?watch=true"
CREATE_CONCURRENCY = 8


def training_job(name: str) -> dict[str, Any]:
    doc = tiny_job(name, output={"uri": f"pvc://models/{name}"})
    doc["metadata"]["namespace"] = "default"
    return doc


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if log is None else out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)  # what a profiler wrapped around the operator waits for
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set (VmHWM), in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


async def drive(url: str, count: int, timeout: float, on_start: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Create `count` resources (after a warm-up one) and time each one's Job from its watch event."""
    seen: dict[str, float] = {}
    arrived = asyncio.Event()
    wanted: set[str] = set()

    async def watch(session: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with session.get(url + JOBS_WATCH, timeout=aiohttp.ClientTimeout(total=None)) as resp:
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        name = event.get("object", {}).get("metadata", {}).get("name", "")
                        if event.get("type") == "ADDED" and name not in seen:
                            seen[name] = time.monotonic()
                            if wanted and wanted <= seen.keys():
                                arrived.set()
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(watch(session))
        try:
            # The warm-up resource proves the operator's watch is up before the clock starts.
            async with session.post(url + KTJ_PATH, json=training_job("warmup")) as resp:
                resp.raise_for_status()
            deadline = time.monotonic() + 120
            while "warmup-train" not in seen:
                if time.monotonic() > deadline:
                    raise RuntimeError("the operator did not create the warm-up Job within 120 s")
                await asyncio.sleep(0.05)

            on_start()
            names = [f"ktj-{i:05d}" for i in range(count)]
            wanted.update(f"{n}-train" for n in names)
            sent: dict[str, float] = {}
            gate = asyncio.Semaphore(CREATE_CONCURRENCY)

            async def create(name: str) -> None:
                async with gate:
                    sent[f"{name}-train"] = time.monotonic()
                    async with session.post(url + KTJ_PATH, json=training_job(name)) as resp:
                        resp.raise_for_status()

            start = time.monotonic()
            await asyncio.gather(*(create(n) for n in names))
            created = time.monotonic() - start
            await asyncio.wait_for(arrived.wait(), timeout)
            done = max(seen[j] for j in wanted) - start
        finally:
            watcher.cancel()
    latencies = [1000 * (seen[j] - sent[j]) for j in wanted]
    return {
        "count": count,
        "seconds": done,
        "create_seconds": created,
        "per_second": count / done,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def run_once(which: str, count: int, timeout: float, logs: Path) -> dict[str, Any]:
    counts = logs / f"{which}-{count}-requests.json"
    api_cmd = [sys.executable, *os.environ.get("BENCH_API_PY_ARGS", "").split(), str(HERE / "emulated_api.py")]
    with process([*api_cmd, str(counts)]) as api:
        assert api.stdout is not None
        line = api.stdout.readline()
        if not line.startswith("url="):
            raise RuntimeError(f"the emulated API did not start: {line!r}")
        url = line.strip().removeprefix("url=")
        env = {
            "KERAS_OPERATOR_API_SERVER": url,
            "KERAS_OPERATOR_METRICS_PORT": str(free_port()),
            "KERAS_OPERATOR_LIVENESS_PORT": str(free_port()),
            "KERAS_OPERATOR_LOG_FORMAT": "json",
        }
        cmd = (
            [str(BIN / "keras-operator")]
            if which == "keras-operator"
            else [str(BIN / "kopf"), "run", "--standalone", "--all-namespaces", str(HERE / "baseline_operator.py")]
        )
        cmd = [*os.environ.get("BENCH_OPERATOR_WRAPPER", "").split(), *cmd]  # e.g. a profiler
        with process(cmd, env, log=logs / f"{which}-{count}.log") as op:
            started: dict[str, float] = {}

            def on_start() -> None:  # start-up and the warm-up resource are not the run's work
                started.update(operator=cpu_seconds(op.pid), api=cpu_seconds(api.pid))

            result = asyncio.run(drive(url, count, timeout, on_start))
            result["peak_rss_mb"] = peak_rss_mb(op.pid)
            result["operator_cpu_s"] = cpu_seconds(op.pid) - started["operator"]
            result["api_cpu_s"] = cpu_seconds(api.pid) - started["api"]
    served = json.loads(counts.read_text())
    result["requests"] = served
    # The operator's own requests: not the benchmark's creates, not the warm-up resource's share.
    result["requests_per_resource"] = (sum(served.values()) - served.get("method.POST kerastrainingjobs", 0)) / (
        count + 1
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every Job of one run")
    parser.add_argument("--out", type=Path, default=HERE, help="where results/ and README.md are written")
    args = parser.parse_args(argv)
    logs = args.out / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {"keras-operator": {}, "baseline": {}}
    for count in args.counts:
        for repeat in range(args.repeats):
            for which in ("baseline", "keras-operator"):  # alternate, so drift hits both alike
                result = run_once(which, count, args.timeout, logs)
                runs[which].setdefault(count, []).append(result)
                print(f"{which} n={count} #{repeat + 1}: {result}", flush=True)

    def med(which: str, count: int, key: str) -> float:
        return median([r[key] for r in runs[which][count]])

    rows, summary = [], {}
    for count in args.counts:
        ratio = med("keras-operator", count, "per_second") / med("baseline", count, "per_second")
        summary[count] = {
            "throughput_ratio": ratio,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["keras-operator"][count]),
        }
        for which in ("baseline", "keras-operator"):
            rows.append(
                [
                    which,
                    count,
                    med(which, count, "seconds"),
                    med(which, count, "per_second"),
                    med(which, count, "p50_ms"),
                    med(which, count, "p99_ms"),
                    max(r["peak_rss_mb"] for r in runs[which][count]),
                    med(which, count, "requests_per_resource"),
                    1000 * med(which, count, "operator_cpu_s") / count,
                    1000 * med(which, count, "api_cpu_s") / count,
                    f"{ratio:.2f}" if which == "keras-operator" else "1.00",
                ]
            )
    info = machine()
    markdown = "\n".join(
        [
            f"Medians of {args.repeats} runs per row; {machine_line(info)}.",
            "",
            table(
                [
                    "operator",
                    "resources",
                    "all Jobs after s",
                    "resources/s",
                    "create→Job p50 ms",
                    "create→Job p99 ms",
                    "peak RSS MB",
                    "API requests/resource",
                    "operator CPU ms/resource",
                    "API CPU ms/resource",
                    "throughput vs baseline",
                ],
                rows,
            ),
        ]
    )
    publish("operator", {"machine": info, "runs": runs, "summary": summary}, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
