"""The user code of examples/custom-code.yaml (a layer, an activation, a loss and a metric registered with
Keras' serialization), as a folder or a ConfigMap, and a model whose layer no import of its code
registers."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from helpers.manifests import ROOT

EXAMPLE = [*yaml.safe_load_all((ROOT / "examples" / "custom-code.yaml").read_text())]
CONFIG_MAP, TRAINING, SERVICE = EXAMPLE
FILES: dict[str, str] = CONFIG_MAP["data"]

# Scale is registered only when build() runs: a process that imports the module never knows it.
UNSERVABLE = """
import keras


def build():
    @keras.saving.register_keras_serializable(package="runtime")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((64,))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(Scale()(inputs)))
"""


def write(folder: Path, files: dict[str, str] = FILES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def training(name: str, **spec: Any) -> dict[str, Any]:
    """The example's KerasTrainingJob, small: 1 epoch of 32 random examples, `spec` on top."""
    doc = copy.deepcopy(TRAINING)
    doc["metadata"]["name"] = name
    doc["spec"]["data"] = {"train": {"synthetic": {"samples": 32, "inputShape": [64], "classes": 10}}}
    doc["spec"]["training"].update(epochs=1, batchSize=16)
    doc["spec"].update(spec)
    return doc


def check_recorded(run: Path, files: dict[str, str] = FILES) -> str:
    """The run recorded these files and their hashes; -> the recorded overall hash."""
    record = json.loads((run / "code.json").read_text())
    assert record["files"] == {n: hashlib.sha256(t.encode()).hexdigest() for n, t in files.items()}
    assert {n: (run / "code" / n).read_text() for n in files} == files
    assert sorted(record["imports"]) == sorted(Path(n).stem for n in files)
    assert len(record["hash"]) == 64
    return str(record["hash"])
