"""The one status writer: whole statuses, stale keys removed, writes conditioned on the resourceVersion
they were computed from, and Events that say what was done posted even when the write must be redone."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from keras_operator.controllers.outcome import status_patch
from keras_operator.handlers.status_writer import StatusWriter
from keras_operator.runtime import kube
from keras_operator.runtime.metrics import Metrics
from keras_operator.status.events import Outcome

KEY = ("default", "job")


def resource(rv: str, generation: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasTrainingJob",
        "metadata": {
            "name": "job",
            "namespace": "default",
            "uid": "u",
            "resourceVersion": rv,
            "generation": generation,
        },
        "status": status,
    }


class FakeApi:
    def __init__(self, rv: str) -> None:
        self.rv, self.patches, self.events = rv, [], []
        self.next = 100

    async def patch_status(self, res: Any, ns: str, name: str, status: dict[str, Any], rv: str | None = None) -> str:
        if rv is not None and rv != self.rv:
            raise kube.Conflict("the object has been modified")
        self.patches.append((rv, status))
        self.next += 1
        self.rv = str(self.next)
        return self.rv

    async def post_event(self, body: Any, type_: str, reason: str, message: str) -> None:
        self.events.append(reason)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi("7")


def writer(api: FakeApi, metrics: Metrics | None = None) -> StatusWriter:
    return StatusWriter(
        ("kerasoperator.dev", "v1alpha1", "kerastrainingjobs"),
        "KerasTrainingJob",
        frozenset({"Created"}),
        api,  # type: ignore[arg-type]
        metrics or Metrics(),
    )


def test_status_patch_removes_keys_the_new_status_no_longer_has() -> None:
    current = {"phase": "Running", "jobName": "job-train", "modelUri": "x", "progress": {"epoch": 1, "eta": 3}}
    desired = {"phase": "Failed", "progress": {"epoch": 1}}
    assert status_patch(current, desired) == {
        "phase": "Failed",
        "jobName": None,
        "modelUri": None,
        "progress": {"eta": None},
    }


async def test_the_write_is_conditioned_on_the_version_it_was_computed_from(api: FakeApi) -> None:
    w = writer(api)
    assert await w.write(KEY, resource("7"), Outcome({"phase": "Running", "observedGeneration": 1}))
    assert api.patches == [("7", {"phase": "Running", "observedGeneration": 1})]


async def test_a_status_computed_from_an_older_object_is_refused_and_evaluated_again(api: FakeApi) -> None:
    """A spec edit lands (rv 8, generation 2) while a reconcile computed from rv 7: its status, which
    would say generation 2 was observed, is not written; the queue runs the reconcile again."""
    api.rv = "8"
    w = writer(api)
    outcome = Outcome(
        {"phase": "Running", "observedGeneration": 2},
        [("Normal", "Created", "created Job job-train"), ("Normal", "Running", "running")],
    )
    with pytest.raises(kopf.TemporaryError):
        await w.write(KEY, resource("7"), outcome)
    await w.flush()
    assert api.patches == []
    assert api.events == ["Created"]  # what was done is said; the status change it did not make is not


async def test_until_the_watch_shows_a_write_reconciles_start_from_it(api: FakeApi) -> None:
    w = writer(api)
    await w.write(KEY, resource("7"), Outcome({"phase": "Running"}))
    stale = resource("7", phase="Pending")  # the watch has not shown our write yet
    seen = w.current(KEY, stale)
    assert seen["status"] == {"phase": "Running"}
    assert seen["metadata"]["resourceVersion"] == api.rv
    # The same status again is not written twice.
    assert not await w.write(KEY, seen, Outcome({"phase": "Running"}))
    assert len(api.patches) == 1
    # A newer generation in the watch is newer than our write, whatever its resourceVersion.
    assert w.current(KEY, resource("9", generation=2, phase="Running")) == resource("9", generation=2, phase="Running")


async def test_a_conflict_forgets_the_unseen_write(api: FakeApi) -> None:
    """After a 409 the watched copy is the one to trust (it may have passed our write)."""
    w = writer(api)
    await w.write(KEY, resource("7"), Outcome({"phase": "Running"}))
    api.rv = "500"  # someone wrote after us; the watch shows it, with our status in it
    with pytest.raises(kopf.TemporaryError):
        await w.write(KEY, w.current(KEY, resource("499", phase="Running")), Outcome({"phase": "Succeeded"}))
    later = resource("500", phase="Running")
    assert w.current(KEY, later) is later
    assert await w.write(KEY, later, Outcome({"phase": "Succeeded"}))


async def test_a_status_someone_else_edited_is_repaired(api: FakeApi) -> None:
    """Suspected in #24: `kubectl edit --subresource=status` after the watch has shown our write. The
    reconcile computes the same status as last written; it must be written again over the edit."""
    w = writer(api)
    await w.write(KEY, resource("7"), Outcome({"phase": "Running", "message": "training"}))
    ours = api.rv
    assert w.current(KEY, resource(ours, phase="Running", message="training"))["metadata"]["resourceVersion"] == ours
    api.rv = "900"  # the hand edit
    edited = resource("900", phase="Succeeded", message="edited by hand")
    assert w.current(KEY, edited) is edited
    assert await w.write(KEY, edited, Outcome({"phase": "Running", "message": "training"}))
    assert api.patches[-1] == ("900", {"phase": "Running", "message": "training"})
