"""output.checkpoints: true/false as before, or {every: {steps | minutes}, saveSeconds}."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
import yaml

from helpers.manifests import ROOT, cel_errors, crd_schema
from keras_operator.api import jobfile
from keras_operator.api.parse import InvalidResource, parse
from keras_operator.api.training_job import GRACE_ROOM_SECONDS, CheckpointEvery, Checkpoints


def _digits(checkpoints: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    doc["spec"].setdefault("output", {})["checkpoints"] = copy.deepcopy(checkpoints)
    return doc


def _schema_errors(doc: dict[str, Any]) -> list[Any]:
    schema = crd_schema("kerastrainingjobs")
    return list(jsonschema.Draft4Validator(schema).iter_errors(doc)) + cel_errors(doc, schema)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Checkpoints()),
        (False, Checkpoints(enabled=False)),
        ({"every": {"steps": 50}}, Checkpoints(every=CheckpointEvery(steps=50))),
        ({"every": {"minutes": 0.01}}, Checkpoints(every=CheckpointEvery(minutes=0.01))),
        (
            {"every": {"minutes": 10}, "saveSeconds": 120},
            Checkpoints(every=CheckpointEvery(minutes=10), save_seconds=120),
        ),
        ({"enabled": False}, Checkpoints(enabled=False)),
    ],
)
def test_both_forms_pass_the_crd_and_the_types(value: Any, expected: Checkpoints) -> None:
    doc = _digits(value)
    assert not _schema_errors(doc)
    checkpoints = parse(doc).spec.output.checkpoints
    assert checkpoints == expected
    assert bool(checkpoints) is expected.enabled


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"every": {}}, "output.checkpoints.every"),
        ({"every": {"steps": 10, "minutes": 1}}, "output.checkpoints.every"),
        ({"every": {"steps": 0}}, "output.checkpoints.every.steps"),
        ({"every": {"minutes": 0}}, "output.checkpoints.every.minutes"),
        ({"every": {"seconds": 10}}, "output.checkpoints.every.seconds"),
        ({"saveSeconds": 0}, "output.checkpoints.saveSeconds"),
        ({"every": 10}, "output.checkpoints.every"),
        ("yes", "output.checkpoints"),
    ],
)
def test_bad_forms_are_refused_naming_the_field(value: Any, field: str) -> None:
    """The schema keeps the value open (no bool-or-object type is structural): the types refuse it, in
    the admission webhook, the operator and the trainer alike."""
    with pytest.raises(InvalidResource, match=f"spec.{field}"):
        parse(_digits(value))


def test_the_job_file_keeps_a_plain_bool_for_older_trainers() -> None:
    plain = jobfile.from_resource(parse(_digits(True)), output_uri=None).dump()
    assert plain["output"]["checkpoints"] is True
    every = jobfile.from_resource(parse(_digits({"every": {"steps": 7}})), output_uri=None).dump()
    assert every["output"]["checkpoints"] == {"enabled": True, "every": {"steps": 7}, "saveSeconds": 60}
    # and it reads back the same
    again = jobfile.read(json.loads(json.dumps(every)))[0]
    assert again.output.checkpoints.every == CheckpointEvery(steps=7)


def test_the_grace_period_is_the_save_time_plus_room() -> None:
    assert Checkpoints(save_seconds=90).grace_period_seconds() == 90 + GRACE_ROOM_SECONDS
