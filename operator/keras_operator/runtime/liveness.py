"""Whether the leader's work still makes progress, for the Lease renewal to stop when it does not.

The Lease is renewed on a client and a thread of its own, so a leader whose every reconcile hangs (its
API calls stuck, its thread pool exhausted) would go on renewing, and no other replica would ever take
over. Every API call has a request timeout and a reconcile makes a few of them, so a reconcile under way
for many times that timeout is not slow: it is stuck.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

log = structlog.get_logger("keras_operator.runtime.liveness")

STALL_FACTOR = 4
"""A reconcile under way for this many request timeouts is stuck."""


class Queue(Protocol):
    def oldest_attempt(self) -> float | None: ...


@dataclass(frozen=True)
class WorkLiveness:
    queues: Sequence[Queue]
    limit: float
    """Seconds one reconcile may stay under way before the work counts as stalled."""
    clock: Callable[[], float] = time.monotonic
    """The clock WorkQueue stamps its attempts with."""

    @classmethod
    def for_timeout(cls, queues: Sequence[Queue], request_timeout: float) -> WorkLiveness:
        return cls(queues, STALL_FACTOR * request_timeout)

    def stalled_for(self) -> float:
        """Seconds the longest reconcile under way has run (0 when none runs)."""
        starts = [s for s in (q.oldest_attempt() for q in self.queues) if s is not None]
        return max(0.0, self.clock() - min(starts)) if starts else 0.0

    def alive(self) -> bool:
        stalled = self.stalled_for()
        if stalled <= self.limit:
            return True
        log.error("work_stalled", seconds=round(stalled, 1), limit=self.limit)
        return False
