"""Suspected in #24 and true: after the Lease was lost, reconciles already under way went on creating and
applying (only status writes were conditioned on a resourceVersion), beside the new leader. Once it is lost,
the API client refuses every write before it reaches the API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keras_operator.runtime import kube, lifecycle

JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j-train", "namespace": "default"}}
KTJ = ("kerasoperator.dev", "v1alpha1", "kerastrainingjobs")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    made: list[str] = []

    async def request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        made.append(f"{method} {path}")
        raise AssertionError("reached the API server")

    monkeypatch.setattr(kube, "_request", request)
    monkeypatch.setenv("KERAS_OPERATOR_API_SERVER", "http://127.0.0.1:9")  # never reached: _request is the fake
    yield made
    lifecycle.LOST.clear()


WRITES = {
    "create": lambda: kube.create_or_adopt(JOB),
    "patch": lambda: kube.patch("Job", "default", "j-train", {"spec": {"suspend": False}}),
    "apply": lambda: kube.apply(JOB, "hash", "uid", current=None),
    "delete": lambda: kube.delete("Job", "default", "j-train"),
    "status": lambda: kube.patch_status(KTJ, "default", "j", {"phase": "Running"}, "7"),
}


@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
async def test_a_write_after_the_lease_was_lost_never_reaches_the_api(calls: list[str], write: str) -> None:
    lifecycle.LOST.set()
    with pytest.raises(kube.NotLeading, match="lost the Lease"):
        await WRITES[write]()
    assert calls == []


async def test_an_event_after_the_lease_was_lost_is_not_posted(calls: list[str]) -> None:
    lifecycle.LOST.set()
    await kube.post_event({**JOB, "metadata": {**JOB["metadata"], "uid": "u"}}, "Normal", "Created", "created")
    assert calls == []


async def test_while_leading_writes_go_through(calls: list[str]) -> None:
    assert not lifecycle.LOST.is_set()
    with pytest.raises(AssertionError, match="reached the API server"):
        await kube.patch("Job", "default", "j-train", {"spec": {"suspend": False}})
    assert calls
