"""The emulated Kubernetes API (the tests' kmock emulator) in a process of its own, for benchmarks.

Usage: python bench/emulated_api.py [COUNTS.json] [--timeline FILE] [--kubelet PODS.jsonl]
→ prints `url=http://127.0.0.1:PORT` once it serves, runs until SIGTERM or SIGINT, then writes how many
requests of each kind it served to COUNTS.json.

- Without --kubelet, Jobs are stored, never run (the operator benchmark counts Job creation).
- --kubelet plays the Job controller and the kubelet, without running anything: for each new Job it
  creates one pod (the template's labels plus `job-name`, owned by the Job, status.phase Running),
  sets the Job's status.active to 1, mints the pod's projected service-account token for the
  operator's progress audience (as the kubelet would write it into the pod), and appends
  `{"namespace", "training", "pod", "uid", "token"}` as one JSON line to PODS.jsonl for the fake trainers.
- --timeline FILE (written at exit): every request the *operator* made (by its User-Agent: kopf or the
  kubernetes client) as [time.monotonic(), "VERB resource"], and when each KerasTrainingJob's
  status.progress.epoch first showed each value ({name: {epoch: time}}). time.monotonic() is the
  machine's CLOCK_MONOTONIC, the same clock in every process, so the benchmark compares it with the
  times its trainers sent their reports.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import aiohttp
import kmock
from kmock._internal import rendering

from cluster.emulator import JOBS, OPERATOR_AGENTS, Emulator, declare_resources

COUNTS: collections.Counter[str] = collections.Counter()
PROGRESS_AUDIENCE = "kerasoperator.dev/progress"
BENCH_AGENT = "keras-operator-bench-kubelet"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class CountingEmulator(Emulator):
    timeline: list[tuple[float, str]]  # the operator's requests only
    landed: dict[str, dict[int, float]]  # KerasTrainingJob name -> epoch -> when its status first showed it
    stale_writes: list[tuple[float, bool]]  # [when, went backwards] of writes that showed no newer epoch

    async def _handle(self, request: rendering.Request) -> object:
        if request.resource is not None:
            sub = f"/{request.subresource}" if request.subresource else ""
            watch = "watch " if request.params.get("watch") else ""
            key = f"{request.method} {watch}{request.resource.plural}{sub}"
            COUNTS[key] += 1
            if (request.headers.get("User-Agent") or "").startswith(OPERATOR_AGENTS):
                self.timeline.append((time.monotonic(), key))
        return await super()._handle(request)


class FakeKubelet:
    """One Running pod per Job, at once, and the Job's status.active = 1: what the Job controller and the
    kubelet write for a training that has started. Its own writes go through the API like theirs (so the
    operator sees them on its watches), under a User-Agent the request timeline leaves out."""

    def __init__(self, emulator: CountingEmulator, pods_file: Path) -> None:
        self.emulator, self.pods_file = emulator, pods_file
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.out = pods_file.open("a")
        emulator.hooks.append(self._on_change)

    def _on_change(self, event: str, resource: kmock.resource, raw: dict[str, Any]) -> None:
        if resource == JOBS and event == "ADDED":
            task = asyncio.get_running_loop().create_task(self._start(raw))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif resource.plural == "kerastrainingjobs" and event == "MODIFIED":
            epoch = ((raw.get("status") or {}).get("progress") or {}).get("epoch")
            if isinstance(epoch, int):
                shown = self.emulator.landed.setdefault(raw["metadata"]["name"], {})
                if shown and epoch <= max(shown):
                    # A write that shows no newer epoch than the status already did (a repeat, or older).
                    self.emulator.stale_writes.append((time.monotonic(), epoch < max(shown)))
                shown.setdefault(epoch, time.monotonic())

    async def _api(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession(base_url=str(self.emulator.url), headers={"User-Agent": BENCH_AGENT})
        async with self.session.request(method, path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return dict(data)

    async def _start(self, job: dict[str, Any]) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        ns, name = meta["namespace"], meta["name"]
        training = next(
            (r["name"] for r in meta.get("ownerReferences") or [] if r.get("kind") == "KerasTrainingJob"), name
        )
        container = template["spec"]["containers"][0]
        now = _now()
        pod = await self._api(
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-x0001",
                    "namespace": ns,
                    "labels": {**(template.get("metadata", {}).get("labels") or {}), "job-name": name},
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": template["spec"],
                "status": {
                    "phase": "Running",
                    "startTime": now,
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "ready": True,
                            "restartCount": 0,
                            "state": {"running": {"startedAt": now}},
                        }
                    ],
                },
            },
        )
        await self._api(
            "PATCH", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}/status", {"status": {"active": 1, "startTime": now}}
        )
        pod_meta = pod["metadata"]
        token = self.emulator.mint_token(ns, pod_meta["name"], pod_meta["uid"], PROGRESS_AUDIENCE, ttl=3600)
        line = {"namespace": ns, "training": training, "pod": pod_meta["name"], "uid": pod_meta["uid"], "token": token}
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        self.out.close()


async def serve(args: argparse.Namespace) -> None:
    emulator = CountingEmulator()
    emulator.timeline, emulator.landed, emulator.stale_writes = [], {}, []
    declare_resources(emulator)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with emulator, kmock.Server(emulator):
        kubelet = FakeKubelet(emulator, args.kubelet) if args.kubelet else None
        print(f"url={str(emulator.url).rstrip('/')}", flush=True)
        await stop.wait()
        if kubelet is not None:
            await kubelet.close()
    if args.counts:
        args.counts.write_text(json.dumps(dict(COUNTS), indent=1, sort_keys=True))
    if args.timeline:
        args.timeline.write_text(
            json.dumps({"requests": emulator.timeline, "landed": emulator.landed, "stale": emulator.stale_writes})
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", type=Path, nargs="?", help="where to write the request counts at exit")
    parser.add_argument("--timeline", type=Path, help="where to write the operator's requests and epochs landed")
    parser.add_argument("--kubelet", type=Path, metavar="PODS.jsonl", help="run Jobs as Running pods")
    asyncio.run(serve(parser.parse_args()))
