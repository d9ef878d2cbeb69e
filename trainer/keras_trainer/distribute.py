"""Every device a pod was given: one model replica per device, each batch split between them.

TensorFlow: `tf.distribute.MirroredStrategy` over the visible GPUs (Keras 3 supports it on one node;
not MultiWorkerMirroredStrategy, keras-team/keras#20585). JAX: `keras.distribution.DataParallel` over
JAX's devices. `training.batchSize` stays the global batch: each of N devices computes on
batchSize / N examples per step and the gradients are combined, so the result matches one device with
the same batch. Without GPUs (or with one) nothing changes. torch: one device in this version.

KERAS_TRAINER_CPU_DEVICES=N splits the CPU into N devices (TensorFlow logical devices, JAX host
devices) and trains on all of them: the same code path as N GPUs, for tests and benchmarks on
machines without accelerators.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

CPU_DEVICES_ENV = "KERAS_TRAINER_CPU_DEVICES"


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...]
    strategy: Any = None  # a tf.distribute strategy or a keras.distribution, when several devices train

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the model is made, compiled and fitted for the devices to share it."""
        if self.strategy is None:
            yield
        else:
            with self.strategy.scope():
                yield


def cpu_devices() -> int:
    return int(os.environ.get(CPU_DEVICES_ENV) or 0)


def prepare(backend: str) -> None:
    """What must be set before the backend loads: JAX fixes its host devices at import."""
    if backend == "jax" and cpu_devices() > 1:
        flag = f"--xla_force_host_platform_device_count={cpu_devices()}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def place(backend: str) -> Placement:
    if backend == "jax":
        return _place_jax()
    if backend != "tensorflow":
        return Placement(("default",))
    import tensorflow as tf

    split = cpu_devices()
    if split > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        # Settable once per process, before TensorFlow first runs an op; a second training in the same
        # process (kerasop, tests) uses the devices the first one made.
        with contextlib.suppress(RuntimeError):
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * split)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:split]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return Placement(tuple(devices), tf.distribute.MirroredStrategy(devices))
    return Placement(tuple(devices) or ("/cpu:0",))


def _place_jax() -> Placement:
    import jax
    import keras

    devices = jax.devices("cpu")[: cpu_devices()] if cpu_devices() > 1 else jax.devices()
    names = tuple(str(d) for d in devices)
    if len(devices) > 1:
        return Placement(names, keras.distribution.DataParallel(devices=devices))
    return Placement(names)
