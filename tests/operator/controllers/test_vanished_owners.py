"""What the operator checks of resources and Jobs whose deletion its watches may have missed (a re-list
after `410 Gone`): only where acting on a ghost would do harm, and then at most once a minute."""

from __future__ import annotations

from typing import Any

import pytest

from keras_operator.controllers import serving_reconciler, training_reconciler
from keras_operator.controllers import vanished as vanished_module
from keras_operator.controllers.vanished import RECHECK_AFTER, Vanished

RESOURCE = ("kerasoperator.dev", "v1alpha1", "kerasmodelservices")


def obj(name: str, uid: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid}, "status": status}


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the API server holds, by name; every read counted."""
    held: dict[str, Any] = {"count": 0}

    async def read(*args: Any) -> dict[str, Any] | None:
        held["count"] += 1
        return held.get(args[-1])

    monkeypatch.setattr(vanished_module.kube, "find_custom", read)
    monkeypatch.setattr(vanished_module.kube, "get", read)
    return held


async def test_a_service_waiting_without_a_deployment_is_read_once_a_minute_not_at_every_resync(
    reads: dict[str, Any],
) -> None:
    clock = Clock()
    vanished = Vanished(clock=clock)
    kms = obj("a", "u1")
    reads["a"] = kms
    view = serving_reconciler.ObservedService(resource=kms)
    for _ in range(5):  # resyncs
        assert await vanished.serving_view(RESOURCE, view) is view
    assert reads["count"] == 1
    clock.now += RECHECK_AFTER
    assert await vanished.serving_view(RESOURCE, view) is view
    assert reads["count"] == 2


async def test_a_service_whose_deployment_went_is_checked_at_once_and_dropped_when_gone(
    reads: dict[str, Any],
) -> None:
    vanished = Vanished(clock=Clock())
    kms = obj("a", "u1")
    reads["a"] = kms
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms)) is not None
    with_deployment = serving_reconciler.ObservedService(resource=kms, deployment=obj("a", "d1"))
    assert await vanished.serving_view(RESOURCE, with_deployment) is with_deployment
    del reads["a"]  # deleted unseen: the garbage collector then removes its Deployment
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms)) is None
    count = reads["count"]
    assert await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=kms)) is None
    assert reads["count"] == count  # known gone: no read at the next resyncs
    reads["a"] = obj("a", "u2")  # re-applied under the same name: another uid, another resource
    assert (
        await vanished.serving_view(RESOURCE, serving_reconciler.ObservedService(resource=obj("a", "u2"))) is not None
    )


async def test_a_job_is_read_only_when_it_shows_pods_that_no_longer_exist(reads: dict[str, Any]) -> None:
    vanished = Vanished()
    job = obj("t-train", "j1", active=1)
    pod = obj("t-train-x", "p1")
    running = training_reconciler.ObservedTraining(resource=obj("t", "u1"), job=job, pods=[pod])
    assert (await vanished.training_view(running)).job is job
    assert reads["count"] == 0  # its pods are there: nothing to check
    alone = training_reconciler.ObservedTraining(resource=obj("t", "u1"), job=job)
    assert (await vanished.training_view(alone)).job is None  # not found: gone
    assert reads["count"] == 1
    assert (await vanished.training_view(running)).job is None  # known gone, whatever the index still shows
