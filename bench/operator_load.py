"""Operator at fleet scale: create thousands of KerasTrainingJobs, then run hundreds at once.

Usage: python bench/operator_load.py [--counts 1000 5000] [--repeats 3] [--running 200] [--epochs 30]
       [--quiet 60] [--parts create running]

Three processes share the machine: the emulated API server (bench/emulated_api.py), the operator
under test, and this script.

- create: this script creates N KerasTrainingJobs and watches their Jobs appear. Each N is run with
  the real operator (`keras-operator`) and with the baseline (bench/baseline_operator.py: a kopf
  operator that only creates one Job per resource), alternating, in the same run.
- running: the emulated API plays the Job controller and kubelet (one Running pod per Job, the Job's
  status.active = 1, a pod-bound token for the operator's progress audience), and this script plays
  one trainer per training (asyncio tasks, a process apart from the operator): each pushes one epoch
  report a second to the operator's progress endpoint with its pod's token. Then the pushes stop and a
  quiet window counts every request the operator still makes. The emulated API records when each
  resource's status first shows each epoch, which gives the push→status latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
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
# The creation targets: throughput and CPU per resource against the baseline's in the same run, peak RSS.
TARGET_THROUGHPUT = 0.9
TARGET_CPU_RATIO = 1.5
TARGET_RSS_MB = 300
RSS_TARGET_AT = 5000
TOKEN_REVIEWS = "method.POST tokenreviews"
STATUS_PATCHES = "method.PATCH kerastrainingjobs/status"


def training_job(name: str, epochs: int | None = None) -> dict[str, Any]:
    doc = tiny_job(name, output={"uri": f"pvc://models/{name}"})
    doc["metadata"]["namespace"] = "default"
    if epochs is not None:
        doc["spec"]["training"]["epochs"] = epochs
    return doc


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None, stop_timeout: float = 30
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
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's high-water resident set (VmHWM), or with field="VmRSS" the current one, in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


def load_average() -> float:
    """The machine's 1-minute load average: how many runnable tasks competed for its cores."""
    return float(Path("/proc/loadavg").read_text().split()[0])


@contextlib.contextmanager
def cluster(
    which: str, logs: Path, tag: str, kubelet: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str], subprocess.Popen[str], Path, Path, str]]:
    """The emulated API and an operator against it -> (API url, API process, operator process, counts file,
    timeline file, progress endpoint URL). Both are stopped (and the files written) on leaving."""
    counts, timeline = logs / f"{tag}-requests.json", logs / f"{tag}-timeline.json"
    api_cmd = [sys.executable, *os.environ.get("BENCH_API_PY_ARGS", "").split(), str(HERE / "emulated_api.py")]
    api_cmd += [str(counts), "--timeline", str(timeline)]
    if kubelet is not None:
        kubelet.unlink(missing_ok=True)
        api_cmd += ["--kubelet", str(kubelet)]
    with process(api_cmd) as api:
        assert api.stdout is not None
        line = api.stdout.readline()
        if not line.startswith("url="):
            raise RuntimeError(f"the emulated API did not start: {line!r}")
        url = line.strip().removeprefix("url=")
        progress_port = free_port()
        progress_url = f"http://127.0.0.1:{progress_port}"
        env = {
            "KERAS_OPERATOR_API_SERVER": url,
            "KERAS_OPERATOR_METRICS_PORT": str(free_port()),
            "KERAS_OPERATOR_LIVENESS_PORT": str(free_port()),
            "KERAS_OPERATOR_LOG_FORMAT": "json",
            # As the chart deploys it: trainers are told where to push.
            "KERAS_OPERATOR_PROGRESS_PORT": str(progress_port),
            "KERAS_OPERATOR_PROGRESS_URL": progress_url,
            "KERAS_OPERATOR_PROGRESS_ADDRESS": "127.0.0.1",  # the endpoint stays on this machine
        }
        if which == "baseline":
            cmd = [str(BIN / "kopf"), "run", "--standalone", "--all-namespaces", str(HERE / "baseline_operator.py")]
        else:  # ours, possibly wrapped, e.g. in a profiler: bench/profile_operator.py
            cmd = [*os.environ.get("BENCH_OPERATOR_WRAPPER", "").split(), str(BIN / "keras-operator")]
        # Before 5fe2b91 the operator did not exit after SIGINT (its cleanup handlers had run within
        # milliseconds): it is killed if it lingers.
        with process(cmd, env, log=logs / f"{tag}.log", stop_timeout=10) as op:
            yield url, api, op, counts, timeline, progress_url


