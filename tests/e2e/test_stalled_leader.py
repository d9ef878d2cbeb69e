"""A leader whose work has stalled steps down: the Lease is renewed on a client and a thread of its own,
so a replica whose every reconcile hangs would otherwise keep the Lease, and no other replica would ever
do the work."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cluster.harness import LEASES, Cluster
from keras_operator.runtime import credentials
from keras_operator.runtime.leader import Elector, lease_client
from keras_operator.runtime.liveness import WorkLiveness
from keras_operator.runtime.settings import Settings
from keras_operator.runtime.workqueue import WorkQueue

pytestmark = pytest.mark.e2e

NAMESPACE, NAME = "keras-system", "keras-operator"


def elector(identity: str) -> Elector:
    login = credentials.find(Settings.from_env().api_server)  # as the operator finds it
    return Elector(lease_client(login), NAMESPACE, NAME, identity, 2.0)


class HangingWork:
    """A work queue on a loop of its own (as kopf's), whose reconcile of "stuck" never returns."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.release = asyncio.Event()
        self.queue = WorkQueue(self._work)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="work")
        self.thread.start()

    async def _work(self, key: object) -> None:
        if key == "stuck":
            self.started.set()
            await self.release.wait()

    def enqueue(self, key: str) -> None:
        self.loop.call_soon_threadsafe(self.queue.enqueue, key)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.release.set)
        asyncio.run_coroutine_threadsafe(self.queue.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.mark.timeout(120)
def test_a_leader_whose_reconcile_hangs_steps_down_and_another_replica_takes_over(cluster: Cluster) -> None:
    a, b = elector("pod-a"), elector("pod-b")
    work = HangingWork()
    liveness = WorkLiveness([work.queue], limit=1.0)
    stop, lost, b_stop = threading.Event(), threading.Event(), threading.Event()
    assert a.acquire(stop)
    keeper = threading.Thread(target=a.keep, args=(stop, lost), kwargs={"alive": liveness.alive})
    keeper.start()
    took_over = threading.Event()
    standby = threading.Thread(target=lambda: b.acquire(b_stop) and took_over.set())
    standby.start()
    try:
        work.enqueue("fine")  # work that ends keeps the leader leading
        assert not lost.wait(3 * a.duration), "a leader whose work progresses stepped down"
        work.enqueue("stuck")
        assert work.started.wait(10)
        # Generous bounds: what is checked is that it happens, not how fast.
        assert lost.wait(60), "a leader whose work hangs kept the Lease"
        assert took_over.wait(60), "no replica took over from the stalled leader"
        assert cluster.get(LEASES, NAME, NAMESPACE)["spec"]["holderIdentity"] == "pod-b"
    finally:
        stop.set()
        b_stop.set()
        keeper.join(5)
        standby.join(5)
        work.close()
