"""The emulated Kubernetes API (the tests' kmock emulator) in a process of its own, for benchmarks.

Usage: python bench/emulated_api.py [COUNTS.json] → prints `url=http://127.0.0.1:PORT` once it
serves, runs until SIGTERM or SIGINT, then writes how many requests of each kind it served to COUNTS.json.
No kubelet: Jobs are stored, never run (the operator benchmark counts Job creation).
"""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import kmock
from kmock._internal import rendering

from cluster.emulator import Emulator, declare_resources

COUNTS: collections.Counter[str] = collections.Counter()


class CountingEmulator(Emulator):
    async def _handle(self, request: rendering.Request) -> object:
        if request.resource is not None:
            sub = f"/{request.subresource}" if request.subresource else ""
            watch = "watch " if request.params.get("watch") else ""
            COUNTS[f"{request.method} {watch}{request.resource.plural}{sub}"] += 1
        return await super()._handle(request)


async def serve() -> None:
    emulator = CountingEmulator()
    declare_resources(emulator)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with emulator, kmock.Server(emulator):
        print(f"url={str(emulator.url).rstrip('/')}", flush=True)
        await stop.wait()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps(dict(COUNTS), indent=1, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(serve())
