"""The generic trainer: models, data, results and the one-line errors users see."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.trainer_process import kill_after_epoch, run_again, train_command
from keras_operator.api.report import TrainingResult, parse_termination_message
from keras_trainer import cli


def run_cli(tmp_path: Path, doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, Any]:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    term = tmp_path / "termination-log"
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(term))
    code = cli.main(["train", "--config", str(config), "--output", str(tmp_path / "out")])
    return code, parse_termination_message(term.read_text())


@pytest.mark.slow
def test_trains_saves_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    doc = tiny_job(output={"formats": ["keras", "savedmodel"]}, training__epochs=3)
    code, result = run_cli(tmp_path, doc, monkeypatch)
    assert code == 0
    assert result.phase == "Succeeded"
    assert (result.epoch, result.epochs) == (3, 3)
    assert set(result.metrics) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    run = tmp_path / "out" / "runs" / "local"  # no uid in the file: the local run id
    assert result.model_uri == str(run / "model.keras")
    model = keras.models.load_model(result.model_uri)
    assert model.predict(np.zeros((2, 8), "float32"), verbose=0).shape == (2, 3)
    assert (run / "savedmodel" / "saved_model.pb").exists()
    assert (run / "_COMPLETE.json").exists()
    assert not (run / "checkpoints").exists()  # removed once training finished


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"model__layers": [{"type": "Dense", "units": 4}, {"type": "Dens", "units": 3}]},
            "spec.model.layers[1].type: unknown Keras layer 'Dens'; did you mean 'Dense'?",
        ),
        ({"model__layers": [{"type": "Dense", "unitz": 4}]}, "spec.model.layers[0]: Dense:"),
        ({"training__optimizer": {"name": "adamm"}}, "spec.training.optimizer.name: unknown optimizer 'adamm'"),
        ({"training__loss": "mean_squared_eror"}, "spec.training.loss:"),
        ({"data__train": {"uri": "/nonexistent/train.npz"}}, "spec.data.train.uri: not found: /nonexistent/train.npz"),
        (
            {"model__inputShape": [9]},
            "spec.model.inputShape: the model takes examples of shape [9] but spec.data.train has shape [8]",
        ),
        ({"training__epochs": 0}, "spec.training.epochs: Input should be greater than or equal to 1"),
    ],
)
@pytest.mark.slow
def test_user_mistakes_fail_with_one_line_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], expected: str
) -> None:
    code, result = run_cli(tmp_path, tiny_job(**spec), monkeypatch)
    assert code == 2
    assert result.phase == "Failed"
    assert result.reason == "InvalidSpec"
    assert expected in result.message
    assert "\n" not in result.message


@pytest.mark.slow
def test_npz_and_csv_errors_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.savez(tmp_path / "d.npz", features=np.zeros((10, 8)), y=np.zeros(10))
    code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": str(tmp_path / "d.npz")}}), monkeypatch)
    assert code == 2
    assert "spec.data.train.features: no array 'x' in d.npz (it has features, y)" in result.message
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    doc = tiny_job(data={"train": {"uri": str(tmp_path / "d.csv"), "labels": "lable"}})
    code, result = run_cli(tmp_path, doc, monkeypatch)
    assert "spec.data.train.labels: no column 'lable' in d.csv; did you mean 'label'?" in result.message


@pytest.mark.slow
def test_csv_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    doc = tiny_job(
        model={"inputShape": [64], "layers": [{"type": "Dense", "units": 10, "activation": "softmax"}]},
        data={"train": {"uri": str(root / "examples/data/digits.csv"), "labels": "digit"}},
    )
    code, result = run_cli(tmp_path, doc, monkeypatch)
    assert code == 0, result.message
    assert result.metrics["loss"] > 0


@pytest.mark.slow
def test_remote_output_through_fsspec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// stands in for s3:// and gs://: the same fsspec code path, no network."""
    import fsspec
    import keras

    from keras_operator.api.parse import parse
    from keras_trainer import train
    from keras_trainer.reporting import PodReporter

    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    job = parse(tiny_job())
    fs = fsspec.filesystem("memory")
    seen = []

    class Watching(PodReporter):
        def epoch(self, report: Any) -> None:  # checkpoints reach the remote output every epoch
            seen.append(fs.exists("/bucket/run1/runs/local/checkpoints/training_metadata.json"))
            super().epoch(report)

    result = train.run(job, "memory://bucket/run1", Watching())
    assert seen == [True, True]
    assert result.phase == "Succeeded", result.message
    assert result.model_uri == "memory://bucket/run1/runs/local/model.keras"
    fs.get("/bucket/run1/runs/local/model.keras", str(tmp_path / "m.keras"))
    assert fs.exists("/bucket/run1/runs/local/_COMPLETE.json")
    assert not fs.exists("/bucket/run1/runs/local/checkpoints")  # uploaded every epoch, removed once finished
    assert keras.models.load_model(tmp_path / "m.keras").output_shape == (None, 3)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
