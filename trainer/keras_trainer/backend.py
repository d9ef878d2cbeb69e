"""Choosing the Keras backend: before anything imports keras, and without the C++ start-up noise.

TensorFlow's native libraries log through absl before any Python logging exists (`oneDNN custom
operations are on`, `Could not find cuda drivers`, `failed call to cuInit` on a machine without a
GPU): a user reads them as errors. They are captured while TensorFlow loads and enumerates its
devices, and shown only if that fails, or when TF_CPP_MIN_LOG_LEVEL=0 asks for everything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator

from keras_trainer import distribute
from keras_trainer.errors import SpecError

BACKENDS = ("tensorflow", "jax", "torch")


def installed() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def prepare(backend: str, field: str = "spec.backend") -> None:
    """Keras reads KERAS_BACKEND once, at its first import: this must run before anything imports keras.
    A backend this image lacks is the spec's mistake (exit code 2, not a retried traceback)."""
    if importlib.util.find_spec(backend) is None:
        raise SpecError(
            field,
            f"the {backend} backend is not installed in this image (installed: {', '.join(installed()) or 'none'}); "
            f"use one of those, or an image built with the {backend} extra",
        )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    distribute.prepare(backend)
    if importlib.util.find_spec("tensorflow") is not None and os.environ["TF_CPP_MIN_LOG_LEVEL"] != "0":
        # Keras imports TensorFlow on every backend (for tf.data), so load it quietly whichever is chosen.
        with _native_stderr_captured():
            import tensorflow as tf

            tf.config.list_physical_devices()  # the first device query is where cuInit complains


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[None]:
    """Point file descriptor 2 (where C++ writes) at a temporary file; replay it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
