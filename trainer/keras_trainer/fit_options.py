"""The training knobs a spec names from Keras' catalogue: learning-rate schedules, callbacks, class weights.

Each is checked where it is made, and a mistake becomes a SpecError naming its field.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import keras
from pydantic.alias_generators import to_snake

from keras_operator.api.training_job import (
    CALLBACK_PATH_ARGS,
    CALLBACKS_DIR,
    REFUSED_CALLBACKS,
    Callback,
    Schedule,
)
from keras_trainer.errors import SpecError, first_line, suggestion


def _snake(args: dict[str, Any] | None) -> dict[str, Any]:
    """Keras' arguments are snake_case; a spec may write them in camelCase, as the rest of it."""
    return {to_snake(k): v for k, v in (args or {}).items()}


def _public_classes(module: Any, base: type) -> list[str]:
    return [
        n
        for n in dir(module)
        if not n.startswith("_")
        and isinstance(getattr(module, n), type)
        and issubclass(getattr(module, n), base)
        and getattr(module, n) is not base
    ]


def learning_rate(value: float | Schedule, field: str) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """A number as it is; a schedule {name, args} built from keras.optimizers.schedules."""
    if not isinstance(value, Schedule):
        return value
    module, base = keras.optimizers.schedules, keras.optimizers.schedules.LearningRateSchedule
    cls = getattr(module, value.name, None)
    if not isinstance(cls, type) or not issubclass(cls, base) or cls is base:
        names = _public_classes(module, base)
        raise SpecError(
            f"{field}.name", f"unknown learning-rate schedule {value.name!r}{suggestion(value.name, names)}"
        )
    try:
        return cls(**_snake(value.args))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{field}.args", f"{value.name}: {first_line(exc)}") from exc


def class_weight(weights: dict[str, float] | None) -> dict[int, float] | None:
    return {int(k): float(v) for k, v in weights.items()} if weights else None


def _path(name: Any, default: str, field: str, folder: Path) -> str:
    """A file name inside the run's callbacks folder: never outside it, whatever the spec says."""
    value = default if name is None else name
    clean = posixpath.normpath(str(value))
    if not isinstance(value, str) or not value or clean.startswith(("/", "..")) or "://" in value:
        raise SpecError(field, f"{value!r}: give a file name, which goes into the run's folder ({CALLBACKS_DIR}/)")
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / clean)


def callbacks(specs: list[Callback] | None, run_folder: Path) -> list[keras.callbacks.Callback]:
    """spec.training.callbacks, built; path arguments point into RUN_FOLDER/callbacks/."""
    made: list[keras.callbacks.Callback] = []
    for index, spec in enumerate(specs or []):
        field = f"spec.training.callbacks[{index}]"
        if spec.name in REFUSED_CALLBACKS:
            raise SpecError(f"{field}.name", f"{spec.name} cannot be given here: {REFUSED_CALLBACKS[spec.name]}")
        cls = getattr(keras.callbacks, spec.name, None)
        if not isinstance(cls, type) or not issubclass(cls, keras.callbacks.Callback):
            names = [
                n for n in _public_classes(keras.callbacks, keras.callbacks.Callback) if n not in REFUSED_CALLBACKS
            ]
            raise SpecError(f"{field}.name", f"unknown callback {spec.name!r}{suggestion(spec.name, names)}")
        args = _snake(spec.args)
        if spec.name in CALLBACK_PATH_ARGS:
            arg, default = CALLBACK_PATH_ARGS[spec.name]
            args[arg] = _path(args.get(arg), default, f"{field}.args.{arg}", run_folder / CALLBACKS_DIR)
        if spec.name == "CSVLogger":
            args.setdefault("append", True)  # one file across phases and resumed attempts of the run
        try:
            made.append(cls(**args))
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{field}.args", f"{spec.name}: {first_line(exc)}") from exc
    return made
