"""Peer (c) of the serving benchmark: KServe's Python model server wrapping the same Keras model with
a plain predict — what a KServe user writes for a custom Keras predictor. Runs in its own venv
(kserve pins libraries the project does not use): see `ensure_kserve` in bench/serving.py.

Usage: python bench/kserve_server.py NAME MODEL.keras PORT
"""

from __future__ import annotations

import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import kserve
import numpy as np


class KerasModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        self.model = keras.models.load_model(self.path, compile=False)
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        x = np.asarray(payload["instances"], dtype=np.float32)
        return {"predictions": self.model.predict_on_batch(x).tolist()}


if __name__ == "__main__":
    name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kserve.ModelServer(http_port=port, workers=1, enable_grpc=False).start([KerasModel(name, path)])
