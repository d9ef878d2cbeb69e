"""s3:// for real: data, models, SavedModel exports and checkpoints against moto's S3 server.

Credentials and the endpoint come only from the standard AWS environment variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL), as users set them for S3 or MinIO.
Objects are checked with boto3, not through the trainer's own storage code.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.manifests import ROOT
from helpers.s3 import Bucket, forget_s3fs_state
from helpers.trainer_process import kill_after_epoch, run_again, train_command
from keras_operator.api.report import parse_termination_message
from keras_trainer import cli


def train(tmp_path: Path, doc: dict[str, Any], output: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, Any]:
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    term = tmp_path / "termination-log"
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(term))
    code = cli.main(["train", "--config", str(config), "--output", output])
    return code, parse_termination_message(term.read_text())


def test_training_data_read_from_s3(tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(64, 8)).astype("float32"), y=np.arange(64) % 3)
    uri = bucket.upload(tmp_path / "d.npz", "datasets/d.npz")
    code, result = train(tmp_path, tiny_job(data={"train": {"uri": uri}}), str(tmp_path / "out"), monkeypatch)
    assert code == 0, result.message
    assert result.phase == "Succeeded"

    csv_uri = bucket.upload(ROOT / "examples" / "data" / "digits.csv", "datasets/digits.csv")
    doc = tiny_job(
        model={"inputShape": [64], "layers": [{"type": "Dense", "units": 10, "activation": "softmax"}]},
        data={"train": {"uri": csv_uri, "labels": "digit"}},
    )
    code, result = train(tmp_path, doc, str(tmp_path / "out-csv"), monkeypatch)
    assert code == 0, result.message
    assert result.metrics["loss"] > 0

    missing = bucket.url("datasets/none.npz")
    code, result = train(tmp_path, tiny_job(data={"train": {"uri": missing}}), str(tmp_path / "out"), monkeypatch)
    assert code == 2
    assert result.message == f"spec.data.train.uri: not found: {missing}"


def test_model_savedmodel_and_checkpoints_written_to_s3(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from keras_operator.api.parse import parse
    from keras_trainer import train as training
    from keras_trainer.reporting import PodReporter

    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    job = parse(tiny_job(output={"formats": ["keras", "savedmodel"]}, training__epochs=3))
    checkpoints: list[list[str]] = []

    class Watching(PodReporter):
        def epoch(self, report: Any) -> None:  # the epoch's checkpoint is in the bucket before it is reported
            checkpoints.append(bucket.keys("runs/tiny/runs/local/checkpoints/"))
            super().epoch(report)

    result = training.run(job, bucket.url("runs/tiny"), Watching())
    assert result.phase == "Succeeded", result.message
    run = "runs/tiny/runs/local"  # the run's own prefix (no uid here: the local run id)
    assert result.model_uri == bucket.url(f"{run}/model.keras")

    assert len(checkpoints) == 3
    for keys in checkpoints:
        assert {
            f"{run}/checkpoints/latest.weights.h5",
            f"{run}/checkpoints/training_metadata.json",
            f"{run}/checkpoints/run.json",
        } <= set(keys)
    keys = bucket.keys("runs/tiny/")
    assert f"{run}/model.keras" in keys
    assert f"{run}/_COMPLETE.json" in keys
    assert f"{run}/savedmodel/saved_model.pb" in keys
    assert f"{run}/savedmodel/variables/variables.index" in keys
    assert not [k for k in keys if k.startswith(f"{run}/checkpoints/")], "checkpoints left after success"

    model = keras.models.load_model(bucket.download(f"{run}/model.keras", tmp_path / "m.keras"))
    assert model.predict(np.zeros((2, 8), "float32"), verbose=0).shape == (2, 3)


def test_killed_training_resumes_from_s3_checkpoints(tmp_path: Path, bucket: Bucket) -> None:
    doc = tiny_job(
        training__epochs=6,
        data__train={"synthetic": {"samples": 6000, "inputShape": [8], "classes": 3}},
        training__batchSize=16,
    )
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,  # the bucket fixture put the AWS variables here
        "KERAS_TRAINER_TERMINATION_LOG": str(tmp_path / "term"),
        "KERAS_OPERATOR_LOG_FORMAT": "json",
    }
    cmd = train_command(config, bucket.url("runs/killed"))

    run = "runs/killed/runs/pod-uid"
    cmd = [*cmd, "--run-id", "pod-uid"]  # a retried pod: the same run
    assert kill_after_epoch(cmd, env, 2) == [1, 2]
    assert f"{run}/checkpoints/training_metadata.json" in bucket.keys("runs/killed/")
    assert f"{run}/model.keras" not in bucket.keys("runs/killed/")
    assert f"{run}/_COMPLETE.json" not in bucket.keys("runs/killed/")

    # The rerun has a new local staging folder: all it knows comes from the bucket.
    epochs, resumed = run_again(cmd, env)
    assert epochs[0] >= 3, "the second run started over instead of resuming"
    assert epochs[-1] == 6
    assert resumed
    keys = bucket.keys("runs/killed/")
    assert f"{run}/model.keras" in keys
    assert f"{run}/_COMPLETE.json" in keys
    assert not [k for k in keys if k.startswith(f"{run}/checkpoints/")]

    # Deleted and re-applied (a new uid, the same output): a new run, from epoch 1.
    epochs, resumed = run_again([*cmd[:-1], "new-uid"], env)
    assert (epochs[0], resumed) == (1, False)
    assert "runs/killed/runs/new-uid/model.keras" in bucket.keys("runs/killed/")


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_server_loads_a_model_from_s3(tmp_path: Path, bucket: Bucket, fmt: str) -> None:
    from helpers import models
    from keras_server.model import ServedModel

    model = models.load(models.single(tmp_path / "model.keras"))
    if fmt == "keras":
        uri = bucket.upload(tmp_path / "model.keras", "served/model.keras")
    else:
        model.export(str(tmp_path / "savedmodel"), verbose=False)
        for path in sorted(p for p in (tmp_path / "savedmodel").rglob("*") if p.is_file()):
            bucket.upload(path, f"served/savedmodel/{path.relative_to(tmp_path / 'savedmodel')}")
        uri = bucket.url("served/savedmodel")
    served = ServedModel.load(uri, "m")
    x = np.random.default_rng(3).normal(size=(2, 4)).astype("float32")
    out = served.predict({served.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(out.values())), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_a_folder_upload_cut_short_leaves_what_its_writer_wrote_first(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is uploaded file by file in the order Keras wrote it (weights, then the metadata naming
    their epoch): a trainer killed mid-upload never leaves a newer epoch number beside older weights."""
    import s3fs

    from keras_trainer import storage

    written = ["latest.weights.h5.bkp", "training_metadata.json.bkp", "latest.weights.h5", "training_metadata.json"]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for second, name in enumerate(written):
        (folder / name).write_text(name)
        os.utime(folder / name, (1_700_000_000 + second, 1_700_000_000 + second))
    upload = s3fs.S3FileSystem._put_file

    def dying_after(limit: int) -> Any:
        calls = []

        async def put_file(self: Any, lpath: str, rpath: str, *args: Any, **kw: Any) -> Any:
            calls.append(rpath)
            if len(calls) > limit:
                raise ConnectionAbortedError("killed")
            return await upload(self, lpath, rpath, *args, **kw)

        return put_file

    monkeypatch.setenv("KERAS_TRAINER_STORAGE_RETRIES", "1")  # the writer dies: nothing is retried
    for killed_after in range(len(written) + 1):
        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", dying_after(killed_after))
        forget_s3fs_state()  # an instance binds its sync methods when made: the next one sees the patch
        prefix = f"run{killed_after}/checkpoints"
        dies = killed_after < len(written)
        with (
            pytest.raises(storage.TransientStorageError, match="ConnectionAbortedError")
            if dies
            else contextlib.nullcontext()
        ):
            storage.publish(folder, bucket.url(prefix))
        assert bucket.keys(prefix + "/") == sorted(f"{prefix}/{n}" for n in written[:killed_after])


