"""Every way to name a model and every data format the trainer reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers.jobs import tiny_job
from helpers.lazy import lazy
from keras_operator.api.parse import InvalidResource, parse
from keras_operator.api.report import TrainingResult
from keras_trainer.reporting import PodReporter

train = lazy("keras_trainer.train")  # Keras and TensorFlow load with the first test that trains


@pytest.fixture(autouse=True)
def _termination_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "termination-log"))


def run(tmp_path: Path, **spec: object) -> train.TrainingResult:
    return train.run(parse(tiny_job(**spec)), str(tmp_path / "out"), PodReporter())


@pytest.mark.slow
def test_model_from_config(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    import json

    result = run(tmp_path, model={"config": json.loads(model.to_json())})
    assert result.phase == "Succeeded", result.message


@pytest.mark.slow
def test_model_from_callable_in_a_code_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_models.py").write_text(
        "import keras\n"
        "def build():\n"
        "    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation='softmax')])\n"
    )
    monkeypatch.setenv("KERAS_TRAINER_CODE_DIR", str(code))
    result = run(tmp_path, model={"callable": "my_models:build", "codeConfigMap": "code"})
    assert result.phase == "Succeeded", result.message
    result = run(tmp_path, model={"callable": "my_models:nope"})
    assert result.message == "spec.model.callable: my_models has no function 'nope'"


@pytest.mark.slow
def test_fine_tune_from_a_saved_model(tmp_path: Path) -> None:
    first = run(tmp_path, training__epochs=1)
    assert first.phase == "Succeeded"
    tuned = train.run(
        parse(tiny_job(model={"uri": first.model_uri}, training__optimizer={"name": "sgd", "learningRate": 0.01})),
        str(tmp_path / "tuned"),
        PodReporter(),
    )
    assert tuned.phase == "Succeeded", tuned.message
    missing = run(tmp_path, model={"uri": str(tmp_path / "nope.keras")})
    assert missing.message.startswith("spec.model.uri: not found")


@pytest.mark.slow
def test_model_from_keras_applications(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        model={
            "application": {"name": "MobileNetV2", "args": {"input_shape": [32, 32, 3], "classes": 3, "alpha": 0.35}}
        },
        data={"train": {"synthetic": {"samples": 16, "inputShape": [32, 32, 3], "classes": 3}}},
        training__epochs=1,
    )
    assert result.phase == "Succeeded", result.message
    # The Keras catalogue refuses it when the spec is parsed, before any training starts.
    with pytest.raises(InvalidResource, match=r"spec\.model\.application\.name: unknown application 'MobileNetV9'"):
        run(tmp_path, model={"application": {"name": "MobileNetV9"}})


@pytest.mark.slow
def test_mixed_precision_keeps_float32_outputs(tmp_path: Path) -> None:
    import keras

    try:
        result = run(tmp_path, training__mixedPrecision=True, training__epochs=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.phase == "Succeeded", result.message
    model = keras.models.load_model(result.model_uri)
    assert model.layers[0].dtype_policy.name == "mixed_float16"
    assert model.layers[-1].dtype_policy.name == "float32"


@pytest.mark.slow
def test_tfrecord_data(tmp_path: Path) -> None:
    import tensorflow as tf

    path = tmp_path / "train.tfrecord"
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(64):
            features = {
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=rng.normal(size=8).tolist())),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(3))])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    result = run(tmp_path, data={"train": {"uri": str(path)}, "validation": {"uri": str(path)}})
    assert result.phase == "Succeeded", result.message
    assert "val_loss" in result.metrics
    bad = run(tmp_path, data={"train": {"uri": str(path), "features": "pixels"}})
    assert bad.message.startswith("spec.data.train.features: cannot read 'pixels'")


@pytest.mark.slow
def test_class_per_folder_images(tmp_path: Path) -> None:
    import keras

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            keras.utils.save_img(tmp_path / "images" / label / f"{i}.png", rng.integers(0, 255, (12, 12, 3)))
    result = run(
        tmp_path,
        model={
            "inputShape": [12, 12, 3],
            "layers": [
                {"type": "Rescaling", "scale": 0.00392},
                {"type": "Flatten"},
                {"type": "Dense", "units": 2, "activation": "softmax"},
            ],
        },
        data={"train": {"uri": str(tmp_path / "images"), "imageSize": [12, 12]}},
    )
    assert result.phase == "Succeeded", result.message


def test_termination_message_stays_under_the_kubelet_limit() -> None:
    result = TrainingResult(
        phase="Failed", reason="TrainingError", message="x" * 10000, metrics={f"m{i}": 0.5 for i in range(500)}
    )
    text = result.to_termination_message()
    assert len(text.encode()) <= 4096
    assert TrainingResult.model_validate_json(text).phase == "Failed"


@pytest.mark.slow
def test_early_stopping_reports_the_restored_weights_metrics(tmp_path: Path) -> None:
    """With restoreBestWeights the saved model is the best epoch's; the reported val_* is evaluated on it."""
    import keras

    result = run(
        tmp_path,
        training__epochs=30,
        training__optimizer={"name": "sgd", "learningRate": 2.0},  # diverges: val_loss stops improving fast
        training__earlyStopping={"monitor": "val_loss", "patience": 1},
    )
    assert result.phase == "Succeeded", result.message
    assert result.epoch < 30, "early stopping did not stop"
    model = keras.models.load_model(result.model_uri)
    job = parse(tiny_job())
    from keras_trainer import data

    train_data = data.load(job.spec.data.train, "spec.data.train", "train", batch_size=32, seed=1, shape_hint=None)
    held_out = int(len(train_data.x) * 0.25)
    evaluated = model.evaluate(train_data.x[-held_out:], train_data.y[-held_out:], verbose=0, return_dict=True)
    assert result.metrics["val_loss"] == pytest.approx(evaluated["loss"], rel=1e-3)