@pytest.mark.slow
def test_killed_trainer_resumes_from_last_finished_epoch(tmp_path: Path, backend: str) -> None:
    doc = tiny_job(
        backend=backend,
        training__epochs=6,
        data__train={"synthetic": {"samples": 20000, "inputShape": [8], "classes": 3}},
        training__batchSize=16,
    )
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KERAS_OPERATOR_LOG_FORMAT": "json"}
    cmd = train_command(config, str(tmp_path / "out"))

    assert kill_after_epoch(cmd, env, 2) == [1, 2]
    epochs, resumed = run_again(cmd, env)
    assert epochs[0] >= 3, "the second run started over instead of resuming"
    assert epochs[-1] == 6
    assert resumed


@pytest.mark.slow
def test_a_killed_run_is_not_resumed_by_an_edited_spec(tmp_path: Path) -> None:
    """The pod's entrypoint, run `local` (no uid) as `kerasop run` is: killed at epoch 2 of 400, then the
    spec edited to 3 epochs into the same output. Resuming would end at once with the first spec's weights
    ("trained 2/3 epochs"); it trains its 3 epochs instead, and says why."""
    import json
    import subprocess

    from keras_operator.api import jobfile
    from keras_operator.api.parse import parse
    from keras_operator.api.report import last_epoch

    def spec(epochs: int) -> dict[str, Any]:
        samples = {"synthetic": {"samples": 4000, "inputShape": [8], "classes": 3}}
        return tiny_job(training__epochs=epochs, data__train=samples, training__batchSize=16)

    config = tmp_path / "job.yaml"
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(tmp_path / "term"), "KERAS_OPERATOR_LOG_FORMAT": "json"}
    cmd = train_command(config, str(tmp_path / "out"))
    config.write_text(yaml.safe_dump(spec(400)))
    assert kill_after_epoch(cmd, env, 2) == [1, 2]

    config.write_text(yaml.safe_dump(spec(3)))
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    lines = second.stdout.splitlines()
    assert [r.epoch for r in map(last_epoch, lines) if r] == [1, 2, 3]
    hashes = [jobfile.from_resource(parse(spec(epochs))).spec_hash() for epochs in (400, 3)]
    why = f"checkpoint from a different spec (hash {hashes[0]}, this run {hashes[1]})"
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["reason"] for e in events if e.get("event") == "checkpoint_not_resumed"] == [f"{why}: starting fresh"]
    assert not [e for e in events if e.get("event") == "resumed"]
    result = parse_termination_message((tmp_path / "term").read_text())
    assert result is not None
    assert result.message == f"trained 3/3 epochs ({why}: started fresh)"


@pytest.mark.slow
def test_data_from_a_remote_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data at a fsspec URI (memory:// standing in for s3:// or gs://) is fetched before loading."""
    import fsspec

    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(64, 8)).astype("float32"), y=np.arange(64) % 3)
    fsspec.filesystem("memory").put(str(tmp_path / "d.npz"), "/datasets/d.npz")
    code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": "memory://datasets/d.npz"}}), monkeypatch)
    assert code == 0, result.message
    code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": "memory://datasets/none.npz"}}), monkeypatch)
    assert result.message == "spec.data.train.uri: not found: memory://datasets/none.npz"


def test_progress_bar_on_a_terminal() -> None:
    import io

    from keras_operator.api.report import EpochReport
    from keras_trainer.reporting import ConsoleReporter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    reporter = ConsoleReporter(screen)
    reporter.begin(epochs=2, initial_epoch=0, steps=10)
    for step in range(1, 11):
        reporter.batch(step)
    reporter.epoch(EpochReport(epoch=1, epochs=2, metrics={"loss": 0.5}))
    reporter.epoch(EpochReport(epoch=2, epochs=2, metrics={"loss": 0.25}))
    reporter.end(TrainingResult(phase="Succeeded", model_uri="m.keras", epochs=2, epoch=2))
    text = screen.getvalue()
    assert "epoch 2/2" in text
    assert "10/10" in text  # a bar over the epoch's steps
    assert "loss=0.25" in text


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_TRAINER_STORAGE_RETRIES", "3")
    monkeypatch.setenv("KERAS_TRAINER_STORAGE_BACKOFF", "0.01")


