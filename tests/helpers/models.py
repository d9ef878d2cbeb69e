"""Small Keras models for serving tests (built on the fly; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def single(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    model.save(path)
    return path


def multi(path: Path) -> Path:
    """Two named inputs (float32 and int32), two named outputs."""
    import keras

    keras.utils.set_random_seed(0)
    a = keras.Input((4,), name="features")
    b = keras.Input((2,), name="counts", dtype="int32")
    joined = keras.layers.Concatenate()([a, keras.layers.Identity()(keras.ops.cast(b, "float32"))])
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(joined)
    score = keras.layers.Dense(1, name="score")(joined)
    keras.Model({"features": a, "counts": b}, {"probs": probs, "score": score}).save(path)
    return path


def load(path: Path) -> Any:
    import keras

    return keras.models.load_model(path, compile=False)


def strings(path: Path) -> Path:
    """One string input (a word), one float output (its index in a small vocabulary)."""
    import keras

    word = keras.Input(shape=(1,), dtype="string", name="word")
    ids = keras.layers.StringLookup(vocabulary=["cat", "dog", "bird"])(word)
    keras.Model(word, keras.layers.Identity(name="index")(keras.ops.cast(ids, "float32"))).save(path)
    return path


def constant(path: Path, value: float) -> Path:
    """Answers `value` for every example of 4 features (output [batch, 1]): which version answered is
    in the answer."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(
                1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(value), name="value"
            ),
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def echo(path: Path) -> Path:
    """One string input, the same string out: an output that cannot be read as classes or values."""
    import keras

    word = keras.Input(shape=(1,), dtype="string", name="word")
    keras.Model(word, keras.layers.Identity(name="same")(word)).save(path)
    return path


def token_classifier(path: Path) -> Path:
    """Six word ids (int32) in, the probabilities of three classes out ("probs"): a text classifier whose
    tokenising is left to a handler (tests/helpers/handler_code/text_handler.py)."""
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(8, 4)(ids))
    keras.Model(ids, keras.layers.Dense(3, activation="softmax", name="probs")(pooled)).save(path)
    return path
