"""Dynamic server-side batching: concurrent requests share one model call.

Requests queue (bounded: a full queue answers 503 instead of growing memory); one worker takes
the first, keeps taking more until `max_batch_size` rows or `max_latency` seconds, calls the
model once in a worker thread (the event loop never blocks), and hands each caller its own rows.
Requests whose examples differ in shape or type from the batch being filled wait for the next one.

The wait is adaptive: a handler announces a request as soon as it arrives (`arrive()`), before
reading and parsing its body. The worker waits for more rows only while announced requests are
still on their way; with nobody on the way, it calls the model at once, so a lone client never pays
`max_latency` and a crowd still fills batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and the client retry later."""


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(self.inputs.items()))


class Arrival:
    """A request on its way to the batcher; `submit` (or `leave`, when it fails before) ends that."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher, self._here = batcher, True
        batcher.arriving += 1

    def leave(self) -> None:
        if self._here:
            self._here = False
            self._batcher.arriving -= 1

    async def submit(self, inputs: Arrays) -> Arrays:
        self.leave()  # no await between this and the enqueue: the worker sees one or the other
        return await self._batcher.submit(inputs)


class Batcher:
    def __init__(
        self,
        predict: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int = 32,
        max_latency: float = 0.005,
        max_queue: int = 1024,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.predict, self.max_batch_size, self.max_latency = predict, max_batch_size, max_latency
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch or (lambda rows: None)
        # One thread: model calls run one at a time, like TF Serving's single batching thread per model.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.calls = 0
        self.arriving = 0
        self._held: _Pending | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self.queue.qsize() + (1 if self._held else 0)

    def arrive(self) -> Arrival:
        return Arrival(self)

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        while self.depth:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self.executor.shutdown(wait=True)

    async def submit(self, inputs: Arrays) -> Arrays:
        rows = next(iter(inputs.values())).shape[0]
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Pending(inputs, rows, future))
        except asyncio.QueueFull as exc:
            raise Overloaded(f"the server is overloaded ({self.queue.maxsize} requests waiting)") from exc
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._held or await self.queue.get()
            self._held = None
            batch = [first]
            rows = first.rows
            deadline = time.monotonic() + self.max_latency
            while rows < self.max_batch_size and self.max_batch_size > 1:
                if self.queue.empty() and not self.arriving:
                    break  # nobody else is on the way: waiting would only add latency
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    async with asyncio.timeout(timeout):  # no extra task per wait, unlike wait_for
                        nxt = await self.queue.get()
                except TimeoutError:
                    break
                if nxt.key != first.key or rows + nxt.rows > self.max_batch_size:
                    self._held = nxt  # starts the next batch
                    break
                batch.append(nxt)
                rows += nxt.rows
            await self._call(loop, batch, rows)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending], rows: int) -> None:
        live = [p for p in batch if not p.future.done()]  # callers that gave up are skipped
        if not live:
            return
        names = list(live[0].inputs)
        merged = {n: np.concatenate([p.inputs[n] for p in live]) if len(live) > 1 else live[0].inputs[n] for n in names}
        self.calls += 1
        self.on_batch(sum(p.rows for p in live))
        try:
            outputs = await loop.run_in_executor(self.executor, self.predict, merged)
        except Exception as exc:  # the model failed: every caller in the batch gets the error
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in live:
            part = {n: a[start : start + p.rows] for n, a in outputs.items()}
            start += p.rows
            if not p.future.done():
                p.future.set_result(part)
