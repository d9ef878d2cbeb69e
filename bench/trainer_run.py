"""One timed training, in its own process: the generic trainer, or the same training written by hand.

Usage: python bench/trainer_run.py generic JOB.yaml OUT  |  handwritten WORKLOAD JOB.yaml OUT
The parent passes BENCH_LAUNCHED (its time.time() just before starting this process), so
time-to-first-step counts the interpreter, the imports, loading the data and building the model.
Prints one JSON object: first_step_s, and per epoch its wall time (epoch_s, with validation and
checkpoints) and its steady step rate (steps_per_s, first to last step: the training loop alone).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

LAUNCHED = float(os.environ.get("BENCH_LAUNCHED") or time.time())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class Clock:
    """Times the first step, every step and every epoch; shared by both ways of training."""

    def __init__(self) -> None:
        self.first_step: float | None = None
        self.epoch_started = 0.0
        self.epochs: list[float] = []
        self.step_rates: list[float] = []  # per epoch: steps/s between its first and last step
        self.cpu_rates: list[float] = []  # the same per second of this process's CPU time (all threads)
        self._batch_ends: list[tuple[float, float]] = []

    def step(self, step: int) -> None:
        if self.first_step is None:
            self.first_step = time.time() - LAUNCHED
        self._batch_ends.append((time.perf_counter(), time.process_time()))

    def epoch_begin(self) -> None:
        self.epoch_started = time.perf_counter()
        self._batch_ends = []

    def epoch_end(self) -> None:
        self.epochs.append(time.perf_counter() - self.epoch_started)
        ends = self._batch_ends
        if len(ends) > 1:
            (wall0, cpu0), (wall1, cpu1) = ends[0], ends[-1]
            self.step_rates.append((len(ends) - 1) / (wall1 - wall0))
            self.cpu_rates.append((len(ends) - 1) / (cpu1 - cpu0))
        else:
            self.step_rates.append(float("nan"))
            self.cpu_rates.append(float("nan"))
        self.steps = len(ends)

    def report(self) -> dict[str, Any]:
        return {
            "first_step_s": self.first_step,
            "epoch_s": self.epochs,
            "steps_per_s": self.step_rates,
            "steps_per_cpu_s": self.cpu_rates,
            "steps": self.steps,
        }


def generic(config: str, out: str) -> dict[str, Any]:
    """What `keras-trainer train` does, with a reporter that also keeps the time."""
    from keras_operator.api.parse import parse, read_documents

    clock = Clock()
    job = parse(read_documents(config)[0])
    from keras_trainer import train as training
    from keras_trainer.reporting import PodReporter

    class TimingReporter(PodReporter):
        def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
            super().begin(epochs=epochs, initial_epoch=initial_epoch, steps=steps)
            clock.epoch_begin()

        def batch(self, step: int) -> None:
            clock.step(step)

        def epoch(self, report: Any) -> None:
            clock.epoch_end()
            super().epoch(report)
            clock.epoch_begin()

    result = training.run(job, out, TimingReporter(termination_path=str(Path(out) / "termination")))
    if result.phase != "Succeeded":
        raise SystemExit(f"the generic trainer failed: {result.message}")
    return clock.report()


def handwritten(workload: str, config: str, out: str) -> dict[str, Any]:
    """The plain Keras script an ML engineer would write for the same training. The model is written
    by hand; data paths and the numbers (epochs, batch size, learning rate, seed, precision) come from
    the generic trainer's job file, so the two cannot drift apart."""
    import keras
    import numpy as np
    import yaml

    with open(config) as f:
        spec = yaml.safe_load(f)["spec"]
    training, data = spec["training"], spec["data"]
    clock = Clock()
    keras.utils.set_random_seed(training["seed"])
    if training.get("mixedPrecision"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    train = np.load(data["train"]["uri"])
    x, y = train["x"], train["y"]
    val = None
    if "validation" in data:
        test = np.load(data["validation"]["uri"])
        val = (test["x"], test["y"])
    if workload == "digits-mlp":
        layers = [keras.Input((64,)), keras.layers.Dense(64, activation="relu")]
    else:
        layers = [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    # float32 outputs under mixed precision, as the generic trainer does
    model = keras.Sequential([*layers, keras.layers.Dense(10, activation="softmax", dtype="float32")])
    optimizer = keras.optimizers.Adam(training["optimizer"]["learningRate"])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Timing(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            clock.epoch_begin()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            clock.step(batch + 1)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            clock.epoch_end()

    model.fit(
        x,
        y,
        batch_size=training["batchSize"],
        epochs=training["epochs"],
        validation_data=val,
        callbacks=[Timing()],
        verbose=0,
    )
    model.save(Path(out) / "model.keras")
    return clock.report()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    Path(rest[-1]).mkdir(parents=True, exist_ok=True)
    report = generic(*rest) if mode == "generic" else handwritten(*rest)
    print("BENCH " + json.dumps(report), flush=True)
