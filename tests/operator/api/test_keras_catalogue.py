"""The Keras catalogue: in step with the pinned Keras, its refusals right (each one the trainer's Keras
makes too) and never a refusal of a spec the trainer takes."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT
from keras_operator.api import catalogue
from keras_operator.api.parse import InvalidResource, parse, parse_training_spec
from keras_operator.api.training_job import KerasTrainingJob, ModelSpec, TrainingSpec

HAS_KERAS = importlib.util.find_spec("keras") is not None
needs_keras = pytest.mark.skipif(not HAS_KERAS, reason="Keras is not installed: the catalogue is generated from it")

BASE: dict[str, Any] = {
    "model": {"inputShape": [4], "layers": [{"type": "Dense", "units": 3, "activation": "softmax"}]},
    "data": {"train": {"synthetic": {"inputShape": [4], "classes": 3}}},
    "training": {"epochs": 1},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value
    return spec


def refusal(spec: dict[str, Any]) -> str:
    with pytest.raises(InvalidResource) as info:
        parse_training_spec(spec)
    return str(info.value)


@needs_keras
@pytest.mark.slow
def test_committed_catalogue_matches_the_pinned_keras() -> None:
    # A subprocess on the backend the file was written with: the probes build layers, and a test that
    # imported Keras on another backend must not change what they see.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_trainer.catalogue",
            "--output",
            "operator/keras_operator/api/keras_catalogue.json",
            "--check",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr.splitlines()[-1:]


@needs_keras
@pytest.mark.slow
def test_catalogue_names_the_installed_keras() -> None:
    import keras

    assert catalogue.load()["kerasVersion"] == keras.__version__


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"model__layers": [{"type": "Dense", "units": 3}, {"type": "SuperDense"}]},
            "spec.model.layers[1].type: unknown layer 'SuperDense' (did you mean 'Dense'?)",
        ),
        ({"model__layers": [{"type": "dense", "units": 3}]}, "unknown layer 'dense' (did you mean 'Dense'?)"),
        (
            {"model__layers": [{"type": "Dense", "unitz": 3}]},
            "spec.model.layers[0].unitz: Dense has no argument 'unitz' (did you mean 'units'?)",
        ),
        (
            {"model__layers": [{"type": "Conv1D", "filters": 2, "kernelSize": 3}]},
            "spec.model.layers[0].kernelSize: Conv1D has no argument 'kernelSize' (did you mean 'kernel_size'?)",
        ),
        ({"model__layers": [{"type": "Dense"}]}, "spec.model.layers[0]: Dense needs argument 'units'"),
        (
            {"model__layers": [{"type": "Dense", "units": 3, "activation": "rellu"}]},
            "spec.model.layers[0].activation: unknown activation 'rellu' (did you mean 'relu'?)",
        ),
        (
            {"model__layers": [{"type": "Dense", "units": 3, "kernel_initializer": "glorotuniform"}]},
            "spec.model.layers[0].kernel_initializer: unknown initializer 'glorotuniform' "
            "(did you mean 'glorot_uniform'?)",
        ),
        (
            {"training__optimizer": "adma"},
            "spec.training.optimizer.name: unknown optimizer 'adma' (did you mean 'adam'?)",
        ),
        (
            {"training__optimizer": {"name": "Adam", "beta1": 0.9}},
            "spec.training.optimizer.beta1: Adam has no argument 'beta1' (did you mean 'beta_1'?)",
        ),
        ({"training__loss": "mse2"}, "spec.training.loss: unknown loss 'mse2' (did you mean 'mse'?)"),
        (
            {"training__loss": "sparse_categorical_crossentropi"},
            "unknown loss 'sparse_categorical_crossentropi' (did you mean 'sparse_categorical_crossentropy'?)",
        ),
        (
            {"training__loss": {"name": "Huber", "args": {"deltaa": 1}}},
            "spec.training.loss.args.deltaa: Huber has no argument 'deltaa' (did you mean 'delta'?)",
        ),
        (
            {"training__metrics": ["mae", "acuracy"]},
            "spec.training.metrics[1]: unknown metric 'acuracy' (did you mean 'accuracy'?)",
        ),
        (
            {"model": {"application": {"name": "MobileNetV4"}}},
            "spec.model.application.name: unknown application 'MobileNetV4' (did you mean 'MobileNetV2'?)",
        ),
        (
            {"model": {"application": {"name": "MobileNetV2", "args": {"clases": 3}}}},
            "spec.model.application.args.clases: MobileNetV2 has no argument 'clases' (did you mean 'classes'?)",
        ),
    ],
)
def test_refusals_name_the_field_and_the_closest_name(changes: dict[str, Any], expected: str) -> None:
    assert expected in refusal(spec_with(**changes))


def test_every_problem_is_reported_at_once() -> None:
    message = refusal(spec_with(model__layers=[{"type": "Dense", "unitz": 3}], training__optimizer="adma"))
    assert "spec.model.layers[0].unitz" in message
    assert "spec.model.layers[0]: Dense needs argument 'units'" in message
    assert "spec.training.optimizer.name" in message


@pytest.mark.parametrize(
    "changes",
    [
        # Aliases and spellings the trainer's Keras takes.
        {"training__optimizer": "ADAM"},
        {"training__optimizer": {"name": "SGD", "learningRate": 0.1, "momentum": 0.9, "nesterov": True}},
        {"training__loss": "mse", "training__metrics": ["mae", "MeanSquaredError", "acc", "accuracy"]},
        {"training__loss": "sparse_categorical_crossentropy"},
        {"training__loss": {"name": "Huber", "args": {"delta": 2.0}}},
        # Custom code may register objects under any name: names are left to the trainer.
        {"model": {"callable": "mymodel:build"}, "training__optimizer": "my_optimizer", "training__loss": "my_loss"},
        # Another image may hold another Keras.
        {"image": "example.com/my-trainer:1", "model__layers": [{"type": "MyLayer", "foo": 1}]},
        # A full Keras config is left to Keras' own deserializer.
        {"model": {"config": {"class_name": "Sequential", "config": {"layers": [{"class_name": "NoSuchLayer"}]}}}},
        # Values that are not names (a config dict) and registered names are not checked.
        {"model__layers": [{"type": "Dense", "units": 2, "kernel_initializer": {"class_name": "Whatever"}}]},
        {"training__loss": "my_package>MyLoss"},
        # Layers taking **kwargs Keras passes on are not checked for unknown arguments.
        {"model__layers": [{"type": "TimeDistributed", "layer": {"class_name": "Dense"}, "anything": 1}]},
    ],
)
def test_what_the_catalogue_cannot_judge_is_let_by(changes: dict[str, Any]) -> None:
    parse_training_spec(spec_with(**changes))


def test_a_different_installed_keras_judges_for_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "_installed_keras", lambda: "3.999.0")
    parse_training_spec(spec_with(model__layers=[{"type": "LayerOfTheFuture"}]))


def test_a_bug_in_the_check_never_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> list[str]:
        raise KeyError("layers")

    monkeypatch.setattr(catalogue, "_layers", broken)
    parse_training_spec(spec_with(model__layers=[{"type": "SuperDense"}]))


def test_render_refuses_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kerasop.cli import main

    doc = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasTrainingJob",
        "metadata": {"name": "bad"},
        "spec": {**spec_with(model__layers=[{"type": "SuperDense"}]), "output": {"uri": "pvc://models/bad"}},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["render", str(path)]) == 2
    assert "spec.model.layers[0].type: unknown layer 'SuperDense' (did you mean 'Dense'?)" in capsys.readouterr().err


# Layer specs the trainer builds, in the forms users write: the catalogue must take every one.
VALID_LAYERS: list[tuple[list[int], list[dict[str, Any]]]] = [
    ([4], [{"type": "Dense", "units": 2, "activation": "relu", "kernel_initializer": "he_normal", "use_bias": False}]),
    ([4], [{"type": "Dense", "units": 2, "kernel_regularizer": "l2", "bias_constraint": "non_neg", "name": "out"}]),
    ([4], [{"type": "Dense", "units": 2, "input_shape": [4], "dtype": "float32", "trainable": False}]),
    ([4], [{"type": "Dense", "units": 2, "kernel_initializer": {"class_name": "Zeros", "config": {}}}]),
    ([4], [{"type": "LeakyReLU", "alpha": 0.2}, {"type": "LeakyReLU", "negative_slope": 0.1}]),
    ([4], [{"type": "Dropout", "rate": 0.2, "seed": 1}, {"type": "GaussianNoise", "stddev": 0.1}]),
    ([4], [{"type": "BatchNormalization", "momentum": 0.9}, {"type": "LayerNormalization", "rms_scaling": True}]),
    ([4], [{"type": "Activation", "activation": "gelu"}, {"type": "Reshape", "target_shape": [2, 2]}]),
    ([8], [{"type": "Embedding", "input_dim": 10, "output_dim": 4, "input_length": 8}, {"type": "Flatten"}]),
    (
        [6, 3],
        [{"type": "LSTM", "units": 4, "return_sequences": True, "implementation": 2}, {"type": "GRU", "units": 2}],
    ),
    ([6, 3], [{"type": "SimpleRNN", "units": 2, "activation": None, "recurrent_dropout": 0.0}]),
    ([6, 3], [{"type": "Conv1D", "filters": 2, "kernel_size": 3, "padding": "causal", "dilation_rate": 2}]),
    ([8, 8, 1], [{"type": "Conv2D", "filters": 4, "kernel_size": [3, 3], "strides": 1, "padding": "same"}]),
    ([8, 8, 1], [{"type": "Convolution2D", "filters": 2, "kernel_size": 3}, {"type": "MaxPool2D", "pool_size": 2}]),
    ([8, 8, 1], [{"type": "SeparableConv2D", "filters": 2, "kernel_size": 3, "depthwise_initializer": "ones"}]),
    ([8, 8, 3], [{"type": "Rescaling", "scale": 0.5, "offset": 0.1}, {"type": "RandomFlip", "mode": "horizontal"}]),
    ([8, 8, 3], [{"type": "GlobalAveragePooling2D", "keepdims": True}, {"type": "Flatten"}]),
    ([4, 2], [{"type": "Permute", "dims": [2, 1]}, {"type": "Conv1DTranspose", "filters": 2, "kernel_size": 2}]),
    ([4], [{"type": "UnitNormalization"}, {"type": "RepeatVector", "n": 2}, {"type": "Flatten"}]),
    ([4], [{"type": "Dense", "units": 2, "activation": "softmax", "activity_regularizer": "l1"}]),
]


@needs_keras
@pytest.mark.parametrize(("input_shape", "layers"), VALID_LAYERS)
@pytest.mark.slow
def test_valid_layer_specs_pass_and_build_in_the_trainer(input_shape: list[int], layers: list[dict[str, Any]]) -> None:
    from keras_trainer import models

    spec = parse_training_spec(spec_with(model={"inputShape": input_shape, "layers": layers}))
    assert spec.model.layers is not None
    models.build(spec.model)


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.yaml"))


@needs_keras
@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
@pytest.mark.slow
def test_examples_pass_and_build_in_the_trainer(path: Path) -> None:
    from keras_trainer import models

    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or "spec" not in doc:  # a ConfigMap of code
            continue
        resource = parse(doc)  # the catalogue refuses nothing here
        if not isinstance(resource, KerasTrainingJob):
            continue
        spec = resource.spec
        if spec.code_source() is not None:
            continue  # its model, loss and metrics come from its code: test_examples trains it
        if spec.model.uri is None and spec.model.callable is None and spec.model.training_job_ref is None:
            models.build(spec.model, mixed_precision=spec.training.mixed_precision)
        models.optimizer(spec.training)
        models.loss(spec.training)
        models.metrics(spec.training)


def _layer_entries() -> list[tuple[str, dict[str, Any]]]:
    return sorted(catalogue.load()["layers"].items())


@needs_keras
@pytest.mark.slow
def test_every_probed_layer_builds_with_its_required_arguments_and_refuses_an_unknown_one() -> None:
    """The claims the operator refuses on, checked on every layer the generator could build: only the
    required arguments are needed; an argument outside the list fails in Keras too."""
    import keras

    from keras_trainer.catalogue import SAMPLE_ARGS

    checked = 0
    for name, entry in _layer_entries():
        if not entry["probed"]:
            continue
        cls = getattr(keras.layers, name)
        required = {arg: SAMPLE_ARGS[arg] for arg in entry["required"]}
        cls(**required)
        if entry["strict"]:
            with pytest.raises((TypeError, ValueError)):
                cls(**required, unitz=3)
            checked += 1
    assert checked > 100


def _trainer_builds(model: ModelSpec, training: TrainingSpec) -> None:
    from keras_trainer import models

    models.build(model)
    models.optimizer(training)
    models.loss(training)
    models.metrics(training)


@needs_keras
@pytest.mark.slow
def test_the_trainer_refuses_what_the_catalogue_refuses() -> None:
    """A sample through the trainer's own code: each refusal of the catalogue is a SpecError there."""
    from keras_trainer.errors import SpecError

    refused = [
        spec_with(model__layers=[{"type": "SuperDense"}]),
        spec_with(model__layers=[{"type": "Dense", "units": 2, "unitz": 3}]),
        spec_with(model__layers=[{"type": "Dense"}]),
        spec_with(model__layers=[{"type": "Dense", "units": 2, "activation": "rellu"}]),
        spec_with(model__layers=[{"type": "Dense", "units": 2, "bias_regularizer": "l3"}]),
        spec_with(training__optimizer="adma"),
        spec_with(training__optimizer={"name": "adam", "beta1": 0.9}),
        spec_with(training__loss="mse2"),
        spec_with(training__loss={"name": "Huber", "args": {"deltaa": 1}}),
        spec_with(training__metrics=["acuracy"]),
        spec_with(model={"application": {"name": "MobileNetV2", "args": {"clases": 3}}}),
    ]
    for raw in refused:
        refusal(raw)
        spec = copy.deepcopy(raw)
        model, training = ModelSpec.model_validate(spec["model"]), TrainingSpec.model_validate(spec["training"])
        with pytest.raises(SpecError):
            _trainer_builds(model, training)


def test_the_catalogue_is_package_data() -> None:
    assert 'keras_operator = ["api/keras_catalogue.json"]' in (ROOT / "pyproject.toml").read_text()
    assert catalogue.load()["layers"]["Dense"]["required"] == ["units"]


def test_the_trainer_lets_its_own_keras_judge() -> None:
    bad = spec_with(model__layers=[{"type": "SuperDense"}])
    with catalogue.keras_judges():
        parse_training_spec(bad)
    refusal(bad)  # and only inside
