"""Every device of a pod trains: a batch is split over the devices, and the result is the one-device result.

Two logical CPU devices stand in for two GPUs (the same MirroredStrategy path); each run is its own
process, since TensorFlow's devices are fixed once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.jobs import tiny_job
from keras_operator.api.parse import InvalidResource, parse


def train(
    tmp_path: Path, devices: int, backend: str = "tensorflow", samples: int = 512, batch: int = 32
) -> tuple[dict, list[np.ndarray], str]:
    doc = tiny_job(
        "split",
        backend=backend,
        training__epochs=3,
        training__batchSize=batch,
        training__optimizer={"name": "sgd", "learningRate": 0.05},
        data__shuffle=False,
        data__train={"synthetic": {"samples": samples, "inputShape": [8], "classes": 3}},
        output={"checkpoints": False},
    )
    run = tmp_path / f"{backend}-{devices}"
    run.mkdir()
    (run / "job.yaml").write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        "KERAS_TRAINER_CPU_DEVICES": str(devices),
        "KERAS_TRAINER_TERMINATION_LOG": str(run / "term"),
        "KERAS_OPERATOR_LOG_FORMAT": "json",
    }
    cmd = [sys.executable, "-m", "keras_trainer", "train", "--config", str(run / "job.yaml"), "--output", str(run)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    result = json.loads((run / "term").read_text())
    if done.returncode != 0:
        return result, [], done.stdout + done.stderr
    weights = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, numpy, keras; m = keras.models.load_model(sys.argv[1]); "
            "numpy.savez(sys.argv[2], *m.get_weights())",
            str(run / "runs" / "local" / "model.keras"),  # `train` without a run id: the local run
            str(run / "w.npz"),
        ],
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert weights.returncode == 0, weights.stderr[-2000:]
    saved = np.load(run / "w.npz")
    return result, [saved[k] for k in sorted(saved.files, key=lambda k: int(k.split("_")[1]))], done.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.slow
def test_two_devices_train_as_one_with_the_same_global_batch(tmp_path: Path, backend: str) -> None:
    """TensorFlow: MirroredStrategy over two logical CPU devices; JAX: DataParallel over two host devices."""
    one, weights_one, _ = train(tmp_path, 1, backend)
    two, weights_two, log = train(tmp_path, 2, backend)
    assert (one["devices"], two["devices"]) == (1, 2)
    assert '"devices": 2' in log  # every epoch line says it too, and so does the pushed report
    assert len(weights_one) == len(weights_two) == 4
    # Each device computes half of each batch; the summed gradients equal the whole batch's.
    for a, b in zip(weights_one, weights_two, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert one["metrics"]["loss"] == pytest.approx(two["metrics"]["loss"], abs=1e-4)


def test_several_gpus_need_a_backend_that_uses_them() -> None:
    with pytest.raises(InvalidResource, match=r"resources\.gpus above 1 needs backend tensorflow or jax"):
        parse(tiny_job(backend="torch", resources={"gpus": 2}))
    assert parse(tiny_job(backend="torch", resources={"gpus": 1})).spec.resources.gpus == 1
    for backend in ("tensorflow", "jax"):
        assert parse(tiny_job(backend=backend, resources={"gpus": 4})).spec.resources.gpus == 4


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_a_jax_training_exports_both_formats_and_the_server_serves_it(tmp_path: Path) -> None:
    from helpers.server import model_server, post_json

    doc = tiny_job("jaxed", backend="jax", output={"formats": ["keras", "savedmodel"]})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KERAS_OPERATOR_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "keras_trainer", "train", "--config", str(tmp_path / "job.yaml")]
    done = subprocess.run([*cmd, "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads((tmp_path / "term").read_text())["phase"] == "Succeeded"
    out = tmp_path / "out" / "runs" / "local"  # no run id given: the local run's folder
    assert (out / "savedmodel" / "saved_model.pb").exists()
    rows = np.random.default_rng(0).normal(size=(2, 8)).astype("float32").tolist()
    for model in ("model.keras", "savedmodel"):  # the server (TensorFlow) serves what JAX trained
        with model_server(out / model, "jaxed") as (url, _):
            code, body = post_json(f"{url}/v1/models/jaxed:predict", {"instances": rows})
            assert code == 200, body
            assert np.asarray(body["predictions"]).shape == (2, 3)
            np.testing.assert_allclose(np.asarray(body["predictions"]).sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_a_torch_training_saves_keras_and_the_server_serves_it_on_both_backends(tmp_path: Path) -> None:
    """torch trains with tf.data feeding fit (as every backend does), saves .keras, and the model server
    serves that file with the tensorflow backend and with torch itself, with the same predictions."""
    import keras

    from helpers.server import model_server, post_json

    doc = tiny_job("torched", backend="torch", data__validationSplit=0.25)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KERAS_OPERATOR_LOG_FORMAT": "json"}
    cmd = [sys.executable, "-m", "keras_trainer", "train", "--config", str(tmp_path / "job.yaml")]
    done = subprocess.run([*cmd, "--output", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "term").read_text())
    assert result["phase"] == "Succeeded"
    assert {"loss", "val_loss"} <= set(result["metrics"])
    model_file = tmp_path / "out" / "runs" / "local" / "model.keras"
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype("float32")
    expected = keras.models.load_model(model_file).predict(rows, verbose=0)
    for backend in ("tensorflow", "torch"):
        with model_server(model_file, "torched", "--backend", backend) as (url, _):
            code, body = post_json(f"{url}/v1/models/torched:predict", {"instances": rows.tolist()})
            assert code == 200, body
            np.testing.assert_allclose(body["predictions"], expected, rtol=1e-4, atol=1e-5)


def test_torch_refuses_a_savedmodel_naming_the_field() -> None:
    with pytest.raises(InvalidResource, match=r"output.formats: savedmodel needs backend tensorflow or jax"):
        parse(tiny_job(backend="torch", output={"formats": ["keras", "savedmodel"]}))
    assert parse(tiny_job(backend="torch", resources={"gpus": 1})).spec.backend == "torch"


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_jax_devices_take_a_last_batch_that_does_not_split(tmp_path: Path) -> None:
    """515 examples in batches of 32 leave 3 for two devices: keras.distribution refused the uneven last
    batch (reported as a model that does not fit the data); it is now cut to what splits (one row)."""
    result, weights, log = train(tmp_path, 2, "jax", samples=515)
    assert result["phase"] == "Succeeded", log[-2000:]
    assert result["devices"] == 2
    assert len(weights) == 4


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_over_the_devices_names_the_field(tmp_path: Path) -> None:
    result, _, _ = train(tmp_path, 2, "jax", batch=33)
    assert result["phase"] == "Failed"
    assert result["reason"] == "InvalidSpec"
    assert result["message"].startswith("spec.training.batchSize: 33 does not split over the 2 devices;")
