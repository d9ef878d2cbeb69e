"""The training's parse cache is one operator run's, handed to each reconcile: never module state."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from helpers.jobs import tiny_job
from keras_operator.api.parse import InvalidResource
from keras_operator.controllers import training_reconciler
from keras_operator.controllers.training_reconciler import ParsedSpecs


def resource(uid: str = "u1", generation: int = 1, **spec: Any) -> dict[str, Any]:
    doc = tiny_job("tiny", **{"output": {"uri": "pvc://models/tiny"}, **spec})
    doc["metadata"].update(namespace="default", uid=uid, generation=generation)
    return doc


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    validate = training_reconciler.validate

    def counting(body: dict[str, Any]) -> Any:
        seen.append(f"{body['metadata']['uid']}/{body['metadata']['generation']}")
        return validate(body)

    monkeypatch.setattr(training_reconciler, "validate", counting)
    return seen


def test_a_generation_is_parsed_once_per_run(parses: list[str]) -> None:
    specs = ParsedSpecs()
    first = specs.validated(resource())
    assert specs.validated(copy.deepcopy(resource())) == first
    specs.validated(resource(generation=2))
    assert parses == ["u1/1", "u1/2"]


def test_two_runs_share_nothing(parses: list[str]) -> None:
    ParsedSpecs().validated(resource())
    ParsedSpecs().validated(resource())
    assert parses == ["u1/1", "u1/1"]


def test_an_invalid_spec_is_remembered_and_raised_each_time(parses: list[str]) -> None:
    specs = ParsedSpecs()
    bad = resource(training__epochs=0)
    for _ in range(2):
        with pytest.raises(InvalidResource):
            specs.validated(bad)
    assert parses == ["u1/1"]


def test_the_cache_is_bounded(parses: list[str]) -> None:
    specs = ParsedSpecs(limit=2)
    for uid in ("a", "b", "c"):
        specs.validated(resource(uid=uid))
    assert len(specs) == 2
    specs.validated(resource(uid="a"))  # the oldest went first
    assert parses == ["a/1", "b/1", "c/1", "a/1"]
