"""Small KerasTrainingJob documents for tests."""

from __future__ import annotations

import copy
from typing import Any

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