def operator_requests(timeline: dict[str, Any], start: float = float("-inf"), end: float = float("inf")) -> Counter:
    """The operator's requests between two times (time.monotonic(), the same clock in every process)."""
    return Counter(key for t, key in timeline["requests"] if start <= t <= end)


# --- (a) create N resources ---


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
        "started_at": start,
    }


def run_once(which: str, count: int, timeout: float, logs: Path) -> dict[str, Any]:
    with cluster(which, logs, f"{which}-{count}") as (url, api, op, counts, timeline_file, _):
        started: dict[str, float] = {}

        def on_start() -> None:  # start-up and the warm-up resource are not the run's work
            started.update(operator=cpu_seconds(op.pid), api=cpu_seconds(api.pid), load=load_average())

        result = asyncio.run(drive(url, count, timeout, on_start))
        result["peak_rss_mb"] = peak_rss_mb(op.pid)
        result["rss_after_mb"] = peak_rss_mb(op.pid, "VmRSS")  # once every Job exists
        result["operator_cpu_s"] = cpu_seconds(op.pid) - started["operator"]
        result["api_cpu_s"] = cpu_seconds(api.pid) - started["api"]
        result["load_average"] = [started["load"], load_average()]  # at the start and at the end
    served = json.loads(counts.read_text())
    result["requests"] = served
    # The operator's own requests (by User-Agent), the warm-up resource's share included: per resource.
    mine = operator_requests(json.loads(timeline_file.read_text()))
    result["operator_requests"] = dict(mine)
    result["requests_per_resource"] = sum(n for k, n in mine.items() if " watch " not in k) / (count + 1)
    return result


# --- (b) trainings running at once, pushing progress ---


