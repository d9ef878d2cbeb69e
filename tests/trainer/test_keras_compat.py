"""The trainer's Keras shims (keras_trainer.keras_compat) still hold on the installed Keras.

They use Keras private members; an upgrade that moves one would not fail loudly on its own (a resumed
run would start at epoch 0, a reader worker would write checkpoints). This fails first: when Keras is
outside the versions the shims were checked against, or when a member they touch is gone.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re

import pytest

from helpers.lazy import lazy
from helpers.manifests import ROOT

# Importing Keras loads TensorFlow: the whole module is of the slow tier, and imports it on first use.
pytestmark = pytest.mark.slow
keras = lazy("keras")
keras_compat = lazy("keras_trainer.keras_compat")


def minor(version: str) -> tuple[int, int]:
    major, minor_, *_ = version.split(".")
    return int(major), int(minor_)


def test_the_installed_keras_is_one_the_shims_were_written_for() -> None:
    assert minor(importlib.metadata.version("keras")) in keras_compat.KERAS_VERSIONS, (
        f"keras {importlib.metadata.version('keras')}: check every shim in keras_trainer/keras_compat.py against it, "
        "then add its version to KERAS_VERSIONS"
    )


def test_the_pinned_keras_is_one_the_shims_were_written_for() -> None:
    pin = re.search(r"^keras==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pin is not None, "constraints.txt pins no keras"
    assert minor(pin.group(1)) in keras_compat.KERAS_VERSIONS
    assert importlib.metadata.version("keras") == pin.group(1), "the tests run the pinned keras"


def owner(path: str) -> object:
    """A module or an attribute of one, by dotted path."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def test_each_private_member_the_shims_touch_exists() -> None:
    gone = []
    for path, member, why in keras_compat.PRIVATE_MEMBERS:
        if path.startswith("keras.src.backend.jax") and importlib.util.find_spec("jax") is None:
            continue
        found = owner(path)
        if member == "_initial_epoch":  # an instance attribute, set in the trainer's __init__
            found = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        elif path == "keras.callbacks.BackupAndRestore" and not hasattr(found, member):
            found = found("unused-folder")  # instance attributes, set in its __init__
        if not hasattr(found, member):
            gone.append(f"{path}.{member} is gone; {why}")
    assert keras_compat.PRIVATE_MEMBERS
    assert not gone, gone


def test_backup_and_restore_still_saves_and_resumes_through_them() -> None:
    source = inspect.getsource(keras.callbacks.BackupAndRestore)
    assert "self._save_model()" in inspect.getsource(keras.callbacks.BackupAndRestore.on_epoch_end)
    assert "self.model._initial_epoch = " in source
    fit = inspect.getsource(type(keras.Sequential()).fit)
    assert "self._initial_epoch" in fit, "fit no longer starts from the epoch BackupAndRestore restored"


def test_initial_epoch_reads_what_a_resume_set() -> None:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    assert keras_compat.initial_epoch(model) == 0
    model._initial_epoch = 3  # what BackupAndRestore._load_model does
    assert keras_compat.initial_epoch(model) == 3
    assert keras_compat.initial_epoch(None) == 0


def test_keras_initializes_jax_through_the_attribute_the_shim_replaces() -> None:
    jax = pytest.importorskip("jax")
    from keras.src.backend.jax import distribution_lib

    assert "jax.distributed.initialize(" in inspect.getsource(distribution_lib.initialize)
    accepted = inspect.signature(jax.distributed.initialize).parameters
    for option in ("initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
        assert option in accepted
    original = jax.distributed.initialize
    with keras_compat.jax_initialize_options(initialization_timeout=7):
        assert jax.distributed.initialize.keywords == {"initialization_timeout": 7}  # type: ignore[attr-defined]
    assert jax.distributed.initialize is original
