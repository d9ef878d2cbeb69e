"""Transfer learning: a head on a keras.applications model, which layers train, and training in phases.

The base is the application when model.head is set (the head always trains), else the whole model. A
trainable count N lets the top N layers of the base train (its input layer aside) and freezes the rest.

Phases (spec.training.phases) run one fit each, over their own epochs of one count: phase 2 of [3, 2]
runs epochs 4 and 5, so progress, checkpoints and the status count across phases. Between phases the
model is compiled again (Keras reads `trainable` at compile time) with the phase's learning rate. A
resumed run starts in the phase its checkpoint's epoch falls in: the checkpoint says the epoch, the phases
say what trains then.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import structlog

from keras_operator.api.training_job import Layer, Schedule, TrainingSpec
from keras_trainer.errors import SpecError, first_line

BASE_NAME = "base"
log = structlog.get_logger("keras_trainer")


def with_head(base: keras.Model, head: list[Layer], mixed_precision: bool) -> keras.Model:
    """`base` (built without its top) called as one layer, in inference mode (its BatchNormalization
    statistics stay those it was trained with, Keras' advice for fine-tuning), then the head's layers."""
    base.name = BASE_NAME  # how base_of finds it again, in this process or in the saved model
    inputs = keras.Input(shape=base.input_shape[1:])
    x = base(inputs, training=False)
    for index, layer in enumerate(head):
        field = f"spec.model.head[{index}]"
        cls = getattr(keras.layers, layer.type, None)
        if not isinstance(cls, type) or not issubclass(cls, keras.layers.Layer):
            raise SpecError(f"{field}.type", f"unknown Keras layer {layer.type!r}")
        args = layer.extra_args()
        if mixed_precision and index == len(head) - 1:
            args.setdefault("dtype", "float32")  # as for model.layers: float32 outputs
        try:
            x = cls(**args)(x)
        except (TypeError, ValueError) as exc:
            raise SpecError(field, f"{layer.type}: {first_line(exc)}") from exc
    return keras.Model(inputs, x, name="model")


def base_of(model: keras.Model) -> keras.Model:
    """The part `trainable` speaks of: the application under a head, else the whole model."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name == BASE_NAME:
            return layer
    return model


def set_trainable(model: keras.Model, trainable: bool | int) -> None:
    """true: every layer of the base trains; false: none; N: its top N."""
    base = base_of(model)
    model.trainable = True  # a head always trains
    layers = [layer for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]
    if trainable is True or trainable is False:
        base.trainable = trainable
        return
    base.trainable = True
    for index, layer in enumerate(layers):
        layer.trainable = index >= len(layers) - trainable


@dataclass(frozen=True)
class Phase:
    index: int
    start: int  # epochs done when it begins
    end: int  # epochs done when it ends
    trainable: bool | int
    learning_rate: float | Schedule | None


def plan(training: TrainingSpec) -> list[Phase]:
    phases, start = [], 0
    for index, phase in enumerate(training.phases or []):
        phases.append(Phase(index, start, start + phase.epochs, phase.trainable, phase.learning_rate))
        start += phase.epochs
    return phases


def checkpoint_epoch(folder: Path) -> int:
    """Epochs done in the checkpoint BackupAndRestore would resume in `folder` (its metadata, else the
    previous one it keeps beside); 0 when there is none."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((folder / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return 0


def fit(
    model: keras.Model,
    fit_args: dict[str, Any],
    training: TrainingSpec,
    compile_phase: Callable[[Phase], None],
    checkpoints: Path | None,
    fit_epochs: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """model.fit, once per phase from the one the checkpoint in `checkpoints` is in (one fit without phases).
    `compile_phase` compiles the model for a phase after its trainable layers are set; `fit_epochs` runs
    each fit (default model.fit: the trainer's also resumes mid-epoch)."""
    run = fit_epochs or (lambda args: model.fit(**args))
    phases = plan(training)
    if not phases:
        run(fit_args)
        return
    done = checkpoint_epoch(checkpoints) if checkpoints is not None else 0
    for phase in phases:
        if phase.end <= done and phase is not phases[-1]:
            continue  # finished before the restart
        set_trainable(model, phase.trainable)
        compile_phase(phase)
        log.info(
            "phase_started",
            phase=phase.index + 1,
            phases=len(phases),
            epochs=f"{phase.start + 1}-{phase.end}",
            trainable=phase.trainable,
        )
        last = phase is phases[-1]
        for callback in fit_args["callbacks"]:
            if isinstance(callback, keras.callbacks.BackupAndRestore):
                # The next phase resumes from this one's last checkpoint; only the last one's end removes it.
                callback.delete_checkpoint = last
        run({**fit_args, "initial_epoch": phase.start, "epochs": phase.end})
