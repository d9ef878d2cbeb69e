"""The cheapest handler (`--handler identity:Identity`): what a handler costs the server itself, with no
work of its own. Request values still take the handler's path: taken as given, then checked against the
model's inputs after preprocess."""

from __future__ import annotations

import numpy as np


class Identity:
    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs
