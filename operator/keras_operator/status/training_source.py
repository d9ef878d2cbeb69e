"""Which model a training chained to another (spec.model.trainingJobRef) starts from, or why it waits.

A pure decision on the referenced KerasTrainingJob as the watch shows it. The training waits, with no Job,
until the referenced one has Succeeded with a model; one that is missing or failed keeps it waiting too
(a GitOps repository applies both in any order, and a failed training re-applied is a new run that may
succeed), each with a reason and a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_operator.status import conditions

CONDITION = "ModelResolved"


@dataclass(frozen=True)
class Source:
    uri: str | None
    """The model to start from; None while waiting."""
    reason: str
    message: str

    def condition(self) -> dict[str, Any]:
        return conditions.condition(CONDITION, self.uri is not None, self.reason, self.message)


def resolve(ref: str, namespace: str, source: dict[str, Any] | None) -> Source:
    """What `source` (the KerasTrainingJob named `ref`, None when there is none) gives to start from."""
    if source is None or (source.get("metadata") or {}).get("deletionTimestamp"):
        return Source(
            None, "TrainingJobNotFound", f"waiting for KerasTrainingJob {ref}: not found in namespace {namespace}"
        )
    status = source.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded" and status.get("modelUri"):
        return Source(
            str(status["modelUri"]), "TrainingSucceeded", f"starting from the model of KerasTrainingJob {ref}"
        )
    detail = f": {status['message']}" if status.get("message") else ""
    if phase == "Failed":
        return Source(
            None,
            "TrainingFailed",
            f"waiting for KerasTrainingJob {ref}, which failed{detail}; re-apply it to train it again",
        )
    return Source(None, "WaitingForTraining", f"waiting for KerasTrainingJob {ref} to succeed ({phase}{detail})")