def test_the_s3_example_trains_against_an_s3_endpoint(
    s3_endpoint: str, bucket: Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/s3-training.yaml as a user runs it locally (`kerasop run`, AWS_* from the shell), with its
    own bucket name, against moto instead of AWS (`bucket` put the AWS_* variables in the environment)."""
    from kerasop import cli as kerasop

    example = Bucket(s3_endpoint, "my-bucket")
    if "my-bucket" not in {b["Name"] for b in example.client().list_buckets()["Buckets"]}:
        example.client().create_bucket(Bucket="my-bucket")
    for name in ("digits.npz", "digits-test.npz"):
        example.upload(ROOT / "examples" / "data" / name, f"datasets/{name}")

    code = kerasop.main(["run", str(ROOT / "examples" / "s3-training.yaml"), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    status = json.loads(out)["status"]
    assert status["phase"] == "Succeeded"
    run = "models/digits/runs/local"  # `kerasop run`'s run id
    assert status["modelUri"] == f"s3://my-bucket/{run}/model.keras"
    assert status["metrics"]["val_accuracy"] > 0.9
    keys = example.keys("models/digits/")
    assert {f"{run}/model.keras", f"{run}/savedmodel/saved_model.pb", f"{run}/_COMPLETE.json"} <= set(keys)
    assert not [k for k in keys if k.startswith(f"{run}/checkpoints/")]


def test_gcs_data_model_and_serving_through_an_emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gs:// goes through the same code as s3://; gcsfs finds an emulator through STORAGE_EMULATOR_HOST."""
    emulator = pytest.importorskip("gcp_storage_emulator.server", reason="pip install gcp-storage-emulator")
    import fsspec
    import gcsfs

    from helpers.server import free_port, get_json
    from keras_operator.api.parse import parse
    from keras_server.model import ServedModel
    from keras_trainer import train as training
    from keras_trainer.reporting import PodReporter

    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="gcs-test")
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setenv("FSSPEC_GS_TOKEN", "anon")  # no Google credentials against an emulator
    # gcsfs otherwise asks a gRPC API, which emulators lack, whether the bucket is hierarchical.
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        rng = np.random.default_rng(0)
        np.savez(tmp_path / "d.npz", x=rng.normal(size=(64, 8)).astype("float32"), y=np.arange(64) % 3)
        fsspec.filesystem("gs").put(str(tmp_path / "d.npz"), "gcs-test/datasets/d.npz")
        job = parse(
            tiny_job(
                data={"train": {"uri": "gs://gcs-test/datasets/d.npz"}}, output={"formats": ["keras", "savedmodel"]}
            )
        )
        result = training.run(job, "gs://gcs-test/runs/tiny", PodReporter())
        assert result.phase == "Succeeded", result.message
        run = "runs/tiny/runs/local"
        assert result.model_uri == f"gs://gcs-test/{run}/model.keras"

        code, listing = get_json(f"{endpoint}/storage/v1/b/gcs-test/o?prefix=runs/tiny/")  # the emulator's own API
        assert code == 200
        names = {item["name"] for item in listing.get("items", [])}
        assert {f"{run}/model.keras", f"{run}/savedmodel/saved_model.pb", f"{run}/_COMPLETE.json"} <= names
        assert not [n for n in names if n.startswith(f"{run}/checkpoints/")]

        for uri in (result.model_uri, f"gs://gcs-test/{run}/savedmodel"):
            served = ServedModel.load(uri, "m")
            out = served.predict({served.inputs[0].name: rng.normal(size=(2, 8)).astype("float32")})
            assert next(iter(out.values())).shape == (2, 3)
    finally:
        gcsfs.GCSFileSystem.clear_instance_cache()
        server.stop()


@pytest.mark.parametrize("failure", ["503", "reset"])
def test_an_s3_endpoint_that_fails_exits_1_after_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Transient: the Job retries the pod (exit 1), after the trainer itself tried a few times."""
    from helpers.flaky import flaky_http, resetting_port

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # botocore's own retries would only make the test slow
        "KERAS_TRAINER_STORAGE_RETRIES": "2",
        "KERAS_TRAINER_STORAGE_BACKOFF": "0.01",
    }.items():
        monkeypatch.setenv(key, value)
    with flaky_http() if failure == "503" else resetting_port() as endpoint:
        url = endpoint.url if failure == "503" else endpoint[0]
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        forget_s3fs_state()
        code, result = train(tmp_path, tiny_job(), "s3://some-bucket/runs/tiny", monkeypatch)
    forget_s3fs_state()
    assert code == 1, result.message
    assert result.reason == "TrainingError"
    assert "s3://some-bucket/runs/tiny/runs/local/checkpoints after 2 attempts" in result.message
    assert "\n" not in result.message
