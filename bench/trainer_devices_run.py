"""One timed training over N devices, in its own process: the generic trainer, or the hand-written
Keras script of `trainer_run.py` given the same strategy by hand.

Usage: python bench/trainer_devices_run.py generic JOB.yaml OUT  |  handwritten WORKLOAD JOB.yaml OUT

The backend is the job file's `spec.backend`. The devices are the parent's choice, through the
environment both sides read: KERAS_TRAINER_CPU_DEVICES=N splits the CPU into N devices (the trainer's
own switch; the script makes the same split itself), and without it both train on every visible GPU
(the parent narrows CUDA_VISIBLE_DEVICES to N of them). Prints one JSON object: trainer_run.py's
(first step, per-epoch wall time and step rates) plus `devices`, how many devices the training used,
so a run that silently fell back to one device is caught by the parent rather than measured.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_run import Clock, handwritten  # importing it starts the launch clock (BENCH_LAUNCHED)

CPU_DEVICES_ENV = "KERAS_TRAINER_CPU_DEVICES"  # the trainer's name; the script honours it too


def backend_of(config: str) -> str:
    with open(config) as f:
        return str(yaml.safe_load(f)["spec"].get("backend", "tensorflow"))


def generic(config: str, out: str) -> dict[str, Any]:
    """What `keras-trainer train` does: choose the backend (which splits the CPU when asked) before
    Keras loads, then train, with a reporter that also keeps the time and the device count."""
    from keras_trainer import backend as backends

    backends.prepare(backend_of(config))
    from keras_operator.api.parse import parse, read_documents
    from keras_trainer import train as training
    from keras_trainer.reporting import PodReporter

    clock = Clock()
    devices: list[int] = []
    job = parse(read_documents(config)[0])

    class TimingReporter(PodReporter):
        def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
            super().begin(epochs=epochs, initial_epoch=initial_epoch, steps=steps)
            clock.epoch_begin()

        def batch(self, step: int) -> None:
            clock.step(step)

        def epoch(self, report: Any) -> None:
            clock.epoch_end()
            devices.append(report.devices)
            super().epoch(report)
            clock.epoch_begin()

    result = training.run(job, out, TimingReporter(termination_path=str(Path(out) / "termination")))
    if result.phase != "Succeeded":
        raise SystemExit(f"the generic trainer failed: {result.message}")
    return {**clock.report(), "devices": result.devices or (devices[-1] if devices else 1)}


def handwritten_distributed(workload: str, config: str, out: str) -> dict[str, Any]:
    """The hand-written script with what the Keras guides add for several devices, and nothing of the
    trainer's code: TensorFlow, MirroredStrategy with the model made, compiled and fitted in its scope;
    JAX, a DataParallel distribution set before the model is made."""
    backend = backend_of(config)
    split = int(os.environ.get(CPU_DEVICES_ENV) or 0)
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        if split > 1:
            # JAX fixes its host devices when it starts: the flag must be set before the import.
            flag = f"--xla_force_host_platform_device_count={split}"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        import jax
        import keras

        devices = jax.devices("cpu")[:split] if split > 1 else jax.devices()
        if len(devices) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return {**handwritten(workload, config, out), "devices": len(devices)}
    if backend != "tensorflow":
        raise SystemExit(f"no hand-written several-device script for the {backend} backend")
    import tensorflow as tf

    if split > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * split)
        names = [d.name for d in tf.config.list_logical_devices("CPU")][:split]
    else:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(names) <= 1:  # one device: the plain script, as an engineer with one GPU would run it
        return {**handwritten(workload, config, out), "devices": 1}
    strategy = tf.distribute.MirroredStrategy(names)
    with strategy.scope():
        report = handwritten(workload, config, out)
    return {**report, "devices": int(strategy.num_replicas_in_sync)}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    mode, *rest = sys.argv[1:]
    Path(rest[-1]).mkdir(parents=True, exist_ok=True)
    report = generic(*rest) if mode == "generic" else handwritten_distributed(*rest)
    print("BENCH " + json.dumps(report), flush=True)
