"""Transfer learning and the training knobs, with the real trainer and Keras: the two-phase recipe on a small
keras.applications model (random init, no download), schedules, clipping, class weights and callbacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keras_operator.api import jobfile
from keras_operator.api.report import EpochReport, TrainingResult
from keras_operator.api.training_job import Callback, Layer, TrainingSpec

pytestmark = pytest.mark.slow


class Recorder:
    """A Reporter that keeps what the trainer reported."""

    def __init__(self) -> None:
        self.begins: list[dict[str, Any]] = []
        self.epochs: list[EpochReport] = []
        self.result: TrainingResult | None = None

    def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
        self.begins.append({"epochs": epochs, "initial_epoch": initial_epoch})

    def batch(self, step: int) -> None:
        pass

    def epoch(self, report: EpochReport) -> None:
        self.epochs.append(report)

    def end(self, result: TrainingResult) -> None:
        self.result = result


def trainer_job(tmp_path: Path, model: dict[str, Any], training: dict[str, Any], shape: list[int]) -> Any:
    doc = {
        "apiVersion": jobfile.JOBFILE_API_VERSION,
        "kind": jobfile.JOBFILE_KIND,
        "run": {"id": "r1", "name": "t"},
        "model": model,
        "data": {"train": {"synthetic": {"samples": 32, "inputShape": shape, "classes": 3}}},
        "training": {"batchSize": 16, "seed": 1, **training},
        "output": {"uri": str(tmp_path / "out")},
    }
    return jobfile.read(doc)[0]


def weights(path: Path, layer: str) -> list[np.ndarray]:
    import keras

    model = keras.models.load_model(path, compile=False)
    return [w.numpy() for w in model.get_layer(layer).weights]


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_two_phases_freeze_the_base_then_train_it_and_count_every_epoch(tmp_path: Path) -> None:
    import keras

    from keras_trainer import train, transfer

    base = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3),
        alpha=0.75,
        minimalistic=True,
        include_top=False,
        weights=None,
        pooling="avg",
        include_preprocessing=False,
    )
    start = tmp_path / "start.keras"
    # Named: Keras numbers unnamed layers per process (dense_5 after other tests made dense layers).
    head = Layer.model_validate({"type": "Dense", "units": 3, "activation": "softmax", "name": "head"})
    transfer.with_head(base, [head], False).save(start)
    job = trainer_job(
        tmp_path,
        {"uri": str(start)},
        {
            "epochs": 2,
            "optimizer": {"name": "adam", "learningRate": 0.01},
            "phases": [{"epochs": 1, "trainable": False}, {"epochs": 1, "trainable": True, "learningRate": 0.001}],
            "callbacks": [
                {"name": "ModelCheckpoint", "args": {"filepath": "epoch{epoch}.keras"}},
                {"name": "CSVLogger"},
            ],
        },
        [32, 32, 3],
    )
    reporter = Recorder()
    result = train.run(job, None, reporter)

    assert result.phase == "Succeeded", result.message
    assert (result.epoch, result.epochs) == (2, 2)
    assert [(r.epoch, r.epochs) for r in reporter.epochs] == [(1, 2), (2, 2)]  # one count across phases
    assert reporter.begins == [{"epochs": 2, "initial_epoch": 0}]  # phase 2 goes on, it resumes nothing
    assert result.started_from == str(start)
    saved = tmp_path / "out" / "runs" / "r1" / "callbacks"
    assert not same(weights(start, "head"), weights(saved / "epoch1.keras", "head"))  # the head trained
    assert same(weights(start, "base"), weights(saved / "epoch1.keras", "base"))  # phase 1: base frozen
    assert not same(weights(saved / "epoch1.keras", "base"), weights(saved / "epoch2.keras", "base"))  # phase 2
    assert len((saved / "training.csv").read_text().splitlines()) == 3  # a header, one row per epoch of both


def test_a_resumed_run_starts_in_the_phase_its_checkpoint_is_in(tmp_path: Path) -> None:
    """A checkpoint after epoch 2 of phases [2 frozen, 1 trainable]: only the second phase runs, unfrozen."""
    import keras

    from keras_trainer import transfer

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    before = [w.numpy() for w in model.weights]
    training = TrainingSpec.model_validate({"epochs": 3, "phases": [{"epochs": 2, "trainable": False}, {"epochs": 1}]})
    compiled: list[tuple[int, bool]] = []

    def compile_phase(phase: transfer.Phase) -> None:
        compiled.append((phase.index, model.trainable))
        model.compile(optimizer="sgd", loss="mse")

    backup = keras.callbacks.BackupAndRestore(str(folder))
    fit_args = {"x": np.ones((8, 4)), "y": np.zeros((8, 3)), "epochs": 3, "callbacks": [backup], "verbose": 0}
    transfer.fit(model, fit_args, training, compile_phase, folder)
    assert compiled == [(1, True)]
    assert not same(before, [w.numpy() for w in model.weights])  # it trained: phase 2's layers are trainable


def test_application_head_and_trainable_count() -> None:
    from keras_operator.api.training_job import ModelSpec
    from keras_trainer import models, transfer

    spec = ModelSpec.model_validate(
        {
            "application": {
                "name": "MobileNetV3Small",
                "args": {"input_shape": [32, 32, 3], "minimalistic": True, "pooling": "avg"},
                "trainable": 3,
            },
            "head": [{"type": "Dense", "units": 5, "activation": "softmax"}],
        }
    )
    model = models.build(spec)
    base = transfer.base_of(model)
    assert base is not model
    assert model.output_shape == (None, 5)
    layers = [layer for layer in base.layers if layer.trainable and layer.weights]
    trainable_layers = [layer for layer in base.layers[1:] if layer.trainable]
    assert trainable_layers == base.layers[-3:]
    assert layers  # some of the top three hold weights
    assert model.layers[-1].trainable  # the head


def test_schedule_and_clipping_reach_the_optimizer() -> None:
    import keras

    from keras_trainer import models

    training = TrainingSpec.model_validate(
        {
            "epochs": 1,
            "optimizer": {
                "name": "sgd",
                "clipNorm": 0.5,
                "learningRate": {"name": "CosineDecay", "args": {"initialLearningRate": 0.1, "decaySteps": 10}},
            },
        }
    )
    opt = models.optimizer(training)
    config = keras.optimizers.serialize(opt)["config"]
    assert config["learning_rate"]["class_name"] == "CosineDecay"
    assert config["learning_rate"]["config"]["decay_steps"] == 10
    assert config["clipnorm"] == 0.5
    phase_rate = models.optimizer(training, 0.001)
    assert float(keras.ops.convert_to_numpy(phase_rate.learning_rate)) == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            {"name": "CosineDecai", "args": {}},
            "spec.training.optimizer.learningRate.name: unknown learning-rate schedule 'CosineDecai'; "
            "did you mean 'CosineDecay'?",
        ),
        ({"name": "CosineDecay", "args": {"initialLearningRate": 0.1}}, "spec.training.optimizer.learningRate.args:"),
    ],
)
def test_schedule_mistakes_name_the_field(value: dict[str, Any], expected: str) -> None:
    from keras_trainer import models
    from keras_trainer.errors import SpecError

    training = TrainingSpec.model_validate({"epochs": 1, "optimizer": {"learningRate": value}})
    with pytest.raises(SpecError) as info:
        models.optimizer(training)
    assert str(info.value).startswith(expected)


def test_callbacks_are_built_with_paths_in_the_run_folder(tmp_path: Path) -> None:
    import keras

    from keras_trainer import fit_options
    from keras_trainer.errors import SpecError

    made = fit_options.callbacks(
        [
            Callback.model_validate({"name": "ReduceLROnPlateau", "args": {"patience": 2, "minLr": 1e-5}}),
            Callback.model_validate({"name": "CSVLogger", "args": {"filename": "log.csv"}}),
            Callback.model_validate({"name": "TerminateOnNaN"}),
        ],
        tmp_path,
    )
    assert isinstance(made[0], keras.callbacks.ReduceLROnPlateau)
    assert (made[0].patience, made[0].min_lr) == (2, 1e-5)
    assert made[1].filename == str(tmp_path / "callbacks" / "log.csv")
    for spec, field in [
        ({"name": "CSVLogger", "args": {"filename": "../../etc/x"}}, "spec.training.callbacks[0].args.filename"),
        ({"name": "ModelCheckpoint", "args": {"filepath": "/abs.keras"}}, "spec.training.callbacks[0].args.filepath"),
        ({"name": "TensorBoard"}, "spec.training.callbacks[0].name: TensorBoard cannot be given here"),
        ({"name": "ReduceLROnPlatau"}, "spec.training.callbacks[0].name: unknown callback 'ReduceLROnPlatau'"),
        ({"name": "CSVLogger", "args": {"filename": "x.csv", "separatr": ";"}}, "spec.training.callbacks[0].args"),
    ]:
        with pytest.raises(SpecError) as info:
            fit_options.callbacks([Callback.model_validate(spec)], tmp_path)
        assert str(info.value).startswith(field), str(info.value)


def test_class_weights_reach_fit(tmp_path: Path) -> None:
    """Every class weighted 0: nothing counts, so the weighted loss is 0 (unweighted it is not)."""
    from keras_trainer import train

    model = {"inputShape": [8], "layers": [{"type": "Dense", "units": 3, "activation": "softmax"}]}
    zero = trainer_job(tmp_path / "a", model, {"epochs": 1, "classWeight": {"0": 0, "1": 0, "2": 0}}, [8])
    plain = trainer_job(tmp_path / "b", model, {"epochs": 1}, [8])
    weighted, unweighted = Recorder(), Recorder()
    train.run(zero, None, weighted)
    train.run(plain, None, unweighted)
    assert weighted.epochs[0].metrics["loss"] == pytest.approx(0.0, abs=1e-6)
    assert unweighted.epochs[0].metrics["loss"] > 0.1