def read_pods(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


async def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def run_fleet(
    url: str,
    progress_url: str,
    pods_file: Path,
    trainings: int,
    epochs: int,
    interval: float,
    quiet: float,
    marks: dict[str, float],
    on_mark: Callable[[str], None],
) -> dict[str, Any]:
    """Start `trainings` trainings, push `epochs` epochs from each, then stay quiet for `quiet` seconds."""
    names = [f"fleet-{i:05d}" for i in range(trainings)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def create(name: str) -> None:
            async with session.post(url + KTJ_PATH, json=training_job(name, epochs)) as resp:
                resp.raise_for_status()

        async def statuses() -> dict[str, dict[str, Any]]:
            async with session.get(url + KTJ_PATH) as resp:
                resp.raise_for_status()
                items = (await resp.json())["items"]
            return {i["metadata"]["name"]: i.get("status") or {} for i in items}

        # The first training proves the operator's watches are up (its pod exists) before the others come.
        await create(names[0])
        await wait_for(lambda: read_pods(pods_file), 120, "the first training's pod")
        gate = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def create_gated(name: str) -> None:
            async with gate:
                await create(name)

        await asyncio.gather(*(create_gated(n) for n in names[1:]))
        await wait_for(lambda: len(read_pods(pods_file)) >= trainings, 300, f"{trainings} pods")

        async def all_running() -> bool:
            found = await statuses()
            return sum(s.get("phase") == "Running" for s in found.values()) >= trainings

        # Running in the status means the operator's pod index has the pod: pushes will be accepted.
        await wait_for(all_running, 300, f"{trainings} trainings Running", interval=0.5)
        await asyncio.sleep(2)
        pods = read_pods(pods_file)

        sends: list[dict[str, Any]] = []
        rejected: Counter[int] = Counter()
        on_mark("push_start")
        start = time.monotonic() + 0.5

        async def trainer(index: int, pod: dict[str, Any]) -> None:
            offset = interval * index / len(pods)  # spread evenly over the second, as real epochs would be
            path = f"{progress_url}/v1/namespaces/{pod['namespace']}/kerastrainingjobs/{pod['training']}/progress"
            headers = {"Authorization": f"Bearer {pod['token']}"}
            rng = random.Random(index)
            for epoch in range(1, epochs + 1):
                await asyncio.sleep(max(0.0, start + offset + (epoch - 1) * interval - time.monotonic()))
                body = {
                    "type": "epoch",
                    "epoch": epoch,
                    "epochs": epochs,
                    "metrics": {"loss": round(1.0 / epoch + rng.random() * 0.01, 6)},
                    "seconds": interval,
                    "samplesPerSecond": 1000.0,
                }
                sent = time.monotonic()
                for attempt in range(20):
                    async with session.post(path, json=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                    if status < 300:
                        break
                    rejected[status] += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
                sends.append(
                    {
                        "training": pod["training"],
                        "epoch": epoch,
                        "sent": sent,
                        "answered": time.monotonic(),
                        "status": status,
                    }
                )

        await asyncio.gather(*(trainer(i, p) for i, p in enumerate(pods)))
        on_mark("push_end")

        async def all_landed() -> bool:
            found = await statuses()
            return all(((s.get("progress") or {}).get("epoch") or 0) >= epochs for s in found.values())

        await wait_for(all_landed, 120, f"every status at epoch {epochs}", interval=0.5)
        await asyncio.sleep(2)  # let the last watch events settle before the window opens
        on_mark("quiet_start")
        await asyncio.sleep(quiet)
        on_mark("quiet_end")
    first_round = max(s["answered"] for s in sends if s["epoch"] == 1)
    marks["first_round_done"] = first_round
    return {"trainings": trainings, "epochs": epochs, "sends": sends, "rejected": dict(rejected)}


def run_running(
    trainings: int, epochs: int, interval: float, quiet: float, logs: Path, which: str = "keras-operator"
) -> dict[str, Any]:
    tag = f"running-{trainings}"
    pods_file = logs / f"{tag}-pods.jsonl"
    marks: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load: dict[str, float] = {}
    with cluster(which, logs, tag, kubelet=pods_file) as (
        url,
        api,
        op,
        _,
        timeline_file,
        progress_url,
    ):

        def on_mark(name: str) -> None:
            marks[name] = time.monotonic()
            cpu[name] = cpu_seconds(op.pid)
            cpu[f"api_{name}"] = cpu_seconds(api.pid)
            load[name] = load_average()

        fleet = asyncio.run(run_fleet(url, progress_url, pods_file, trainings, epochs, interval, quiet, marks, on_mark))
        rss = peak_rss_mb(op.pid)
    timeline = json.loads(timeline_file.read_text())
    landed = {name: {int(e): t for e, t in epochs_.items()} for name, epochs_ in timeline["landed"].items()}
    latencies, missing = [], 0
    for send in fleet.pop("sends"):
        shown = [t for e, t in landed.get(send["training"], {}).items() if e >= send["epoch"]]
        if not shown:
            missing += 1
            continue
        latencies.append(1000 * (min(shown) - send["sent"]))
    pushes = trainings * epochs
    # The push phase: from the first push to the last status landing (the window's settle time included).
    during = operator_requests(timeline, marks["push_start"], marks["quiet_start"])
    after_first = operator_requests(timeline, marks["first_round_done"], marks["quiet_start"])
    window = operator_requests(timeline, marks["quiet_start"], marks["quiet_end"])
    minutes = (marks["quiet_end"] - marks["quiet_start"]) / 60
    push_seconds = marks["push_end"] - marks["push_start"]
    stale = [backwards for t, backwards in timeline["stale"] if marks["push_start"] <= t <= marks["quiet_start"]]
    return {
        **fleet,
        "pushes": pushes,
        "landed_pushes": len(latencies),
        "missing": missing,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p90_ms": percentile(latencies, 90),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": max(latencies, default=float("nan")),
        "push_requests": dict(during),
        "token_reviews": during[TOKEN_REVIEWS],
        "token_reviews_after_first_round": after_first[TOKEN_REVIEWS],
        "token_reviews_per_epoch": during[TOKEN_REVIEWS] / pushes,
        "status_patches": during[STATUS_PATCHES],
        "status_patches_per_epoch": during[STATUS_PATCHES] / pushes,
        "stale_status_writes": len(stale),  # status PATCHes that showed no newer epoch than before
        "backwards_status_writes": sum(stale),  # ... and of those, the ones showing an older epoch
        "requests_per_epoch": sum(during.values()) / pushes,
        "quiet_seconds": marks["quiet_end"] - marks["quiet_start"],
        "quiet_requests": dict(window),
        "quiet_requests_per_training_minute": sum(window.values()) / trainings / minutes,
        # A watch that saw nothing for a while is re-opened: a few requests a minute in all, not per training.
        "quiet_watch_requests": sum(n for k, n in window.items() if " watch " in k),
        "quiet_other_requests_per_training_minute": sum(n for k, n in window.items() if " watch " not in k)
        / trainings
        / minutes,
        "push_seconds": push_seconds,
        "operator_cpu_ms_per_push": 1000 * (cpu["quiet_start"] - cpu["push_start"]) / pushes,
        "api_cpu_ms_per_push": 1000 * (cpu["api_quiet_start"] - cpu["api_push_start"]) / pushes,
        "operator_cpu_quiet_percent": 100 * (cpu["quiet_end"] - cpu["quiet_start"]) / (minutes * 60),
        "peak_rss_mb": rss,
        "load_average": load,
        "setup": {
            "all_requests": dict(operator_requests(timeline, end=marks["push_start"])),
        },
    }


# --- the report ---


def create_markdown(
    runs: dict[str, dict[int, list[dict[str, Any]]]], counts: list[int], repeats: int
) -> tuple[str, dict[int, dict[str, Any]]]:
    operators = list(runs)  # the baseline first

    def med(which: str, count: int, key: str) -> float:
        return median([r[key] for r in runs[which][count]])

    rows, summary, target_rows = [], {}, []
    for count in counts:
        ratios = {w: med(w, count, "per_second") / med("baseline", count, "per_second") for w in operators}
        cpu_ratio = med("keras-operator", count, "operator_cpu_s") / med("baseline", count, "operator_cpu_s")
        peak = max(r["peak_rss_mb"] for r in runs["keras-operator"][count])
        summary[count] = {
            "throughput_ratio": ratios["keras-operator"],
            "cpu_per_resource_ratio": cpu_ratio,
            "peak_rss_mb": peak,
            "baseline_peak_rss_mb": max(r["peak_rss_mb"] for r in runs["baseline"][count]),
            "operators": {
                w: {"throughput_ratio": ratios[w], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[w][count])}
                for w in operators
            },
        }
        missed = {
            "throughput": ratios["keras-operator"] < TARGET_THROUGHPUT,
            "rss": count >= RSS_TARGET_AT and peak >= TARGET_RSS_MB,
            "cpu": cpu_ratio > TARGET_CPU_RATIO,
        }
        target_rows.append(
            [
                count,
                f"{ratios['keras-operator']:.2f}" + (" (missed)" if missed["throughput"] else ""),
                f"{peak:.0f}" + (" (missed)" if missed["rss"] else ""),
                f"{cpu_ratio:.2f}" + (" (missed)" if missed["cpu"] else ""),
            ]
        )
        for which in operators:
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
                    f"{ratios[which]:.2f}",
                ]
            )
    main = table(
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
    )
    targets = table(
        [
            "resources",
            f"throughput vs baseline (≥ {TARGET_THROUGHPUT})",
            f"peak RSS MB (< {TARGET_RSS_MB} at {RSS_TARGET_AT:,})",
            f"operator CPU per resource vs baseline (≤ {TARGET_CPU_RATIO})",
        ],
        target_rows,
    )
    # Requests per resource by verb and resource (median over runs; watches are long-lived, left out).
    columns = [(which, count) for count in counts for which in operators]
    found = {k for which, count in columns for r in runs[which][count] for k in r["operator_requests"]}
    keys = sorted(k for k in found if " watch " not in k)
    verb_rows = []
    for key in keys:
        cells = [
            median([r["operator_requests"].get(key, 0) / (count + 1) for r in runs[which][count]])
            for which, count in columns
        ]
        if any(c >= 0.005 for c in cells):
            label = key.removeprefix("method.").replace(" None", " (discovery)")
            verb_rows.append([f"`{label}`", *(f"{c:.2f}" for c in cells)])
    verbs = table(["request", *(f"{which} {count}" for which, count in columns)], verb_rows)
    text = "\n".join(
        [
            f"Creating N resources: medians of {repeats} runs per row.",
            "",
            main,
            "",
            "Against the targets (ratios of medians, in the same run):",
            "",
            targets,
            "",
            "The operator's API requests per resource, by verb and resource (the warm-up resource included; "
            "long-lived watches left out):",
            "",
            verbs,
        ]
    )
    return text, summary


