"""Small KerasTrainingJob documents for tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "apiVersion": "kerasoperator.dev/v1alpha1",
    "kind": "KerasTrainingJob",
    "metadata": {"name": "tiny"},
    "spec": {
        "model": {
            "inputShape": [8],
            "layers": [
                {"type": "Dense", "units": 16, "activation": "relu"},
                {"type": "Dense", "units": 3, "activation": "softmax"},
            ],
        },
        "data": {"train": {"synthetic": {"samples": 256, "inputShape": [8], "classes": 3}}, "validationSplit": 0.25},
        "training": {"epochs": 2, "batchSize": 32, "seed": 1},
    },
}


def tiny_job(name: str = "tiny", **spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["metadata"]["name"] = name
    for path, value in spec.items():
        node = doc["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return doc


def synthetic_job(name: str, epochs: int, samples: int = 3000, batch_size: int = 32) -> dict[str, Any]:
    """A training of `epochs` over `samples` random examples, writing to pvc://models/NAME: the more
    samples and the smaller the batch, the longer each epoch (to be caught while it runs)."""
    return tiny_job(
        name,
        output={"uri": f"pvc://models/{name}"},
        training__epochs=epochs,
        training__batchSize=batch_size,
        data__train={"synthetic": {"samples": samples, "inputShape": [8], "classes": 3}},
    )


def write_job(tmp_path: Path, doc: dict[str, Any]) -> str:
    """`doc` as tmp_path/job.yaml, for a command that reads a file."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)
