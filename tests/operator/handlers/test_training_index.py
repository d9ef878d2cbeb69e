"""The index of which training starts from which reads any spec, valid or not, without raising: an
exception there is a traceback in the operator's log for every event of that object."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from keras_operator.handlers.training_handlers import training_ref


def spec_view(spec: Any) -> kopf.Spec:
    return kopf.Body({"spec": spec}).spec


@pytest.mark.parametrize(
    "spec",
    [
        {"model": "just-a-string"},
        {"model": ["a", "list"]},
        {"model": {"trainingJobRef": "base"}},
        {"model": {"trainingJobRef": ["base"]}},
        {"model": {"trainingJobRef": {"name": 7}}},
        {"model": {"trainingJobRef": {}}},
        {"model": None},
        {},
        "not-a-spec",
    ],
    ids=repr,
)
def test_a_malformed_spec_has_no_reference(spec: Any) -> None:
    assert training_ref(spec_view(spec)) is None


def test_a_reference_is_read_from_kopfs_view_and_a_plain_dict() -> None:
    spec = {"model": {"trainingJobRef": {"name": "base"}}}
    assert training_ref(spec_view(spec)) == "base"
    assert training_ref(spec) == "base"
