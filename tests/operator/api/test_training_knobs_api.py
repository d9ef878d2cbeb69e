"""The API of chains and transfer learning: what the types and the catalogue refuse, naming the field and
the closest name, and what they take. No Keras: the fast tier."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from keras_operator.api.parse import InvalidResource, parse_training_spec

BASE: dict[str, Any] = {
    "model": {"inputShape": [4], "layers": [{"type": "Dense", "units": 3, "activation": "softmax"}]},
    "data": {"train": {"synthetic": {"inputShape": [4], "classes": 3}}},
    "training": {"epochs": 3},
}
APPLICATION = {"name": "MobileNetV3Small", "args": {"input_shape": [32, 32, 3], "pooling": "avg"}}


def spec_with(model: dict[str, Any] | None = None, **training: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    if model is not None:
        spec["model"] = model
    spec["training"].update(training)
    return spec


def refusal(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidResource) as info:
        parse_training_spec(spec)
    return str(info.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            spec_with(optimizer={"name": "adam", "learningRate": {"name": "CosineDecai", "args": {}}}),
            "spec.training.optimizer.learningRate.name: unknown learning-rate schedule 'CosineDecai' "
            "(did you mean 'CosineDecay'?)",
            id="unknown-schedule",
        ),
        pytest.param(
            spec_with(optimizer={"learningRate": {"name": "CosineDecay", "args": {"initialLearningRate": 0.1}}}),
            "spec.training.optimizer.learningRate.args: CosineDecay needs argument 'decay_steps'",
            id="schedule-missing-argument",
        ),
        pytest.param(
            spec_with(
                optimizer={
                    "learningRate": {
                        "name": "ExponentialDecay",
                        "args": {"initialLearningRate": 0.1, "decaySteps": 10, "decayRat": 0.9},
                    }
                }
            ),
            "spec.training.optimizer.learningRate.args.decayRat: ExponentialDecay has no argument 'decayRat' "
            "(did you mean 'decay_rate'?)",
            id="schedule-unknown-argument",
        ),
        pytest.param(
            spec_with(callbacks=[{"name": "ReduceLROnPlatau"}]),
            "spec.training.callbacks[0].name: unknown callback 'ReduceLROnPlatau' (did you mean 'ReduceLROnPlateau'?)",
            id="unknown-callback",
        ),
        pytest.param(
            spec_with(
                callbacks=[{"name": "TerminateOnNaN"}, {"name": "BackupAndRestore", "args": {"backup_dir": "x"}}]
            ),
            "spec.training.callbacks[1].name: BackupAndRestore cannot be given here: the trainer backs up and "
            "resumes itself: set spec.output.checkpoints",
            id="managed-callback",
        ),
        pytest.param(
            spec_with(callbacks=[{"name": "TensorBoard"}]),
            "spec.output.tensorboard",
            id="tensorboard-callback",
        ),
        pytest.param(
            spec_with(optimizer={"name": "adam", "clipNorm": 1.0, "clipValue": 0.5}),
            "at most one of clipNorm, clipValue, globalClipNorm",
            id="two-clippings",
        ),
        pytest.param(spec_with(classWeight={"cat": 2.0}), "classWeight keys are class indices", id="class-weight-key"),
        pytest.param(spec_with(classWeight={"0": -1}), "spec.training.classWeight.0", id="negative-class-weight"),
        pytest.param(
            spec_with(phases=[{"epochs": 1, "trainable": False}, {"epochs": 1}]),
            "the epochs of the phases must add up to epochs",
            id="phases-not-adding-up",
        ),
        pytest.param(
            spec_with(phases=[{"epochs": 3, "trainable": "yes"}]),
            "spec.training.phases[0].trainable",
            id="bad-trainable",
        ),
        pytest.param(
            spec_with(model={"application": APPLICATION, "head": [{"type": "Dens", "units": 3}]}),
            "spec.model.head[0].type: unknown layer 'Dens' (did you mean 'Dense'?)",
            id="unknown-head-layer",
        ),
        pytest.param(
            spec_with(model={"uri": "pvc://m/x", "head": [{"type": "Dense", "units": 3}]}),
            "application is required when head is set",
            id="head-without-application",
        ),
        pytest.param(
            spec_with(model={"uri": "pvc://m/x", "trainingJobRef": {"name": "a"}}),
            "exactly one of layers, config, application, callable, uri, trainingJobRef",
            id="ref-and-uri",
        ),
    ],
)
def test_refusals_name_the_field(spec: dict[str, Any], expected: str) -> None:
    assert expected in refusal(spec)


def test_the_knobs_are_taken() -> None:
    spec = parse_training_spec(
        spec_with(
            model={"application": {**APPLICATION, "trainable": 20}, "head": [{"type": "Dense", "units": 3}]},
            optimizer={
                "name": "sgd",
                "globalClipNorm": 1.0,
                "learningRate": {"name": "CosineDecay", "args": {"initialLearningRate": 0.1, "decay_steps": 10}},
            },
            classWeight={"0": 1.0, "2": 4.0},
            callbacks=[
                {"name": "ReduceLROnPlateau", "args": {"patience": 2}},
                {"name": "CSVLogger", "args": {"filename": "log.csv"}},
            ],
            phases=[{"epochs": 2, "trainable": False}, {"epochs": 1, "trainable": True, "learningRate": 1e-4}],
        )
    )
    assert spec.model.application is not None
    assert spec.model.application.trainable == 20
    assert spec.training.phases is not None
    assert [p.trainable for p in spec.training.phases] == [False, True]
    # A chained training parses with its reference alone.
    chained = parse_training_spec(spec_with(model={"trainingJobRef": {"name": "base"}}))
    assert chained.model.training_job_ref is not None
    assert chained.model.training_job_ref.name == "base"


TRAINING_RULE_CASES = [
    {"epochs": 3, "phases": [{"epochs": 1}, {"epochs": 2}]},
    {"epochs": 3, "phases": [{"epochs": 1}, {"epochs": 1}]},
    {"epochs": 4, "phases": [{"epochs": 1}, {"epochs": 1}, {"epochs": 1}, {"epochs": 1}]},
    {"epochs": 3, "classWeight": {"0": 1, "12": 2}},
    {"epochs": 3, "classWeight": {"a": 1}},
]
# The optimizer's schema is open (a name or an object), so its one rule (at most one clipping) is the types'
# and the admission webhook's alone: the two-clippings row above.
MODEL_RULE_CASES = [
    {"trainingJobRef": {"name": "a"}},
    {"trainingJobRef": {"name": "a"}, "application": APPLICATION},
    {"application": APPLICATION, "head": [{"type": "Dense", "units": 2}]},
    {"trainingJobRef": {"name": "a"}, "head": [{"type": "Dense", "units": 2}]},
]


@pytest.mark.parametrize(
    ("section", "value"),
    [("training", case) for case in TRAINING_RULE_CASES] + [("model", case) for case in MODEL_RULE_CASES],
)
def test_the_new_cel_rules_agree_with_python(section: str, value: dict[str, Any]) -> None:
    """The API server (CEL) and the types say the same of each case: one is no weaker than the other."""
    from helpers.manifests import cel_errors, crd_schema

    schema = crd_schema("kerastrainingjobs")["properties"]["spec"]["properties"][section]
    cel_ok = not cel_errors(value, schema)
    spec = copy.deepcopy(BASE)
    spec[section] = value
    try:
        parse_training_spec(spec)
        py_ok = True
    except InvalidResource:
        py_ok = False
    assert cel_ok == py_ok, value
