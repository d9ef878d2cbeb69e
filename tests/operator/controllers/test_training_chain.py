"""A training that starts from another's model (spec.model.trainingJobRef): the reconcile waits, making no
Job, until the referenced training has succeeded, then makes the Job with that model, and keeps saying what it
started from whatever the referenced training becomes. The real builders and status; a fake API."""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest

from helpers.fake_api import FakeApi
from helpers.jobs import tiny_job
from keras_operator.api.parse import InvalidResource
from keras_operator.api.wire import STARTED_FROM_ANNOTATION, TRAINER_CONFIG_ANNOTATION
from keras_operator.controllers import training_reconciler
from keras_operator.runtime.settings import Settings

SETTINGS = Settings()
A_MODEL = "pvc://models/base/runs/uid-a/model.keras"


def chained(status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = tiny_job("finetune", output={"uri": "pvc://models/finetune"})
    doc["spec"]["model"] = {"trainingJobRef": {"name": "base"}}
    doc["metadata"].update(namespace="default", uid="uid-b", generation=1, resourceVersion="3")
    doc["status"] = copy.deepcopy(status or {})
    return doc


def source(phase: str | None, model_uri: str | None = None, message: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "message": message} if phase else {}
    if model_uri:
        status["modelUri"] = model_uri
    doc = tiny_job("base", output={"uri": "pvc://models/base"})
    doc["metadata"].update(namespace="default", uid="uid-a", generation=1)
    doc["status"] = status
    return doc


@dataclass
class Row:
    source: dict[str, Any] | None
    reason: str
    creates: bool = False


ROWS = [
    pytest.param(Row(None, "TrainingJobNotFound"), id="missing-waits"),
    pytest.param(Row(source(None), "WaitingForTraining"), id="pending-waits"),
    pytest.param(Row(source("Running", message="epoch 1/3"), "WaitingForTraining"), id="running-waits"),
    pytest.param(Row(source("Failed", message="boom"), "TrainingFailed"), id="failed-keeps-waiting"),
    pytest.param(Row(source("Succeeded"), "WaitingForTraining"), id="succeeded-without-model-waits"),
    pytest.param(Row(source("Succeeded", A_MODEL), "TrainingSucceeded", creates=True), id="succeeded-starts"),
]


@pytest.mark.parametrize("row", ROWS)
def test_a_chained_training_waits_then_starts_from_the_model(row: Row) -> None:
    api = FakeApi()
    view = training_reconciler.ObservedTraining(resource=chained(), source=row.source)
    outcome, job = asyncio.run(training_reconciler.reconcile(view, SETTINGS, api))

    resolved = next(c for c in outcome.status["conditions"] if c["type"] == "ModelResolved")
    assert resolved["reason"] == row.reason
    assert resolved["status"] == ("True" if row.creates else "False")
    if not row.creates:
        assert job is None
        assert api.changes == []
        assert outcome.status["phase"] == "Pending"
        assert "base" in resolved["message"]
        assert "startedFrom" not in outcome.status
        return
    assert api.changes == [("created", "Job", "finetune-train")]
    stored = api.stored("Job", "finetune-train")
    assert stored["metadata"]["annotations"][STARTED_FROM_ANNOTATION] == A_MODEL
    job_file = json.loads(stored["spec"]["template"]["metadata"]["annotations"][TRAINER_CONFIG_ANNOTATION])
    assert job_file["model"]["uri"] == A_MODEL
    assert "trainingJobRef" not in job_file["model"]
    # The referenced model's claim is mounted, as for a model.uri.
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in stored["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert "models" in claims


def test_a_created_job_keeps_its_model_when_the_source_changes() -> None:
    """Re-reconciles are idempotent: once made, the Job and status.startedFrom stay what the first resolution
    gave, even when the referenced training is re-applied and fails, or names another model."""
    api = FakeApi()
    view = training_reconciler.ObservedTraining(resource=chained(), source=source("Succeeded", A_MODEL))
    outcome, job = asyncio.run(training_reconciler.reconcile(view, SETTINGS, api))
    assert job is not None
    for later in (
        source("Failed", message="re-applied, failed"),
        source("Succeeded", "pvc://models/base/runs/x/model.keras"),
        None,
    ):
        again = training_reconciler.ObservedTraining(resource=chained(outcome.status), job=job, source=later)
        outcome, job = asyncio.run(training_reconciler.reconcile(again, SETTINGS, api))
        assert outcome.status["startedFrom"] == A_MODEL
        assert {c["type"]: c["status"] for c in outcome.status["conditions"]}["ModelResolved"] == "True"
        assert api.changes == [("created", "Job", "finetune-train")]  # still the one Job


def test_a_training_cannot_start_from_itself() -> None:
    body = chained()
    body["spec"]["model"]["trainingJobRef"]["name"] = "finetune"
    with pytest.raises(InvalidResource, match=r"spec\.model\.trainingJobRef\.name"):
        training_reconciler.validate(body)