def running_rows(result: dict[str, Any]) -> list[tuple[str, Any]]:
    stale = f"{result['stale_status_writes']} ({result['backwards_status_writes']})"
    load = result["load_average"]
    rejected = json.dumps(result["rejected"]) if result["rejected"] else 0
    return [
        ("trainings running at once", result["trainings"]),
        ("epochs pushed per training (one a second)", result["epochs"]),
        ("pushes", result["pushes"]),
        ("pushes refused and retried (by HTTP status)", rejected),
        ("pushes whose epoch never showed in the status", result["missing"]),
        ("push → status shows the epoch, p50 ms", result["latency_p50_ms"]),
        ("push → status shows the epoch, p90 ms", result["latency_p90_ms"]),
        ("push → status shows the epoch, p99 ms", result["latency_p99_ms"]),
        ("push → status shows the epoch, max ms", result["latency_max_ms"]),
        ("status PATCHes per epoch pushed", f"{result['status_patches_per_epoch']:.3f}"),
        ("status PATCHes that showed no newer epoch (of which older)", stale),
        ("TokenReviews (all pushes)", result["token_reviews"]),
        ("TokenReviews after every trainer's first push", result["token_reviews_after_first_round"]),
        ("API requests per epoch pushed (all kinds)", f"{result['requests_per_epoch']:.3f}"),
        ("operator CPU ms per push (push, reconcile, PATCH, watch event)", result["operator_cpu_ms_per_push"]),
        ("emulated API CPU ms per push", result["api_cpu_ms_per_push"]),
        ("quiet window: seconds", result["quiet_seconds"]),
        ("quiet window: operator requests", sum(result["quiet_requests"].values())),
        ("quiet window: of which watches (re)opened (not per training)", result["quiet_watch_requests"]),
        (
            "quiet window: other requests per running training per minute",
            f"{result['quiet_other_requests_per_training_minute']:.3f}",
        ),
        ("quiet window: operator CPU %", result["operator_cpu_quiet_percent"]),
        ("operator peak RSS MB", result["peak_rss_mb"]),
        (
            "machine load average (1 min) at push start / quiet start / end",
            f"{load['push_start']:.1f} / {load['quiet_start']:.1f} / {load['quiet_end']:.1f}",
        ),
    ]


