"""What the operator checks of resources and Jobs whose deletion its watches may have missed (a re-list
after `410 Gone`): only where acting on a ghost would do harm, and then at most once a minute."""

from __future__ import annotations

from typing import Any

import pytest

from keras_operator.controllers import serving_reconciler, training_reconciler
from keras_operator.controllers.vanished import RECHECK_AFTER, Vanished

RESOURCE = ("kerasoperator.dev", "v1alpha1", "kerasmodelservices")


def obj(name: str, uid: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid}, "status": status}


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


class Reads(dict[str, Any]):
    """What the API server holds, by name; every read counted. Both reads the check makes, as `Api`'s."""

    async def read(self, *args: Any) -> dict[str, Any] | None:
        self["count"] += 1
        return dict.get(self, args[-1])

    find_custom = get = read


@pytest.fixture
def reads() -> Reads:
    return Reads(count=0)


async def test_a_service_waiting_without_a_deployment_is_read_once_a_minute_not_at_every_resync(
    reads: Reads,
) -> None:
    clock = Clock()
    vanished = Vanished(clock=clock)
    kms = obj("a", "u1")
    reads["a"] = kms
    view = serving_reconciler.ObservedService(resource=kms)
    for _ in range(5):  # resyncs
        assert await vanished.serving_view(RESOURCE, view, reads) is view
    assert reads["count"] == 1
    clock.now += RECHECK_AFTER
    assert await vanished.serving_view(RESOURCE, view, reads) is view
    assert reads["count"] == 2


async def test_a_service_whose_deployment_went_is_checked_at_once_and_dropped_when_gone(
    reads: Reads,
) -> None:
    vanished = Vanished(clock=Clock())
    kms = obj("a", "u1")
    reads["a"] = kms
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms), reads) is not None
    with_deployment = serving_reconciler.ObservedService(resource=kms, deployment=obj("a", "d1"))
    assert await vanished.serving_view(RESOURCE, with_deployment, reads) is with_deployment
    del reads["a"]  # deleted unseen: the garbage collector then removes its Deployment
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms), reads) is None
    count = reads["count"]
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms), reads) is None
    assert reads["count"] == count  # known gone: no read at the next resyncs
    reads["a"] = obj("a", "u2")  # re-applied under the same name: another uid, another resource
    again = serving_reconciler.ObservedService(resource=obj("a", "u2"))
    assert await vanished.serving_view(RESOURCE, again, reads) is not None


async def test_a_job_is_read_only_when_it_shows_pods_that_no_longer_exist(reads: Reads) -> None:
    vanished = Vanished()
    job = obj("t-train", "j1", active=1)
    pod = obj("t-train-x", "p1")
    running = training_reconciler.ObservedTraining(resource=obj("t", "u1"), job=job, pods=[pod])
    assert (await vanished.training_view(running, reads)).job is job
    assert reads["count"] == 0  # its pods are there: nothing to check
    alone = training_reconciler.ObservedTraining(resource=obj("t", "u1"), job=job)
    assert (await vanished.training_view(alone, reads)).job is None  # not found: gone
    assert reads["count"] == 1
    assert (await vanished.training_view(running, reads)).job is None  # known gone, whatever the index still shows
