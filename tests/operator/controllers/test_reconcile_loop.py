"""The pieces of the watch-driven reconcile loop: the keyed work queue and the status merge patch."""

from __future__ import annotations

import asyncio
import itertools

import kopf
import pytest

from keras_operator.controllers.outcome import merge_patch
from keras_operator.runtime.liveness import WorkLiveness
from keras_operator.runtime.workqueue import WorkQueue


async def test_one_run_per_key_at_a_time_and_bursts_coalesce() -> None:
    runs: list[str] = []
    active: set[str] = set()
    release = asyncio.Event()

    async def work(key: object) -> None:
        assert key not in active, "two runs of one key at once"
        active.add(str(key))
        runs.append(str(key))
        await release.wait()
        active.discard(str(key))

    queue = WorkQueue(work)
    queue.enqueue("a")
    queue.enqueue("b")
    await asyncio.sleep(0.01)
    for _ in range(10):  # a burst of events while "a" runs: one more run, not ten
        queue.enqueue("a")
    release.set()
    while queue.busy:
        await asyncio.sleep(0.01)
    assert sorted(runs) == ["a", "a", "b"]


async def test_failures_are_retried_with_a_growing_delay() -> None:
    attempts: list[float] = []

    async def work(key: object) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise kopf.TemporaryError("API 503", delay=0.01)
        if len(attempts) == 2:
            raise RuntimeError("a bug")  # logged, and retried like the rest
        if len(attempts) == 3:
            raise kopf.TemporaryError("API 503", delay=0)

    queue = WorkQueue(work, base_delay=0.05)
    queue.enqueue("k")
    for _ in range(200):
        if len(attempts) == 4:
            break
        await asyncio.sleep(0.01)
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[1] >= 0.1 * 0.9  # second failure: base * 2
    assert gaps[2] >= 0.2 * 0.9  # third failure: base * 4, whatever delay the error asked for
    await queue.close()


async def test_an_event_during_a_failing_run_runs_the_key_again_at_once_not_after_the_backoff() -> None:
    """A user's fix arrives (as a watch event) while the run it would fix is failing: the key runs again
    at once, as client-go's queue does, instead of after the backoff (here an hour); the failure count is
    kept, so a second failure backs off longer, not from the start."""
    calls = 0
    first_running, fixed, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def work(key: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_running.set()
            await fixed.wait()
            raise kopf.TemporaryError("not yet", delay=3600)
        done.set()

    queue = WorkQueue(work, base_delay=3600)
    queue.enqueue("k")
    await first_running.wait()
    queue.enqueue("k")  # the event with the fix, while the failing run is still under way
    fixed.set()
    await asyncio.wait_for(done.wait(), timeout=30)
    assert calls == 2
    await queue.close()


async def test_an_event_while_a_key_backs_off_runs_it_at_once_and_keeps_the_failure_count() -> None:
    calls: list[str] = []
    second_done = asyncio.Event()
    third_done = asyncio.Event()

    async def work(key: object) -> None:
        calls.append(str(key))
        if len(calls) == 2:
            second_done.set()
        if len(calls) == 3:
            third_done.set()
        if len(calls) <= 2:
            raise kopf.TemporaryError("still broken", delay=0)

    queue = WorkQueue(work, base_delay=3600)
    queue.enqueue("k")
    while not queue._timers:  # the first failure: backing off for an hour
        await asyncio.sleep(0.01)
    queue.enqueue("k")  # an event meanwhile
    await asyncio.wait_for(second_done.wait(), timeout=30)
    assert queue._failures["k"] == 2  # not reset by the event: the next backoff is longer
    queue.enqueue("k")
    await asyncio.wait_for(third_done.wait(), timeout=30)
    while queue.busy:
        await asyncio.sleep(0.01)
    assert "k" not in queue._failures  # forgotten once a run succeeded
    await queue.close()


async def test_a_reconcile_under_way_is_reported_until_it_ends_for_the_leaders_liveness() -> None:
    release = asyncio.Event()

    async def work(key: object) -> None:
        await release.wait()

    queue = WorkQueue(work)
    assert queue.oldest_attempt() is None
    queue.enqueue("k")
    await asyncio.sleep(0.01)
    started = queue.oldest_attempt()
    assert started is not None
    liveness = WorkLiveness([queue], limit=60.0, clock=lambda: started + 61.0)
    assert not liveness.alive()  # under way for longer than the limit: stalled
    assert WorkLiveness([queue], limit=60.0, clock=lambda: started + 59.0).alive()
    release.set()
    while queue.busy:
        await asyncio.sleep(0.01)
    assert queue.oldest_attempt() is None
    assert liveness.alive()  # nothing under way: nothing stalled


async def test_close_cancels_runs_and_pending_retries() -> None:
    started = asyncio.Event()

    async def work(key: object) -> None:
        started.set()
        await asyncio.sleep(3600)

    queue = WorkQueue(work)
    queue.enqueue("running")
    queue.enqueue("later", delay=3600)
    await started.wait()
    await queue.close()
    assert queue.busy == 0


@pytest.mark.parametrize(
    ("current", "desired", "patch"),
    [
        ({"phase": "Running"}, {"phase": "Running"}, {}),
        ({"phase": "Running"}, {"phase": "Succeeded"}, {"phase": "Succeeded"}),
        # a nested key that went away is nulled (a merge patch would otherwise keep it)
        (
            {"progress": {"epoch": 3, "secondsRemaining": 9, "samplesPerSecond": 5.0}},
            {"progress": {"epoch": 4, "samplesPerSecond": 5.0}},
            {"progress": {"epoch": 4, "secondsRemaining": None}},
        ),
        # lists (conditions) are replaced whole
        (
            {"conditions": [{"type": "A"}, {"type": "B"}]},
            {"conditions": [{"type": "A"}]},
            {"conditions": [{"type": "A"}]},
        ),
        # keys the desired status does not name are left alone
        ({"phase": "Running", "jobName": "x"}, {"phase": "Running"}, {}),
    ],
)
def test_status_merge_patch(current: dict, desired: dict, patch: dict) -> None:
    assert merge_patch(current, desired) == patch


def test_a_key_left_by_a_stopped_run_does_not_block_the_next() -> None:
    """An operator restarted in the same process (tests, `kerasop`): the first run's loop stopped with a
    reconcile in flight, which will never finish; the next run must still reconcile that key."""
    ran: list[str] = []
    hang = asyncio.Event()

    async def work(key: object) -> None:
        ran.append(str(key))
        if len(ran) == 1:
            await hang.wait()  # the first run's reconcile never ends: its loop stops under it

    queue = WorkQueue(work)
    first = asyncio.new_event_loop()

    async def start() -> None:
        queue.enqueue("k")
        await asyncio.sleep(0.01)

    first.run_until_complete(start())
    first.close()  # no cleanup: as when the first run's loop goes away

    async def again() -> None:
        queue.enqueue("k")
        await asyncio.sleep(0.05)

    asyncio.run(again())
    assert ran == ["k", "k"]
