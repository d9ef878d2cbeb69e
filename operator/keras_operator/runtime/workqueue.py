"""A keyed work queue, as controllers in Go have it: every trigger (a watch event of the resource, of
its Job or pods, a trainer's push) enqueues the resource's key; one worker per key at a time, bursts
coalesce into one more run, and a failed run is retried with a growing delay."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable

import kopf
import structlog

log = structlog.get_logger("keras_operator.workqueue")

MAX_DELAY = 300.0


class WorkQueue:
    def __init__(self, work: Callable[[Hashable], Awaitable[None]], base_delay: float = 1.0) -> None:
        self.work, self.base_delay = work, base_delay
        self._running: dict[Hashable, asyncio.Task[None]] = {}
        self._again: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._attempt_started: dict[Hashable, float] = {}

    def enqueue(self, key: Hashable, delay: float = 0.0) -> None:
        if delay > 0:
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            self._timers[key] = asyncio.get_running_loop().call_later(delay, self._due, key)
            return
        loop = asyncio.get_running_loop()
        current = self._running.get(key)
        # A task of another loop is an operator run that has stopped (a restart in the same process whose
        # cleanup could not finish): it will never run again, and must not hold the key.
        if current is not None and not current.done() and current.get_loop() is loop:
            self._again.add(key)  # one more run after the current one: it may have read older state
            return
        self._running[key] = loop.create_task(self._run(key))

    def _due(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    @property
    def busy(self) -> int:
        return len(self._running)

    def oldest_attempt(self) -> float | None:
        """When (time.monotonic) the longest-running reconcile under way started; None when none runs. Read
        from the Lease's thread: a work queue whose reconcile hangs is a leader that no longer works."""
        started = tuple(self._attempt_started.values())  # one step under the GIL, safe from another thread
        return min(started, default=None)

    async def _run(self, key: Hashable) -> None:
        try:
            while True:
                self._again.discard(key)
                retry = await self._attempt(key)
                if retry is not None:
                    # The retry stays scheduled, and the failure count stays until a run succeeds (client-go's
                    # rate limiter until Forget)...
                    self.enqueue(key, retry)
                # ...but an event that came in during the run may carry the user's fix: it runs now, as in
                # client-go's queue, not after a backoff of up to MAX_DELAY.
                if key not in self._again:
                    return
        finally:
            self._running.pop(key, None)

    async def _attempt(self, key: Hashable) -> float | None:
        """Run the work once; None when done, else the delay before the next try."""
        self._attempt_started[key] = time.monotonic()
        try:
            await self.work(key)
        except asyncio.CancelledError:
            raise
        except kopf.TemporaryError as exc:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("retrying", key=repr(key), error=str(exc), attempt=failures)
            return min(MAX_DELAY, max(exc.delay or 0, self.base_delay * 2 ** (failures - 1)))
        except Exception as exc:  # a bug must not stop the others: log it and try again later
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.exception("reconcile_failed", key=repr(key), error=f"{type(exc).__name__}: {exc}")
            return min(MAX_DELAY, self.base_delay * 2 ** (failures - 1))
        finally:
            self._attempt_started.pop(key, None)
        self._failures.pop(key, None)
        return None

    def reset(self) -> None:
        """Forget every key, as a new operator run starts: what an earlier run left is of a loop that is gone."""
        for timer in self._timers.values():
            timer.cancel()
        self._running.clear()
        self._timers.clear()
        self._again.clear()
        self._failures.clear()
        self._attempt_started.clear()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._timers.clear()
        self._again.clear()
        self._failures.clear()
        self._attempt_started.clear()
