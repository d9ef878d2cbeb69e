"""A model with a custom layer, activation, loss and metric from spec.code (examples/custom-code.yaml's):
trained by the trainer as a pod runs it, exported as .keras and SavedModel, its code recorded beside it,
and served by `kerasop serve` by trainingJobRef, which imports the recorded code; on tensorflow and jax.
A model whose layer the recorded code cannot provide fails its training instead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers import custom_code
from helpers.jobs import write_job
from helpers.lazy import lazy
from helpers.server import free_port, get_json, model_server, post_json
from helpers.trainer_process import train_command
from keras_operator.api.parse import parse
from keras_trainer.reporting import PodReporter

pytestmark = pytest.mark.slow
train = lazy("keras_trainer.train")
X = np.random.default_rng(3).uniform(0, 16, size=(3, 64)).astype("float32")


def _job(name: str, backend: str, output: Path, code: dict[str, object]) -> dict[str, Any]:
    return custom_code.training(
        name, backend=backend, code=code, output={"uri": str(output), "formats": ["keras", "savedmodel"]}
    )


def _saved_model_predictions(path: Path) -> np.ndarray:
    """The SavedModel export's answer, which needs no user code (its graph is traced)."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    (name,) = fn.structured_input_signature[1]
    (out,) = fn(**{name: tf.constant(X)}).values()
    return out.numpy()


def _kerasop_serve(path: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "kerasop"), "serve", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "kerasop serve exited"
        try:
            if get_json(f"http://127.0.0.1:{port}/v2/models/clf/ready")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("kerasop serve did not become ready")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_custom_code_is_trained_recorded_and_served_by_training_job_ref(tmp_path: Path, backend: str) -> None:
    code = custom_code.write(tmp_path / "code")
    out = tmp_path / "out"
    job = _job("custom", backend, out, {"uri": str(code)})
    termination = tmp_path / "termination-log"
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(termination)}
    done = subprocess.run(
        train_command(Path(write_job(tmp_path, job)), str(out)), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(termination.read_text())
    assert "loads and predicts alike in a fresh process" in result["message"]

    run = out / "runs" / "local"
    code_hash = custom_code.check_recorded(run)
    assert result["codeHash"] == code_hash
    assert json.loads((run / "_COMPLETE.json").read_text())["codeHash"] == code_hash

    # The service names the training; no code field: the server finds the code recorded with the run.
    port = free_port()
    service = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "custom"},
        "spec": {
            "model": {"trainingJobRef": {"name": "custom"}},  # as examples/custom-code.yaml's service
            "modelName": "clf",
            "backend": backend,
            "server": {"port": port},
        },
    }
    (tmp_path / "both.yaml").write_text(yaml.safe_dump_all([job, service]))
    code.rename(tmp_path / "gone")  # only the recorded copy is left to import
    proc = _kerasop_serve(tmp_path / "both.yaml", port)
    try:
        status, body = post_json(f"http://127.0.0.1:{port}/v1/models/clf:predict", {"instances": X.tolist()})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], _saved_model_predictions(run / "savedmodel"), rtol=1e-4, atol=1e-5)


def test_a_service_imports_its_own_code_for_a_model_without_recorded_code(tmp_path: Path) -> None:
    """--code-dir (what a KerasModelService's spec.code becomes) for a .keras file saved outside any run."""
    code = custom_code.write(tmp_path / "code")
    sys.path.insert(0, str(code))
    try:
        import keras
        import models  # the user's module, as the training imports it

        model = models.build()
        model.save(tmp_path / "plain.keras")
        expected = model.predict(X, verbose=0)
    finally:
        sys.path.remove(str(code))
    with model_server(tmp_path / "plain.keras", "clf", "--code-dir", str(code)) as (url, _):
        status, body = post_json(f"{url}/v1/models/clf:predict", {"instances": X.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-5)
    assert isinstance(model, keras.Model)


def test_an_unservable_model_fails_its_training_naming_the_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "termination-log"))
    code = custom_code.write(tmp_path / "code", {**custom_code.FILES, "models.py": custom_code.UNSERVABLE})
    job = _job("unservable", "tensorflow", tmp_path / "out", {"uri": str(code)})
    result = train.run(parse(job), None, PodReporter())
    assert result.phase == "Failed"
    assert result.reason == "Unservable"
    assert "Could not locate class 'Scale'" in result.message
    run = tmp_path / "out" / "runs" / "local"
    assert (run / "model.keras").exists()
    assert not (run / "_COMPLETE.json").exists()  # no server may take it for a finished run
    from keras_trainer.cli import exit_code

    assert exit_code(result) == 2  # the Job does not retry it


def test_a_registered_name_the_code_does_not_register_names_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "termination-log"))
    code = custom_code.write(tmp_path / "code")
    job = _job("typo", "tensorflow", tmp_path / "out", {"uri": str(code)})
    job["spec"]["training"]["metrics"] = ["accuracy", "custom>Confidance"]
    result = train.run(parse(job), None, PodReporter())
    assert (result.phase, result.reason) == ("Failed", "InvalidSpec")
    assert result.message.startswith("spec.training.metrics[1]: no metric is registered as 'custom>Confidance'")
