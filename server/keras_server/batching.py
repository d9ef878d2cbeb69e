"""Dynamic server-side batching: concurrent requests share one model call.

Requests queue (bounded: a full queue answers 503 instead of growing memory); one worker takes
the first, keeps taking more until `max_batch_size` rows or `max_latency` seconds, calls the
model once in a worker thread (the event loop never blocks), and hands each caller its own rows.
Requests whose examples differ in shape or type from the batch being filled wait for the next one.
A request of more than `max_batch_size` rows runs in chunks of at most `max_batch_size` rows: the
shapes warm-up compiled, never a new one that would stall every queued request while it compiles.

The wait is adaptive: a handler announces a request as soon as it arrives (`arrive()`), before
reading and parsing its body. The worker waits for more rows only while announced requests are
still on their way; with nobody on the way, it calls the model at once, so a lone client never pays
`max_latency` and a crowd still fills batches.

Admission is bounded three ways, each answered with `Overloaded` (503): requests waiting
(`max_queue`), bytes of request bodies held from arrival to answer (`max_bytes`: a count alone lets
1,024 bodies of 10 MiB in) and rows waiting (`max_rows`, 0: no limit). A request that finds nothing
else held is always admitted, so a budget below one request's size slows the server, never locks
a client out.

A caller that stops waiting (its client went away and aiohttp cancelled the handler) leaves the
queue at once: its rows never reach the model and `dropped` counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

Arrays = dict[str, np.ndarray]
log = structlog.get_logger("keras_server")


class Overloaded(Exception):
    """Admitting the request would pass a budget: the caller should answer 503 and the client retry later."""


@dataclass(eq=False)  # compared by identity: removing one from the queue must not compare arrays
class _Pending:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.key = tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(self.inputs.items()))


class Arrival:
    """A request on its way to the batcher, from the moment it arrives until it is answered.

    `admit` reserves the bytes of its body; `submit` hands its inputs to the batcher; `leave`, always
    called when the request ends however it ends, gives everything back.
    """

    def __init__(self, batcher: Batcher) -> None:
        self._batcher, self._on_the_way, self._bytes, self._open = batcher, True, 0, True
        batcher.arriving += 1
        batcher.open += 1

    def admit(self, nbytes: int) -> None:
        self._batcher._reserve(nbytes)
        self._bytes += nbytes

    def _arrived(self) -> None:
        if self._on_the_way:
            self._on_the_way = False
            self._batcher.arriving -= 1

    def leave(self) -> None:
        self._arrived()
        self._batcher.held_bytes -= self._bytes
        self._bytes = 0
        if self._open:
            self._open = False
            self._batcher.open -= 1

    async def submit(self, inputs: Arrays) -> Arrays:
        self._arrived()  # no await between this and the enqueue: the worker sees one or the other
        return await self._batcher.submit(inputs)


class Batcher:
    def __init__(
        self,
        predict: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int = 32,
        max_latency: float = 0.005,
        max_queue: int = 1024,
        max_bytes: int = 0,
        max_rows: int = 0,
        on_batch: Callable[[int], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.predict, self.max_batch_size, self.max_latency = predict, max_batch_size, max_latency
        self.max_queue, self.max_bytes, self.max_rows = max_queue, max_bytes, max_rows
        self.on_batch = on_batch or (lambda rows: None)
        self.on_drop = on_drop or (lambda: None)
        # One thread: model calls run one at a time, like TF Serving's single batching thread per model.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.calls = 0  # model calls
        self.dropped = 0  # requests whose client went away before the model ran them
        self.arriving = 0
        self.open = 0  # requests between arrive() and leave(): a model version unloads once none is left
        self.held_bytes = 0  # request bodies admitted and not yet answered
        # A deque, not an asyncio.Queue: a caller that gives up must be able to leave from the middle.
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._held: _Pending | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return len(self._queue) + (1 if self._held else 0)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows + (self._held.rows if self._held else 0)

    def arrive(self) -> Arrival:
        return Arrival(self)

    def _reserve(self, nbytes: int) -> None:
        if self.max_bytes and self.held_bytes and self.held_bytes + nbytes > self.max_bytes:
            raise Overloaded(
                f"the server is overloaded ({self.held_bytes} bytes of requests held, "
                f"{self.max_bytes} at most; this one has {nbytes})"
            )
        self.held_bytes += nbytes

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
        if self.depth >= self.max_queue:
            raise Overloaded(f"the server is overloaded ({self.max_queue} requests waiting)")
        queued = self.queued_rows
        if self.max_rows and queued and queued + rows > self.max_rows:
            raise Overloaded(
                f"the server is overloaded ({queued} rows waiting, {self.max_rows} at most; this request has {rows})"
            )
        pending = _Pending(inputs, rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._queued_rows += rows
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            if pending in self._queue:  # still waiting: the worker never sees it
                self._queue.remove(pending)
                self._queued_rows -= rows
                self._dropped(rows)
            raise

    def _dropped(self, rows: int) -> None:
        self.dropped += 1
        self.on_drop()
        log.info("request_dropped", reason="client_gone", rows=rows)

    async def _next(self) -> _Pending:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        pending = self._queue.popleft()
        self._queued_rows -= pending.rows
        return pending

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._held or await self._next()
            self._held = None
            if first.rows > self.max_batch_size:
                await self._call_in_chunks(loop, first)
                continue
            batch = [first]
            rows = first.rows
            deadline = time.monotonic() + self.max_latency
            while rows < self.max_batch_size and self.max_batch_size > 1:
                if self._queue:
                    # Already queued: taken at once, without arming a timer per request (loop work
                    # for nothing), even past the deadline: they would otherwise wait for the next call.
                    nxt = await self._next()
                else:
                    if not self.arriving:
                        break  # nobody else is on the way: waiting would only add latency
                    timeout = deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    try:
                        async with asyncio.timeout(timeout):  # no extra task per wait, unlike wait_for
                            nxt = await self._next()
                    except TimeoutError:
                        break
                if nxt.key != first.key or rows + nxt.rows > self.max_batch_size:
                    self._held = nxt  # starts the next batch
                    break
                batch.append(nxt)
                rows += nxt.rows
            await self._call(loop, batch)

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        """The callers still waiting; the others' work is dropped (they left after leaving the queue)."""
        live = []
        for p in batch:
            if p.future.done():
                self._dropped(p.rows)
            else:
                live.append(p)
        return live

    async def _predict(self, loop: asyncio.AbstractEventLoop, inputs: Arrays, rows: int) -> Arrays:
        self.calls += 1
        self.on_batch(rows)
        return await loop.run_in_executor(self.executor, self.predict, inputs)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        live = self._live(batch)
        if not live:
            return
        names = list(live[0].inputs)
        merged = {n: np.concatenate([p.inputs[n] for p in live]) if len(live) > 1 else live[0].inputs[n] for n in names}
        try:
            outputs = await self._predict(loop, merged, sum(p.rows for p in live))
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

    async def _call_in_chunks(self, loop: asyncio.AbstractEventLoop, pending: _Pending) -> None:
        parts: list[Arrays] = []
        for start in range(0, pending.rows, self.max_batch_size):
            if pending.future.done():  # the client left part-way: the rest is not worth computing
                if not parts:
                    self._dropped(pending.rows)
                return
            end = min(start + self.max_batch_size, pending.rows)
            chunk = {n: a[start:end] for n, a in pending.inputs.items()}
            try:
                parts.append(await self._predict(loop, chunk, end - start))
            except Exception as exc:
                if not pending.future.done():
                    pending.future.set_exception(exc)
                return
        if not pending.future.done():
            pending.future.set_result({n: np.concatenate([p[n] for p in parts]) for n in parts[0]})
