"""The benchmark models, and the physical limit of calling them in-process (no HTTP).

Usage: python bench/models.py DIR [--seconds S] → writes DIR/mlp.keras and DIR/cnn.keras and
prints one JSON object: parameters and rows/s per batch size for each model, for three ways of
calling it (`model(x)` in a tf.function, the same compiled by XLA, and `predict_on_batch`, what the
server calls); the best of all of them is the limit (d).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BATCHES = (1, 32, 256, 1024)


def build(kind: str) -> Any:
    """The digits MLP of examples/digits.yaml, and a small CNN on the same 8x8 digits."""
    import keras

    keras.utils.set_random_seed(0)
    if kind == "mlp":
        layers = [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, "softmax")]
    else:
        layers = [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    return keras.Sequential(layers)


def rows_per_second(call: Any, x: Any, seconds: float) -> float:
    for _ in range(20):
        call(x)
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        call(x)
        calls += 1
    return calls * len(x) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    args.dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    for kind in ("mlp", "cnn"):
        model = build(kind)
        model.save(args.dir / f"{kind}.keras")
        ways = {
            "tf.function": tf.function(lambda x, m=model: m(x, training=False)),
            "tf.function, XLA": tf.function(lambda x, m=model: m(x, training=False), jit_compile=True),
        }
        shape = tuple(model.inputs[0].shape[1:])
        calls: dict[str, dict[int, float]] = {way: {} for way in [*ways, "predict_on_batch"]}
        for batch in BATCHES:
            x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
            for way, fn in ways.items():
                calls[way][batch] = rows_per_second(lambda v, f=fn: f(v).numpy(), x, args.seconds)
            calls["predict_on_batch"][batch] = rows_per_second(model.predict_on_batch, x, args.seconds)
        report[kind] = {
            "parameters": model.count_params(),
            "input_shape": shape,
            "calls": calls,
            # (d): the best any in-process call does at any batch size
            "limit": max(v for by_batch in calls.values() for v in by_batch.values()),
        }
    json.dump(report, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
