"""Builds and compiles the Keras model a ModelSpec / TrainingSpec describe."""

from __future__ import annotations

import importlib
from typing import Any

import keras
import structlog

from keras_operator.api.training_job import ModelSpec, Schedule, TrainingSpec
from keras_trainer import fit_options, outputs, storage, transfer
from keras_trainer.errors import SpecError, TransientError, first_line, suggestion

log = structlog.get_logger("keras_trainer")


def _public_names(module: Any) -> list[str]:
    return [n for n in dir(module) if not n.startswith("_")]


def build(spec: ModelSpec, *, mixed_precision: bool = False) -> keras.Model:
    if spec.layers is not None:
        return _sequential(spec, mixed_precision)
    if spec.config is not None:
        try:
            return keras.models.model_from_json(_json(spec.config))
        except (ValueError, TypeError, KeyError) as exc:
            raise SpecError("spec.model.config", f"not a valid Keras model config: {exc}") from exc
    if spec.application is not None:
        return _application(spec, mixed_precision)
    if spec.callable is not None:
        return _callable(spec.callable)
    if spec.uri is None:  # a trainingJobRef: resolved to a uri before a model is built
        starting_model(spec)
    assert spec.uri is not None  # the API rule: exactly one source
    return load(spec.uri, "spec.model.uri")


def starting_model(spec: ModelSpec) -> tuple[ModelSpec, str | None]:
    """spec.model with a uri naming a training's output folder resolved to its newest complete run's model
    -> (the spec to build, the model it starts from; None when it starts from no saved model)."""
    if spec.training_job_ref is not None:
        raise SpecError(
            "spec.model.trainingJobRef",
            "is resolved by the operator in a cluster; to run locally, give spec.model.uri (the referenced "
            "training's output folder, or its model)",
        )
    if spec.uri is None:
        return spec, None
    try:
        uri, run = outputs.resolve(spec.uri)
    except storage.StorageError as exc:
        raise SpecError("spec.model.uri", str(exc)) from exc
    except TransientError as exc:
        raise TransientError(f"spec.model.uri: {exc}") from exc
    if run is not None:
        log.info("starting_model", output=spec.uri, run=run.run_id, model=uri, completed_at=run.completed_at)
    return spec.model_copy(update={"uri": uri}), uri


