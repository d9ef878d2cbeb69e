"""Options a new user tries first, each of which once failed: TensorBoard, a backend the image lacks,
the seed's range, optimizer and metric names as Keras takes them, quiet start-up, serving a SavedModel."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.jobs import tiny_job, write_job
from helpers.manifests import ROOT
from keras_operator.api import jobfile
from keras_operator.api.model_service import KerasModelService
from keras_operator.api.parse import InvalidResource, parse
from keras_operator.builders.training_manifests import build_job, desired_suspend, job_spec_hash
from keras_operator.status.training_status import tensorboard_uri
from kerasop import cli

pytestmark = pytest.mark.usefixtures("local_pvc_root")


def run(tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = cli.main(["run", write_job(tmp_path, doc), "-o", "json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out)["status"] if out.strip() else {}), err


@pytest.mark.slow
def test_tensorboard_logs_are_written_uploaded_and_named_in_the_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    from keras_trainer import train
    from keras_trainer.reporting import PodReporter

    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    job = parse(tiny_job(output={"tensorboard": True}))
    fs = fsspec.filesystem("memory")
    seen: list[int] = []

    class Watching(PodReporter):
        def epoch(self, report: Any) -> None:  # the logs reach a remote output every epoch, not only at the end
            seen.append(len(fs.find("/tb/run/runs/local/logs")))
            super().epoch(report)

    result = train.run(job, "memory://tb/run", Watching())
    assert result.phase == "Succeeded", result.message
    assert seen[0] > 0
    events = [p for p in fs.find("/tb/run/runs/local/logs") if "events.out.tfevents" in p]
    assert any("/train/" in p for p in events)
    assert any("/validation/" in p for p in events)
    prefix = jobfile.run_prefix("memory://tb/run", jobfile.LOCAL_RUN_ID)  # the run's own folder
    assert tensorboard_uri(prefix, job.spec.output.tensorboard) == "memory://tb/run/runs/local/logs"


@pytest.mark.slow
def test_kerasop_run_with_tensorboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, status, err = run(tmp_path, tiny_job("tb", output={"uri": "pvc://models/tb", "tensorboard": True}), capsys)
    assert code == 0, err
    assert status["tensorboardUri"] == "pvc://models/tb/runs/local/logs"
    assert list((tmp_path / "pvc" / "models" / "tb" / "runs" / "local" / "logs" / "train").glob("events.out.tfevents*"))


def test_operator_status_names_the_tensorboard_logs() -> None:
    assert tensorboard_uri("s3://b/run/", True) == "s3://b/run/logs"
    assert tensorboard_uri("s3://b/run", False) is None
    assert tensorboard_uri(None, True) is None


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.slow
def test_a_backend_the_image_lacks_is_an_invalid_spec(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == backend else real(name, *a))
    doc = tiny_job(backend=backend, output={"uri": str(tmp_path / "out")})
    term = tmp_path / "term"
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(term))
    from keras_trainer import cli as trainer_cli

    assert trainer_cli.main(["train", "--config", write_job(tmp_path, doc)]) == 2  # not retried by the Job
    result = json.loads(term.read_text())
    assert result["reason"] == "InvalidSpec"
    assert result["message"].startswith(f"spec.backend: the {backend} backend is not installed")
    assert "\n" not in result["message"]
    capsys.readouterr()
    code, _, err = run(tmp_path, doc, capsys)  # kerasop run: the same one line, exit 2
    assert code == 2
    assert f"error: spec.backend: the {backend} backend is not installed" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("seed", "ok"), [(0, True), (2**32 - 1, True), (-1, False), (2**32, False)])
def test_seed_range(seed: int, ok: bool) -> None:
    doc = tiny_job(training__seed=seed)
    if ok:
        assert parse(doc).spec.training.seed == seed
    else:
        with pytest.raises(InvalidResource, match=r"spec\.training\.seed"):
            parse(doc)


def test_seed_range_is_in_the_crd() -> None:
    crd = yaml.safe_load((ROOT / "crds" / "kerastrainingjobs.kerasoperator.dev.yaml").read_text())
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    seed = training["properties"]["seed"]
    assert (seed["minimum"], seed["maximum"]) == (0, 2**32 - 1)


@pytest.mark.slow
def test_optimizer_by_name_and_metrics_under_the_names_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tiny_job(  # a regression: one float target, so mae and mse make sense
        "names",
        model__layers=[{"type": "Dense", "units": 8, "activation": "relu"}, {"type": "Dense", "units": 1}],
        data__train={"synthetic": {"samples": 256, "inputShape": [8], "classes": 0}},
        training__optimizer="sgd",
        training__loss="mse",
        training__metrics=["mae", "mse"],
    )
    assert parse(doc).spec.training.optimizer.name == "sgd"
    code, status, err = run(tmp_path, doc, capsys)
    assert code == 0, err
    assert {"mae", "val_mae", "mse", "val_mse", "loss"} <= set(status["metrics"])
    assert "mean_absolute_error" not in json.dumps(status)
    assert "mean_squared_error" not in json.dumps(status)


def test_unknown_optimizer_name_is_still_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(tmp_path, tiny_job(training__optimizer="adamm"), capsys)
    assert code == 2
    # Refused before training by the Keras catalogue (the trainer's own check says the same on a custom image).
    assert "spec.training.optimizer.name: unknown optimizer 'adamm'" in err
    assert "did you mean 'adam'?" in err


@pytest.mark.slow
def test_no_tensorflow_start_up_noise(tmp_path: Path) -> None:
    """TensorFlow's C++ lines (`failed call to cuInit`, oneDNN notes) read as errors to a user."""
    path = write_job(tmp_path, tiny_job("quiet", training__epochs=1))
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kerasop"), "run", path],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    noisy = [
        line
        for line in result.stderr.splitlines()
        if (line[:1] in "IWEF" and line[1:5].isdigit()) or "absl::InitializeLog" in line or "cuInit" in line
    ]
    assert not noisy, noisy
    assert "epoch 1/1" in result.stderr


