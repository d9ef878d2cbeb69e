"""TF Serving's Classify and Regress REST APIs: examples in, classes or values out. Pure functions.

A request is `{"signature_name"?, "context"?: {feature: values}, "examples": [{feature: values}, ...]}`:
each example's features, merged over the context's, are the model's named inputs (tf.Example
features are flat lists: an example's values fill its input's shape). Whether a model can classify
or regress is read from its output signature, before any work is done for the request.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from keras_server.codec import RequestError, to_array
from keras_server.model import TensorSpec

Task = Literal["classify", "regress"]


def parse_examples(body: Any, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The model's inputs, one row per example."""
    if not isinstance(body, dict):
        raise RequestError(400, 'the body must be a JSON object with "examples"')
    signature = body.get("signature_name", "serving_default")
    if signature != "serving_default":
        raise RequestError(400, f"unknown signature_name {signature!r}; this model has serving_default")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise RequestError(400, '"context" must be an object of features shared by every example')
    given = body.get("examples")
    if not isinstance(given, list) or not given:
        raise RequestError(400, '"examples" must be a non-empty list of objects, one per example')
    names = [s.name for s in inputs]
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for index, example in enumerate(given):
        if not isinstance(example, dict):
            raise RequestError(400, f"examples[{index}] must be an object of features")
        features = {**context, **example}
        for name in names:
            if name in features:
                columns[name].append(features[name])
            elif len(names) == 1 and len(features) == 1:
                # One input: any feature name will do, as users rarely know Keras' generated one.
                columns[name].append(next(iter(features.values())))
            else:
                raise RequestError(
                    400, f"examples[{index}] lacks feature {name!r}; the model takes the features {names}"
                )
    return {s.name: _column(columns[s.name], s) for s in inputs}


def _column(values: list[Any], spec: TensorSpec) -> np.ndarray:
    where = f"examples (feature {spec.name!r})"
    shape = spec.example_shape()
    flat = all(not isinstance(v, list) or not any(isinstance(x, list) for x in v) for v in values)
    if flat and all(d is not None for d in shape):
        rows = [v if isinstance(v, list) else [v] for v in values]
        size = math.prod(d for d in shape if d is not None)
        array = to_array(rows, TensorSpec(spec.name, spec.dtype, (None, size)), where)
        return array.reshape((len(rows), *(d for d in shape if d is not None)))
    return to_array(values, spec, where)  # nested lists: already in the input's shape


def check(task: Task, outputs: list[TensorSpec]) -> None:
    """A 400 saying why, when the model's outputs cannot be read as classes (classify) or values (regress)."""
    if len(outputs) != 1:
        raise RequestError(
            400, f"{task} needs a model with one output; this one has {len(outputs)} ({[s.name for s in outputs]})"
        )
    spec = outputs[0]
    if spec.dtype.kind not in ("f", "i", "u", "b"):
        raise RequestError(400, f"{task}: the model's output {spec.name!r} is {_kind(spec)}, not numbers")
    _check_shape(task, spec.name, spec.shape)


def _kind(spec: TensorSpec) -> str:
    return "text" if spec.dtype.kind in ("O", "S", "U") else spec.dtype.name


def _check_shape(task: Task, name: str, shape: tuple[int | None, ...]) -> None:
    shown = "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"
    if task == "regress":
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] in (1, None))):
            raise RequestError(
                400,
                f"regress needs one value per example (an output of shape [batch] or [batch, 1]); "
                f"the model's output {name!r} has shape {shown}",
            )
    elif len(shape) != 2:
        raise RequestError(
            400,
            f"classify needs one score per class and example (an output of shape [batch, classes]); "
            f"the model's output {name!r} has shape {shown}",
        )


def result(task: Task, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The response body: classes as [label, score] pairs (labels: the class indices), or one value per
    example."""
    (name, values), *_ = outputs.items()
    _check_shape(task, name, values.shape)  # a dimension the signature left open may not fit
    if task == "regress":
        return {"result": values.reshape(-1).astype(float).tolist()}
    labels = [str(i) for i in range(values.shape[1])]
    return {"result": [list(zip(labels, row, strict=True)) for row in values.astype(float).tolist()]}