def load(uri: str, field: str) -> keras.Model:
    try:
        path = storage.fetch(uri)
        return keras.models.load_model(path, compile=False)
    except storage.StorageError as exc:
        raise SpecError(field, str(exc)) from exc
    except TransientError as exc:
        raise TransientError(f"{field}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise SpecError(field, f"cannot load a Keras model from {uri}: {exc}") from exc


def _json(config: dict[str, Any]) -> str:
    import json

    return json.dumps(config)


def _sequential(spec: ModelSpec, mixed_precision: bool) -> keras.Model:
    assert spec.layers is not None
    assert spec.input_shape is not None
    model = keras.Sequential(name="model")
    model.add(keras.Input(shape=tuple(spec.input_shape)))
    for index, layer in enumerate(spec.layers):
        field = f"spec.model.layers[{index}]"
        cls = getattr(keras.layers, layer.type, None)
        if not isinstance(cls, type) or not issubclass(cls, keras.layers.Layer):
            hint = suggestion(layer.type, _public_names(keras.layers))
            raise SpecError(f"{field}.type", f"unknown Keras layer {layer.type!r}{hint}")
        args = layer.extra_args()
        if mixed_precision and index == len(spec.layers) - 1:
            # Outputs in float16 make softmax and losses unstable; Keras' guide keeps the last layer float32.
            args.setdefault("dtype", "float32")
        try:
            instance = cls(**args)
            model.add(instance)
        except (TypeError, ValueError) as exc:
            raise SpecError(field, f"{layer.type}: {first_line(exc)}") from exc
    return model


def _application(spec: ModelSpec, mixed_precision: bool = False) -> keras.Model:
    app = spec.application
    assert app is not None
    factory = getattr(keras.applications, app.name, None)
    if factory is None or not callable(factory):
        names = [n for n in _public_names(keras.applications) if n[0].isupper()]
        raise SpecError("spec.model.application.name", f"unknown application {app.name!r}{suggestion(app.name, names)}")
    args = dict(app.args or {})
    if spec.head is not None:
        if args.get("include_top"):
            raise SpecError("spec.model.application.args.include_top", "must be false (or left out) with model.head")
        args["include_top"] = False
    try:
        model = factory(weights=app.weights, **args)
    except (TypeError, ValueError) as exc:
        raise SpecError("spec.model.application", f"{app.name}: {first_line(exc)}") from exc
    if spec.head is not None:
        model = transfer.with_head(model, spec.head, mixed_precision)
    transfer.set_trainable(model, app.trainable)
    return model


def _callable(ref: str) -> keras.Model:
    # spec.code is on the path already (usercode.activate); without it the module comes from the image.
    module_name, func_name = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError("spec.model.callable", f"cannot import {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise SpecError("spec.model.callable", f"{module_name} has no function {func_name!r}")
    model = func()
    if not isinstance(model, keras.Model):
        raise SpecError("spec.model.callable", f"{ref} returned {type(model).__name__}, not a keras.Model")
    return model


def optimizer(
    spec: TrainingSpec, learning_rate: float | Schedule | None = None, rate_field: str = "spec.training.optimizer"
) -> keras.optimizers.Optimizer:
    """spec.training.optimizer; `learning_rate` (a phase's, named by `rate_field`) replaces its own."""
    opt = spec.optimizer
    config = opt.extra_args()
    if learning_rate is None:
        learning_rate = opt.learning_rate
    if learning_rate is not None:
        config["learning_rate"] = fit_options.learning_rate(learning_rate, f"{rate_field}.learningRate")
    # Keras takes one of them (the API allows at most one): gradient clipping.
    for name, value in (
        ("clipnorm", opt.clip_norm),
        ("clipvalue", opt.clip_value),
        ("global_clipnorm", opt.global_clip_norm),
    ):
        if value is not None:
            config[name] = value
    try:
        return keras.optimizers.get({"class_name": opt.name, "config": config})
    except (ValueError, TypeError) as exc:
        if "Could not interpret" in str(exc) or "Unknown" in str(exc):
            names = [n.lower() for n in _public_names(keras.optimizers) if n[0].isupper()]
            return_msg = f"unknown optimizer {opt.name!r}{suggestion(opt.name.lower(), names)}"
            raise SpecError("spec.training.optimizer.name", return_msg) from exc
        raise SpecError("spec.training.optimizer", first_line(exc)) from exc


def registered(name: str, field: str, what: str) -> Any:
    """The object spec.code registered as "package>name" (keras.losses.get and keras.metrics.get do not
    look such names up); a class is instantiated with its defaults."""
    found = keras.saving.get_registered_object(name)
    if found is None:
        raise SpecError(
            field,
            f"no {what} is registered as {name!r}: is it decorated with keras.saving.register_keras_serializable "
            "in a module of spec.code?",
        )
    return found() if isinstance(found, type) else found


def loss(spec: TrainingSpec) -> Any:
    value = spec.loss
    if isinstance(value, str) and ">" in value:
        return registered(value, "spec.training.loss", "loss")
    try:
        if isinstance(value, str):
            return keras.losses.get(value)
        if "name" not in value:
            raise SpecError("spec.training.loss", "an object loss needs a name, e.g. {name: Huber, args: {delta: 1}}")
        return keras.losses.get({"class_name": value["name"], "config": value.get("args") or {}})
    except (ValueError, TypeError) as exc:
        raise SpecError("spec.training.loss", f"unknown or invalid loss: {first_line(exc)}") from exc


def metrics(spec: TrainingSpec) -> list[Any]:
    """The names as written: Keras resolves them itself and logs each under the name it was given
    (`mae` stays `mae`), which is what the status shows. Checked here so a typo names its field. A name
    registered by spec.code ("package>Name") becomes the object, logged under its own name."""
    resolved: list[Any] = []
    for index, name in enumerate(spec.metrics):
        field = f"spec.training.metrics[{index}]"
        if ">" in name:
            resolved.append(registered(name, field, "metric"))
            continue
        resolved.append(name)
        if name in ("accuracy", "acc"):
            continue  # Keras picks the right accuracy for the loss
        try:
            keras.metrics.get(name)
        except (ValueError, TypeError) as exc:
            raise SpecError(field, f"unknown metric {name!r}") from exc
    return resolved