def test_serving_the_savedmodel_of_a_job_that_exported_only_that(tmp_path: Path) -> None:
    job = parse(tiny_job("sm", output={"uri": "pvc://models/sm", "formats": ["savedmodel"]}))
    service = parse(
        {
            "apiVersion": "kerasoperator.dev/v1alpha1",
            "kind": "KerasModelService",
            "metadata": {"name": "sm"},
            "spec": {"model": {"trainingJobRef": {"name": "sm"}}},
        }
    )
    assert isinstance(service, KerasModelService)
    assert cli.trained_model_uri(service, [job, service], local=True) == "pvc://models/sm/runs/local/savedmodel"
    both = parse(tiny_job("sm", output={"uri": "pvc://models/sm", "formats": ["keras", "savedmodel"]}))
    assert cli.trained_model_uri(service, [both, service], local=True) == "pvc://models/sm/runs/local/model.keras"


def test_suspend_is_not_a_spec_change_and_kueue_owns_queued_jobs() -> None:
    running, paused = parse(tiny_job()).spec, parse(tiny_job(runPolicy={"suspend": True})).spec
    assert job_spec_hash(running) == job_spec_hash(paused)  # flipping it keeps SpecApplied=True
    assert job_spec_hash(running) != job_spec_hash(parse(tiny_job(training__epochs=3)).spec)
    assert (desired_suspend(running), desired_suspend(paused)) == (False, True)
    queued = parse(tiny_job(runPolicy={"queueName": "team-a", "suspend": False})).spec
    assert desired_suspend(queued) is None
    owner = {"apiVersion": "kerasoperator.dev/v1alpha1", "kind": "KerasTrainingJob", "metadata": {"name": "t"}}
    assert build_job(owner, queued, "img")["spec"]["suspend"] is True  # created suspended for Kueue to admit


def test_the_image_follows_the_backend_and_spec_image_still_wins(tmp_path: Path) -> None:
    from keras_operator.runtime.settings import Settings

    settings = Settings.from_env(
        {"KERAS_OPERATOR_TRAINER_IMAGE": "r/t:1", "KERAS_OPERATOR_TRAINER_IMAGE_JAX": "r/jax:2"}
    )
    owner = {"apiVersion": "kerasoperator.dev/v1alpha1", "kind": "KerasTrainingJob", "metadata": {"name": "t"}}
    images = {}
    for backend in ("tensorflow", "jax", "torch"):
        spec = parse(tiny_job(backend=backend)).spec
        images[backend] = build_job(owner, spec, settings.image_for(backend))["spec"]["template"]["spec"]["containers"][
            0
        ]["image"]
    assert images == {"tensorflow": "r/t:1", "jax": "r/jax:2", "torch": "r/t:1-torch"}
    assert Settings.from_env({"KERAS_OPERATOR_TRAINER_IMAGE": "r/t:1"}).image_for("jax") == "r/t:1-jax"
    own = parse(tiny_job(backend="jax", image="mine:2")).spec
    assert (
        build_job(owner, own, settings.image_for("jax"))["spec"]["template"]["spec"]["containers"][0]["image"]
        == "mine:2"
    )
