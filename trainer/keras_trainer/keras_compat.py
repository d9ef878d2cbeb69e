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
from collections.abc import Iterator
from typing import Any

import keras

from keras_trainer import distribute

# (major, minor) of the Keras releases the shims were checked against; constraints.txt pins one of them.
KERAS_VERSIONS = ((3, 15),)

# What the shims touch: (owner, attribute, what for). The test checks each still exists.
PRIVATE_MEMBERS = (
    ("keras.callbacks.BackupAndRestore", "_save_model", "RestoreOnly and SaveAlone override it"),
    ("keras.callbacks.BackupAndRestore", "_load_model", "sets model._initial_epoch on resume"),
    ("keras.Model", "_initial_epoch", "initial_epoch() reads it"),
    ("keras.src.backend.jax.distribution_lib", "initialize", "jax_initialize_options() reaches jax through it"),
)


def initial_epoch(model: keras.Model | None) -> int:
    """The epoch fit starts from: past 0 when BackupAndRestore resumed a checkpoint.

    Keras 3.0-3.15: BackupAndRestore._load_model sets `model._initial_epoch` (the trainer's `fit` reads
    it and ignores its own `initial_epoch` argument); no public API says where a resumed fit starts.
    """
    return int(getattr(model, "_initial_epoch", 0) or 0)


class RestoreOnly(keras.callbacks.BackupAndRestore):
    """A reader's BackupAndRestore: resumes from the copied checkpoint, saves none (worker 0 does).

    Keras 3.0-3.15: `_save_model` is the one method that writes a checkpoint (on_epoch_end and
    on_train_batch_end call it); the callback has no public switch to restore without saving.
    """

    def _save_model(self) -> None:
        pass


class SaveAlone(keras.callbacks.BackupAndRestore):
    """Worker 0's BackupAndRestore, when other workers train too: it saves alone, out of the
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
