"""When the operator stops acting.

kopf waits on its stop flag in an executor thread, and at shutdown asyncio joins that executor
without a timeout: a flag nobody sets would hold the process until SIGKILL (in a pod, the whole
termination grace period). So the flag is set when the Lease is lost, and at every shutdown too.

The loops the startup handlers start (the serving resync, the training log fallback) never end by
themselves. Once its own tasks are done, kopf gives every task still running a fixed 5 s before it
cancels them and returns (kopf's `run_tasks`), and the leader releases the Lease only after that: left
running, these loops made every hand-over 5 s longer. So a cleanup handler ends them, by name.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf

STOP = threading.Event()

LOST = threading.Event()
"""Set when this replica lost the Lease (never at a clean stop): from then on the API client refuses writes
(runtime/kube.py), so a reconcile still under way cannot act beside the new leader."""

FOREVER_TASKS = frozenset({"serving-resync", "progress-log-fallback"})
"""The names of the tasks that only the shutdown ends (started by handlers/serving.py and handlers/training.py)."""


@kopf.on.cleanup()
async def stop_forever_tasks(**_: Any) -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t.get_name() in FOREVER_TASKS and t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