def running_markdown(results: dict[str, list[dict[str, Any]]]) -> str:
    columns = [(which, i, r) for which, runs in results.items() for i, r in enumerate(runs)]
    header = ["measure", *(f"{which} #{i + 1}" for which, i, _ in columns)]
    per_run = [running_rows(r) for _, _, r in columns]
    rows = [[label, *(rows[k][1] for rows in per_run)] for k, (label, _) in enumerate(per_run[0])]
    n = columns[0][2]["trainings"]
    return "\n".join([f"{n} trainings running at once, one column per run:", "", table(header, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["create", "running"], default=["create", "running"])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000], help="resources created per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per count and operator (create)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every Job of one run")
    parser.add_argument("--running", type=int, default=200, help="trainings running at once (running)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs each running training pushes")
    parser.add_argument("--epoch-seconds", type=float, default=1.0, help="seconds between a trainer's pushes")
    parser.add_argument("--quiet", type=float, default=60, help="seconds without pushes, requests counted")
    parser.add_argument("--running-repeats", type=int, default=1, help="runs of the running part")
    parser.add_argument("--out", type=Path, default=HERE, help="where results/ and README.md are written")
    args = parser.parse_args(argv)
    logs = args.out / "results" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info = machine()

    if "create" in args.parts:
        operators = ["baseline", "keras-operator"]
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {which: {} for which in operators}
        for count in args.counts:
            for repeat in range(args.repeats):
                for which in operators:  # alternate, so drift hits all alike
                    result = run_once(which, count, args.timeout, logs)
                    runs[which].setdefault(count, []).append(result)
                    brief = {k: v for k, v in result.items() if k not in ("requests", "operator_requests")}
                    print(f"{which} n={count} #{repeat + 1}: {brief}", flush=True)
        text, summary = create_markdown(runs, args.counts, args.repeats)
        publish(
            "operator",
            {"machine": info, "runs": runs, "summary": summary},
            f"{machine_line(info)}.\n\n{text}",
            args.out,
        )

    if "running" in args.parts:
        results: dict[str, list[dict[str, Any]]] = {"keras-operator": []}
        for repeat in range(args.running_repeats):
            for which in results:
                result = run_running(args.running, args.epochs, args.epoch_seconds, args.quiet, logs, which)
                results[which].append(result)
                brief = {k: v for k, v in result.items() if k not in ("push_requests", "setup")}
                print(f"{which} running n={args.running} #{repeat + 1}: {brief}", flush=True)
        publish(
            "fleet",
            {"machine": info, "running": results["keras-operator"][0], "runs": results},
            f"{machine_line(info)}.\n\n{running_markdown(results)}",
            args.out,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
