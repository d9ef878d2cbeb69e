"""Reading what a training saved: the weights of a .keras file and the JSON lines of a trainer's log."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def weights_of(model_file: Path, scratch: Path, backend: str = "jax") -> list[np.ndarray]:
    """The saved model's weights, in layer order. Loaded in a child process: the test process may have
    imported Keras with another backend already, and Keras fixes its backend at import."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy, keras; m = keras.models.load_model(sys.argv[1], compile=False); "
            "numpy.savez(sys.argv[2], *m.get_weights())",
            str(model_file),
            str(scratch),
        ],
        env={**os.environ, "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    saved = np.load(scratch)
    return [saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))]


def largest_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b], "not the same model"
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON records of a trainer's log (KERAS_OPERATOR_LOG_FORMAT=json), other lines skipped."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def epoch_lines(text: str) -> list[dict[str, Any]]:
    """The per-epoch records (epoch and metrics) of a trainer's log."""
    return [e for e in log_lines(text) if "epoch" in e and "metrics" in e]
