"""Checkpoints within epochs and on SIGTERM, and resuming at the saved step (output.checkpoints).

What a resume skips: a checkpoint records the epochs done and the steps done of the next epoch. The
resumed training runs that epoch's remaining steps as a fit of their own, then the remaining epochs:

- arrays without shuffling (data.shuffle false): exactly the examples the interrupted epoch had not
  reached;
- shuffled arrays: as many examples as the epoch had left, drawn at random (seeded by training.seed
  and the epoch): Keras' own shuffle order of the interrupted epoch is not recorded, so some examples
  of that one epoch may be seen twice and others not at all;
- datasets (tfrecord, images): the first steps of the epoch are skipped, exactly those done when the
  dataset's order is the same on every pass.

Callbacks that keep state across epochs (early stopping's patience) start afresh at the resumed
epoch's end, as they do after any restart.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import structlog

from keras_operator.api.report import CheckpointReport, ResumeReport
from keras_operator.api.training_job import CHECKPOINT_DIR, Checkpoints
from keras_trainer import data as data_mod
from keras_trainer import keras_compat, runs

log = structlog.get_logger("keras_trainer")


def checkpointer(checkpoints: Checkpoints, workspace: runs.Workspace, workers: int) -> keras_compat.Checkpointer:
    """The callback that saves and restores this run's checkpoints; every save is pushed to a remote
    output at once, so what a preempted pod saved survives it."""
    folder = str(workspace.restore_checkpoints())
    kind = keras_compat.Checkpointer
    if workers > 1:
        kind = keras_compat.SaveAlone if workspace.writer else keras_compat.RestoreOnly
    every = checkpoints.every

    def pushed(record: CheckpointReport) -> None:
        workspace.push(CHECKPOINT_DIR)
        if record.trigger != "epoch":
            log.info("checkpoint_saved", epoch=record.epoch, step=record.step, trigger=record.trigger)

    return kind(
        folder,
        steps=every.steps if every else None,
        minutes=every.minutes if every else None,
        stop=threading.Event(),
        on_save=pushed,
    )


@contextlib.contextmanager
def stop_on_sigterm(stop: threading.Event | None) -> Iterator[None]:
    """Within: SIGTERM sets `stop` (the checkpointer saves at the next step end and stops) instead of
    ending the process at once. Signals reach only the main thread; elsewhere (tests) nothing changes."""
    if stop is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_point(checkpoints: keras_compat.Checkpointer | None) -> ResumeReport | None:
    """Where the checkpoint the callback is about to restore leaves the training, None without one."""
    if checkpoints is None:
        return None
    position = keras_compat.saved_position(Path(checkpoints.backup_dir))
    if position is None or position[:2] == (0, 0):
        return None
    epoch, step, trigger = position
    # Saved on SIGTERM at a step end, the last step done is in it; after any other save, what the pod did
    # until it was killed is not known here.
    return ResumeReport(epoch=epoch, step=step, trigger=trigger, steps_lost=0 if trigger == "signal" else None)


def rest_of_epoch(
    train: data_mod.Data,
    validation_split: float | None,
    done: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    epoch: int,
) -> tuple[data_mod.Data, data_mod.Data | None]:
    """(the training data of the resumed epoch's remaining steps, the validation data cut from the same
    arrays as Keras cuts validationSplit, or None)."""
    if train.x is None:
        return data_mod.Data(dataset=train.dataset.skip(done)), None
    x, y = train.x, train.y
    held: data_mod.Data | None = None
    if validation_split:
        cut = int(np.floor(len(x) * (1.0 - validation_split)))  # as keras' train_validation_split
        held = data_mod.Data(x=x[cut:], y=y[cut:] if y is not None else None, size=len(x) - cut)
        x, y = x[:cut], y[:cut] if y is not None else None
    left = max(len(x) - done * batch_size, 0)
    if shuffle:
        rows = np.random.default_rng([seed or 0, epoch]).permutation(len(x))[:left]
    else:
        rows = np.arange(len(x) - left, len(x))
    return data_mod.Data(x=x[rows], y=y[rows] if y is not None else None, size=left), held


def fit(
    model: keras.Model,
    fit_args: dict[str, Any],
    checkpoints: keras_compat.Checkpointer | None,
    resumed: ResumeReport | None,
    rest_args: dict[str, Any] | None,
) -> None:
    """model.fit, in two when resuming mid-epoch: the rest of the resumed epoch (`rest_args`: fit's
    arguments for its remaining data), then the epochs after it."""
    if checkpoints is None or resumed is None or not resumed.step or rest_args is None:
        model.fit(**fit_args)
        return
    epochs = fit_args["epochs"]
    last = resumed.epoch + 1 >= epochs
    # False in a phase of training.phases but the last: the next phase resumes from its last checkpoint.
    final = checkpoints.delete_checkpoint
    checkpoints.step_offset = resumed.step
    checkpoints.delete_checkpoint = last and final  # the epoch-end checkpoint is where the second fit starts
    model.fit(**{**rest_args, "epochs": resumed.epoch + 1, "initial_epoch": resumed.epoch})
    checkpoints.delete_checkpoint = final
    if last:
        return
    if model.stop_training:  # early stopping ended the training at the resumed epoch's end
        if final:
            shutil.rmtree(checkpoints.backup_dir, ignore_errors=True)
        return
    keras_compat.forget_initial_epoch(model)
    model.fit(**{**fit_args, "initial_epoch": resumed.epoch + 1})
