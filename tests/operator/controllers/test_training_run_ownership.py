"""Which pod is the training's, and which leftover is a previous run's: decided by owners and state,
never by random names."""

from __future__ import annotations

from typing import Any

import pytest

from helpers.jobs import tiny_job
from keras_operator.controllers import training_reconciler
from keras_operator.runtime.settings import Settings

STAMP = "2026-01-01T00:00:00Z"


class Calls:
    """An API client whose calls are the functions given (the ones the test expects to be made)."""

    def __init__(self, **calls: Any) -> None:
        self.__dict__.update(calls)


def pod(name: str, phase: str, created: str = STAMP, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created, **meta}, "status": {"phase": phase}}


def resource(name: str = "tiny", uid: str = "new-uid", **spec: Any) -> dict[str, Any]:
    doc = tiny_job(name, output={"uri": f"pvc://models/{name}"}, **spec)
    doc["metadata"].update(namespace="default", uid=uid, generation=1)
    return doc


def owner_ref(kind: str, name: str, uid: str, api_version: str = "kerasoperator.dev/v1alpha1") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


@pytest.mark.parametrize(("failed", "replacement"), [("tiny-train-zzzzz", "tiny-train-aaaaa"), ("a", "z")])
def test_a_failed_pod_and_its_replacement_of_the_same_second_the_replacement_is_newest(
    failed: str, replacement: str
) -> None:
    pods = [pod(failed, "Failed"), pod(replacement, "Pending")]
    assert training_reconciler.newest(pods)["metadata"]["name"] == replacement
    assert training_reconciler.newest(list(reversed(pods)))["metadata"]["name"] == replacement


def test_a_pod_being_deleted_is_older_than_its_replacement_of_the_same_second() -> None:
    pods = [pod("tiny-train-zzzzz", "Running", deletionTimestamp=STAMP), pod("tiny-train-aaaaa", "Running")]
    assert training_reconciler.newest(pods)["metadata"]["name"] == "tiny-train-aaaaa"


def test_a_later_creation_time_wins_whatever_the_state() -> None:
    pods = [pod("tiny-train-aaaaa", "Succeeded"), pod("tiny-train-zzzzz", "Failed", "2026-01-01T00:00:01Z")]
    assert training_reconciler.newest(pods)["metadata"]["name"] == "tiny-train-zzzzz"


def test_only_a_same_named_training_of_another_uid_is_a_previous_run() -> None:
    body = resource()
    job = {"metadata": {"name": "tiny-train"}}
    cases = {
        "a deleted run": ([owner_ref("KerasTrainingJob", "tiny", "old-uid")], True),
        "this run": ([owner_ref("KerasTrainingJob", "tiny", "new-uid")], False),
        "another training": ([owner_ref("KerasTrainingJob", "other", "old-uid")], False),
        "another kind": ([owner_ref("CronJob", "tiny", "old-uid", "batch/v1")], False),
        "another group": ([owner_ref("KerasTrainingJob", "tiny", "old-uid", "example.com/v1")], False),
        "nobody": ([], False),
    }
    for what, (refs, expected) in cases.items():
        obj = {"metadata": {**job["metadata"], "ownerReferences": refs}}
        assert training_reconciler._left_by_previous_run(obj, body) is expected, what


async def test_a_previous_runs_worker_service_is_waited_for_not_a_conflict() -> None:
    """Several workers: the headless Service comes first, and the deleted run's may still be there."""
    body = resource(backend="jax", distribution={"workers": 2})
    spec = training_reconciler.validate(body)

    async def apply(*_: Any, **__: Any) -> tuple[None, None]:
        return None, None  # exists and is not this resource's

    async def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "ownerReferences": [owner_ref("KerasTrainingJob", "tiny", "old-uid")]}}

    async def no_job(*_: Any, **__: Any) -> Any:
        raise AssertionError("no Job is created while the old Service is there")

    api = Calls(apply=apply, get=get, create_or_adopt=no_job)
    with pytest.raises(training_reconciler.PreviousRunLeft, match="tiny-workers"):
        await training_reconciler._create(body, spec, Settings.from_env(), api)


async def test_a_foreign_worker_service_is_a_name_conflict() -> None:
    body = resource(backend="jax", distribution={"workers": 2})
    spec = training_reconciler.validate(body)

    async def apply(*_: Any, **__: Any) -> tuple[None, None]:
        return None, None

    async def get(kind: str, namespace: str, name: str) -> dict[str, Any]:
        return {"metadata": {"name": name}}

    api = Calls(apply=apply, get=get)
    with pytest.raises(training_reconciler.NameTaken):
        await training_reconciler._create(body, spec, Settings.from_env(), api)


async def test_a_previous_runs_job_is_waited_for_and_a_foreign_one_is_a_conflict() -> None:
    body = resource()
    spec = training_reconciler.validate(body)
    existing: dict[str, Any] = {}

    async def adopt(obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return {"metadata": {"name": obj["metadata"]["name"], **existing}}, False

    api = Calls(create_or_adopt=adopt)
    existing["ownerReferences"] = [owner_ref("KerasTrainingJob", "tiny", "old-uid")]
    with pytest.raises(training_reconciler.PreviousRunLeft, match="tiny-train"):
        await training_reconciler._create(body, spec, Settings.from_env(), api)
    existing["ownerReferences"] = []
    job, _ = await training_reconciler._create(body, spec, Settings.from_env(), api)
    assert not training_reconciler.owned_by(job, "new-uid")  # reconcile then reports NameConflict
