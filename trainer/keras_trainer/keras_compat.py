"""Every use of a Keras private member (and every patch around Keras) the trainer makes, in one place.

Each shim leans on something Keras does not promise to keep. They were written against Keras 3.15
(KERAS_VERSIONS); tests/trainer/test_keras_compat.py fails when the installed Keras is outside that range
or when a private member named in PRIVATE_MEMBERS is gone, so an upgrade is checked here first rather
than found by a training that silently resumes at epoch 0 or saves from every worker.

Imports keras: the trainer's modules that must run before the backend loads (distribute.prepare)
import this one only inside functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras

from keras_operator.api.report import CheckpointReport
from keras_trainer import distribute

# (major, minor) of the Keras releases the shims were checked against; constraints.txt pins one of them.
KERAS_VERSIONS = ((3, 15),)

# What the shims touch: (owner, attribute, what for). The test checks each still exists.
PRIVATE_MEMBERS = (
    ("keras.callbacks.BackupAndRestore", "_save_model", "RestoreOnly and SaveAlone override it"),
    ("keras.callbacks.BackupAndRestore", "_load_model", "sets model._initial_epoch on resume"),
    ("keras.Model", "_initial_epoch", "initial_epoch() reads it, forget_initial_epoch() clears it"),
    ("keras.callbacks.BackupAndRestore", "_current_epoch", "Checkpointer sets it when an epoch begins"),
    ("keras.callbacks.BackupAndRestore", "_training_metadata_path", "Checkpointer adds the step to it"),
    ("keras.src.backend.jax.distribution_lib", "initialize", "jax_initialize_options() reaches jax through it"),
)


def initial_epoch(model: keras.Model | None) -> int:
    """The epoch fit starts from: past 0 when BackupAndRestore resumed a checkpoint.

    Keras 3.0-3.15: BackupAndRestore._load_model sets `model._initial_epoch` (the trainer's `fit` reads
    it and ignores its own `initial_epoch` argument); no public API says where a resumed fit starts.
    """
    return int(getattr(model, "_initial_epoch", 0) or 0)


def forget_initial_epoch(model: keras.Model) -> None:
    """The next fit starts at its own `initial_epoch`: fit prefers `model._initial_epoch`, which a
    restore set, to its argument (Keras 3.15 `fit`: `self._initial_epoch or initial_epoch`)."""
    model._initial_epoch = None


class Stopped(Exception):
    """Training stopped on SIGTERM, after the checkpoint (if this worker writes one) was saved."""

    def __init__(self, checkpoint: CheckpointReport | None) -> None:
        super().__init__("stopped by SIGTERM")
        self.checkpoint = checkpoint


class Checkpointer(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that saves at every epoch end, every `steps` steps or `minutes` minutes within
    epochs, and at the first step end after `stop` is set (SIGTERM), then raises Stopped. It records the
    step within the epoch beside Keras' own training metadata, and calls `on_save` after each save (the
    upload to a remote output).

    Keras 3.15, why this is not BackupAndRestore(save_freq=N): its metadata records the epoch and a batch
    index that reads 0 both at an epoch end and after the first batch, a restore only sets the epoch
    (the epoch then runs again from its first batch, over weights that already saw part of it), and a
    batch-level save in a resumed fit records epoch 0 (`_current_epoch` is only set at an epoch end).
    So: `_current_epoch` is set when an epoch begins, the metadata gets a `step` (steps done of epoch
    `epoch`), and the trainer skips those steps itself (checkpointing.resume).
    """

    def __init__(
        self,
        backup_dir: str,
        *,
        steps: int | None = None,
        minutes: float | None = None,
        stop: threading.Event | None = None,
        on_save: Callable[[CheckpointReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True)
        self.steps, self.minutes, self.stop, self.on_save, self.clock = steps, minutes, stop, on_save, clock
        self.step_offset = 0  # steps of the resumed epoch done before this fit (checkpointing.resume)
        self.restored = False
        self.last: CheckpointReport | None = None
        self._step = 0  # steps done of the current epoch
        self._since_save = 0
        self._saved_at = clock()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if not self.restored:  # a resumed epoch's own fit restored already: the next fit must not rewind
            super().on_train_begin(logs)
            self.restored = True
        self._saved_at = self.clock()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch
        self._step = self.step_offset
        self.step_offset = 0
        if self.stop is not None and self.stop.is_set():
            # It came during the last epoch's validation or end: saved again as what SIGTERM saved, so a
            # resume knows it lost nothing.
            self._save("signal")
            raise Stopped(self.last)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1
        self._since_save += 1
        if self.stop is not None and self.stop.is_set():
            self._save("signal")
            raise Stopped(self.last)
        if self.steps is not None and self._since_save >= self.steps:
            self._save("steps")
        elif self.minutes is not None and self.clock() - self._saved_at >= self.minutes * 60:
            self._save("minutes")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._step = 0
        self._save("epoch")

    def _save(self, trigger: str) -> None:
        started = self.clock()
        record = CheckpointReport(epoch=self._current_epoch, step=self._step, trigger=trigger)
        if self._write(record):
            if self.on_save is not None:
                self.on_save(record)
            record.seconds = round(self.clock() - started, 3)
            self.last = record
        self._since_save = 0
        self._saved_at = self.clock()

    def _write(self, record: CheckpointReport) -> bool:
        """Save weights and metadata; False when this worker saves none."""
        self._save_model()
        path = Path(self._training_metadata_path)
        metadata = json.loads(path.read_text())
        metadata.update(step=record.step, trigger=record.trigger)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(metadata))
        partial.replace(path)
        return True


def saved_position(folder: Path) -> tuple[int, int, str] | None:
    """(epochs done, steps of the next epoch done, what saved it) of the checkpoint in `folder`, or None.

    Reads the metadata file BackupAndRestore writes (Keras 3.15 `training_metadata.json`); a checkpoint
    of a Keras BackupAndRestore alone has no `step`: it resumes at its epoch's start, as Keras would."""
    try:
        metadata = json.loads((folder / "training_metadata.json").read_text())
        return int(metadata["epoch"]), int(metadata.get("step", 0)), str(metadata.get("trigger", "epoch"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class RestoreOnly(Checkpointer):
    """A reader's Checkpointer: resumes from the copied checkpoint, saves none (worker 0 does).

    Keras 3.0-3.15: `_save_model` is the one method that writes a checkpoint; the callback has no public
    switch to restore without saving.
    """

    def _write(self, record: CheckpointReport) -> bool:
        return False


class SaveAlone(Checkpointer):
    """Worker 0's Checkpointer, when other workers train too: it saves alone, out of the
    distribution's reach (distribute.undistributed).

    Keras 3.0-3.15: `_save_model` as in RestoreOnly; wrapping it is the only way to change the
    distribution around the save alone, not around the rest of the epoch's end.
    """

    def _save_model(self) -> None:
        with distribute.undistributed():
            super()._save_model()


@contextlib.contextmanager
def jax_initialize_options(**options: Any) -> Iterator[None]:
    """Within: `jax.distributed.initialize` takes `options` too (its timeouts), when keras calls it.

    Keras 3.15: keras.distribution.initialize() (keras.src.backend.jax.distribution_lib.initialize)
    passes only the coordinator address, process count and id on to jax.distributed.initialize, which
    it looks up as an attribute at call time; so the function is replaced for the length of the call.
    """
    import jax

    original = jax.distributed.initialize
    jax.distributed.initialize = functools.partial(original, **options)
    try:
        yield
    finally:
        jax.distributed.initialize = original
