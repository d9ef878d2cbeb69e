"""Suspected in #24 and true: after the Lease was lost, reconciles already under way went on creating and
applying (only status writes were conditioned on a resourceVersion), beside the new leader. Once it is lost,
the API client refuses every write before it reaches the API server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from keras_operator.runtime import kube
from keras_operator.runtime.credentials import Credentials

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j-train", "namespace": "default"}}
KTJ = ("kerasoperator.dev", "v1alpha1", "kerastrainingjobs")


class Recorded(kube.Api):
    """The real client, its requests recorded instead of sent."""

    def __init__(self) -> None:
        super().__init__(Credentials("http://127.0.0.1:9"), 30.0)  # never reached
        self.made: list[str] = []

    async def _request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        self.made.append(f"{method} {path}")
        raise AssertionError("reached the API server")


@pytest.fixture
def api() -> Recorded:
    return Recorded()


WRITES: dict[str, Callable[[kube.Api], Awaitable[Any]]] = {
    "create": lambda api: api.create_or_adopt(JOB),
    "patch": lambda api: api.patch("Job", "default", "j-train", {"spec": {"suspend": False}}),
    "apply": lambda api: api.apply(JOB, "hash", "uid", current=None),
    "delete": lambda api: api.delete("Job", "default", "j-train"),
    "status": lambda api: api.patch_status(KTJ, "default", "j", {"phase": "Running"}, "7"),
}


@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
async def test_a_write_after_the_lease_was_lost_never_reaches_the_api(api: Recorded, write: str) -> None:
    api.lost.set()
    with pytest.raises(kube.NotLeading, match="lost the Lease"):
        await WRITES[write](api)
    assert api.made == []


async def test_an_event_after_the_lease_was_lost_is_not_posted(api: Recorded) -> None:
    api.lost.set()
    await api.post_event({**JOB, "metadata": {**JOB["metadata"], "uid": "u"}}, "Normal", "Created", "created")
    assert api.made == []


async def test_while_leading_writes_go_through(api: Recorded) -> None:
    assert not api.lost.is_set()
    with pytest.raises(AssertionError, match="reached the API server"):
        await api.patch("Job", "default", "j-train", {"spec": {"suspend": False}})
    assert api.made


def test_a_run_that_lost_the_lease_leaves_the_next_run_leading() -> None:
    """The loss is the run's (its client's), not the process's: the tests and kopf start runs one after
    another in one process."""
    lost, next_run = Recorded(), Recorded()
    lost.lost.set()
    assert not next_run.lost.is_set()
