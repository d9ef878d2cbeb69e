"""User code with a custom layer and a custom loss registered with Keras' serialization, as a folder or a
ConfigMap: what a model from model.callable needs at training and at serving."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

LAYERS = """
import keras


@keras.saving.register_keras_serializable(package="custom")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="custom")
def halved_mse(y_true, y_pred):
    return 0.5 * keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)
"""

MODELS = """
import keras

from layers import Scale


def build():
    inputs = keras.Input((4,))
    return keras.Model(inputs, Scale(3.0)(keras.layers.Dense(2)(inputs)))
"""

# Scale is registered only when build() runs: a process that imports the module never knows it.
UNSERVABLE = """
import keras


def build():
    @keras.saving.register_keras_serializable(package="runtime")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((4,))
    return keras.Model(inputs, Scale()(keras.layers.Dense(2)(inputs)))
"""

FILES = {"layers.py": LAYERS, "models.py": MODELS}
LOSS = {"name": "custom>halved_mse"}


def write(folder: Path, files: dict[str, str] = FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def config_map(name: str, files: dict[str, str] = FILES) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(files)}


def spec(**more: Any) -> dict[str, Any]:
    """A training spec (less code and output) of the custom model: 4 features, 2 regression targets."""
    return {
        "model": {"callable": "models:build"},
        "data": {"train": {"synthetic": {"samples": 32, "inputShape": [4], "classes": 0}}},
        "training": {"epochs": 1, "batchSize": 16, "loss": LOSS, "metrics": [], "seed": 1},
        **more,
    }


def check_recorded(run: Path, files: dict[str, str] = FILES) -> str:
    """The run recorded these files and their hashes; -> the recorded overall hash."""
    record = json.loads((run / "code.json").read_text())
    assert record["files"] == {n: hashlib.sha256(t.encode()).hexdigest() for n, t in files.items()}
    assert {n: (run / "code" / n).read_text() for n in files} == files
    assert sorted(record["imports"]) == sorted(Path(n).stem for n in files)
    assert len(record["hash"]) == 64
    return str(record["hash"])
