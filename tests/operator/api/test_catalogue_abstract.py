"""Abstract Keras base classes (Loss, Metric, Optimizer, Initializer, Layer) are names Keras' get() takes but
no usable choice: the catalogue check refuses them and never suggests one (`my_loss` once got "did you mean
'Loss'?", which would only fail later, in the trainer)."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from typing import Any

import pytest

from keras_operator.api import catalogue
from keras_operator.api.parse import InvalidResource, parse_training_spec

BASE: dict[str, Any] = {
    "model": {"inputShape": [4], "layers": [{"type": "Dense", "units": 3, "activation": "softmax"}]},
    "data": {"train": {"synthetic": {"inputShape": [4], "classes": 3}}},
    "training": {"epochs": 1},
}


def _problems(edit: Any) -> list[str]:
    spec = copy.deepcopy(BASE)
    edit(spec)
    try:
        parse_training_spec(spec)
    except InvalidResource as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("loss", ["my_loss", "focal_loss", "loss", "Losss"])
def test_an_unknown_loss_is_never_pointed_at_the_base_class(loss: str) -> None:
    (problem,) = _problems(lambda s: s["training"].update(loss=loss))
    assert f"unknown loss {loss!r}" in problem
    assert "'Loss'" not in problem, problem


def test_an_unknown_metric_is_never_pointed_at_the_base_class() -> None:
    (problem,) = _problems(lambda s: s["training"].update(metrics=["custom_metric"]))
    assert "unknown metric 'custom_metric'" in problem
    assert "'metric'" not in problem, problem
    assert "'Metric'" not in problem, problem


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s["training"].update(loss="Loss"), "spec.training.loss: unknown loss 'Loss'"),
        (lambda s: s["training"].update(loss={"name": "Loss"}), "spec.training.loss.name: unknown loss 'Loss'"),
        (lambda s: s["training"].update(metrics=["Metric"]), "spec.training.metrics[0]: unknown metric 'Metric'"),
        (lambda s: s["training"].update(optimizer="Optimizer"), "unknown optimizer 'Optimizer'"),
        (lambda s: s["model"]["layers"].insert(0, {"type": "Layer"}), "spec.model.layers[0].type: unknown layer"),
        (
            lambda s: s["model"]["layers"][0].update(kernel_initializer="Initializer"),
            "unknown initializer 'Initializer'",
        ),
    ],
)
def test_a_base_class_is_refused(edit: Any, expected: str) -> None:
    (problem,) = _problems(edit)
    assert expected in problem


def test_the_abstract_names_are_in_the_generated_catalogue() -> None:
    """What is filtered out is there to filter: a Keras that renamed a base class must update the list."""
    raw = json.loads((catalogue.resources.files("keras_operator.api") / catalogue.CATALOGUE_FILE).read_text())
    for kind, names in catalogue.ABSTRACT.items():
        listed = raw[kind]["names"] if kind == "losses" else raw[kind]
        assert names <= set(listed), (kind, names - set(listed))
        assert not names & set(catalogue.load()[kind] if kind != "losses" else catalogue.load()[kind]["names"])


def test_concrete_choices_stay() -> None:
    assert not _problems(lambda s: s["training"].update(loss="mse", metrics=["Mean", "accuracy"], optimizer="adam"))


def _uses(kind: str, name: str) -> Callable[[], Any]:
    """Using `name` as the trainer would: a loss called, a metric updated, a layer in a model, ..."""
    import keras
    import numpy as np

    y = np.ones((2, 3), dtype="float32")
    uses: dict[str, Callable[[], Any]] = {
        "losses": lambda: keras.losses.get(name)(y, y),
        "metrics": lambda: keras.metrics.get(name).update_state(y, y),
        "optimizers": lambda: keras.optimizers.get(name),
        "initializers": lambda: keras.initializers.get(name)((2, 2)),
        "layers": lambda: keras.Sequential([keras.Input((3,)), getattr(keras.layers, name)()])(y),
    }
    return uses[kind]


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
@pytest.mark.parametrize(
    ("kind", "name"), sorted((kind, name) for kind, names in catalogue.ABSTRACT.items() for name in names)
)
@pytest.mark.slow
def test_every_name_refused_fails_in_keras(kind: str, name: str) -> None:
    """Refusing is right only for what Keras cannot use: each abstract name fails once it is used."""
    with pytest.raises((NotImplementedError, TypeError)):
        _uses(kind, name)()
