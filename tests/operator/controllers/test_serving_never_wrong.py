"""Serving decisions that must never be wrong (issue #24): the model a KerasModelService still serves across
edits, and the replica count handed to and from an HPA."""

from __future__ import annotations

from typing import Any

import pytest

from keras_operator.api.parse import parse_serving_spec
from keras_operator.builders.serving_manifests import build_deployment
from keras_operator.controllers import serving_reconciler

SERVED = "pvc://models/digits/runs/u1/model.keras"


def resource(model: dict[str, Any], generation: int, resolved_at: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits", "namespace": "default", "uid": "kms-uid", "generation": generation},
        "spec": {"model": model, **spec},
        "status": {
            "observedGeneration": resolved_at,
            "modelUri": SERVED,
            "conditions": [
                {
                    "type": "ModelResolved",
                    "status": "True",
                    "reason": "TrainingSucceeded",
                    "message": "",
                    "observedGeneration": resolved_at,
                }
            ],
        },
    }


def deployment_for(body: dict[str, Any]) -> dict[str, Any]:
    """The stable Deployment as the operator made it when it resolved `body`'s model."""
    return build_deployment(body, parse_serving_spec(body["spec"]), SERVED, "img")


JOB_RUNNING = {"status": {"phase": "Running"}}
REF = {"trainingJobRef": {"name": "digits"}}


@pytest.mark.parametrize(
    ("scenario", "made_for", "now", "job", "reason", "served"),
    [
        ("scaled after the training was deleted", REF, {"replicas": 3}, None, "TrainingJobDeleted", SERVED),
        (
            "server edited while the training runs again",
            REF,
            {"server": {"port": 8081}},
            JOB_RUNNING,
            "TrainingSucceeded",
            SERVED,
        ),
        (
            "another training named: not found",
            REF,
            {"model": {"trainingJobRef": {"name": "other"}}},
            None,
            "TrainingJobNotFound",
            None,
        ),
        (
            "another training named: not finished",
            REF,
            {"model": {"trainingJobRef": {"name": "other"}}},
            JOB_RUNNING,
            "TrainingNotFinished",
            None,
        ),
    ],
)
def test_a_model_still_served_stays_served_across_edits_that_keep_spec_model(
    scenario: str,
    made_for: dict[str, Any],
    now: dict[str, Any],
    job: dict[str, Any] | None,
    reason: str,
    served: str | None,
) -> None:
    before = resource(made_for, generation=2, resolved_at=2)
    after = resource(made_for, generation=3, resolved_at=2)
    after["spec"].update(now)
    view = serving_reconciler.ObservedService(resource=after, deployment=deployment_for(before), training_job=job)
    resolution = serving_reconciler.resolve(view, parse_serving_spec(after["spec"]))
    assert (resolution.reason, resolution.model_uri) == (reason, served), scenario
