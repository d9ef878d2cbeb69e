"""Handlers the serving tests load with --handler (this folder on the Python path, as spec.code's would be).

`Tokens` is what a text classifier needs around a model of word ids: text in, padded ids to the model,
class names out. Each answer row also says how many rows its batch had: what the batcher formed is
visible to a client.
"""

from __future__ import annotations

from typing import Any

import numpy as np

VOCABULARY = {"good": 2, "bad": 3, "fine": 4, "movie": 5, "plot": 6, "boring": 7}  # 0: padding, 1: unknown
LENGTH = 6
CLASSES = ["negative", "neutral", "positive"]


def token_ids(texts: Any) -> np.ndarray:
    """Each text as LENGTH word ids, cut or padded with 0."""
    ids = np.zeros((len(texts), LENGTH), "int32")
    for row, text in enumerate(texts):
        if isinstance(text, bytes):
            text = text.decode()
        if not isinstance(text, str):
            raise TypeError(f"each text must be a string, got {type(text).__name__}")
        if "explode" in text:
            raise RuntimeError("the tokeniser broke")
        words = [VOCABULARY.get(word, 1) for word in text.lower().split()][:LENGTH]
        ids[row, : len(words)] = words
    return ids


class Tokens:
    inputs = ("text",)  # what requests carry: preprocess makes the model's "ids" of it

    def preprocess(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return token_ids(inputs["text"])

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        probs = outputs["probs"]
        return {
            "label": [CLASSES[i] for i in probs.argmax(axis=1)],
            "score": probs.max(axis=1),
            "batch": [len(probs)] * len(probs),
        }


class BrokenAfter:
    """postprocess fails on every batch."""

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        raise ZeroDivisionError("division by zero")


class Unbuildable:
    def __init__(self) -> None:
        raise OSError("vocabulary.txt not found")