def _npz(path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(64, 8)).astype("float32"), y=np.arange(64) % 3)
    return path


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.slow
def test_a_store_answering_503_is_retried_then_exits_1_not_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.flaky import flaky_http

    with flaky_http() as store:
        uri = f"{store.url}/d.npz"
        code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": uri}}), monkeypatch)
        requests = store.requests
    assert code == 1  # the Job retries the pod: the store may be back by then
    assert result.reason == "TrainingError"
    assert result.message.startswith(f"spec.data.train.uri: cannot read {uri} after 3 attempts (")
    assert "503" in result.message
    assert "\n" not in result.message
    assert requests >= 3


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.slow
def test_a_store_that_fails_twice_is_retried_inside_the_trainer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers.flaky import flaky_http

    with flaky_http({"/d.npz": _npz(tmp_path / "d.npz")}, failures=2) as store:
        code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": f"{store.url}/d.npz"}}), monkeypatch)
    assert code == 0, result.message
    assert result.phase == "Succeeded"


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.slow
def test_connection_resets_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.flaky import resetting_port

    with resetting_port() as (url, connections):
        code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": f"{url}/d.npz"}}), monkeypatch)
    assert code == 1
    assert result.message.startswith(f"spec.data.train.uri: cannot read {url}/d.npz after 3 attempts (")
    assert connections[0] >= 3


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.slow
def test_a_failed_dataset_download_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    calls = []

    def offline() -> Any:
        calls.append(1)
        raise Exception("URL fetch failure on https://storage.googleapis.com/mnist.npz: None -- [Errno -3]")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    doc = tiny_job(data={"train": {"keras": "mnist"}}, model__inputShape=[28, 28, 1])
    code, result = run_cli(tmp_path, doc, monkeypatch)
    assert code == 1
    assert result.message.startswith("spec.data.train.keras: cannot download keras.datasets.mnist after 3 attempts")
    assert len(calls) == 3


@pytest.mark.slow
def test_deterministic_data_errors_stay_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers.flaky import flaky_http

    (tmp_path / "bad.npz").write_bytes(b"not an npz file")
    code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": str(tmp_path / "bad.npz")}}), monkeypatch)
    assert (code, result.reason) == (2, "InvalidSpec")
    assert result.message.startswith(f"spec.data.train.uri: {tmp_path / 'bad.npz'} is not a readable .npz file")
    with flaky_http({}, failures=0) as store:  # a store that answers, and has no such file
        code, result = run_cli(tmp_path, tiny_job(data={"train": {"uri": f"{store.url}/none.npz"}}), monkeypatch)
        requests = store.requests
    assert (code, result.reason) == (2, "InvalidSpec")
    assert result.message == f"spec.data.train.uri: not found: {store.url}/none.npz"
    assert requests == 1  # not retried: it would answer the same


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (OSError(5, "Service Unavailable"), True),  # what s3fs makes of a 5xx
        (FileNotFoundError("s3://b/k"), False),
        (PermissionError("Access Denied"), False),
        (OSError(22, "Invalid bucket name"), False),
        (ValueError("bad"), False),
    ],
)
def test_which_storage_errors_are_transient(error: BaseException, transient: bool) -> None:
    from keras_trainer import storage

    assert storage.is_transient(error) is transient


def test_http_status_decides_for_client_library_errors() -> None:
    from keras_trainer import storage

    class ResponseError(Exception):  # aiohttp.ClientResponseError's shape
        def __init__(self, status: int) -> None:
            super().__init__(f"{status}")
            self.status = status

    class ClientError(Exception):  # botocore.exceptions.ClientError's shape
        def __init__(self, status: int) -> None:
            super().__init__(f"{status}")
            self.response = {"ResponseMetadata": {"HTTPStatusCode": status}}

    assert [storage.is_transient(ResponseError(s)) for s in (503, 500, 429, 403, 404)] == [True] * 3 + [False] * 2
    assert [storage.is_transient(ClientError(s)) for s in (502, 400)] == [True, False]
