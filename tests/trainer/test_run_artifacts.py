"""Run-scoped, atomic outputs: each run writes under OUTPUT/runs/RUN_ID, resumes only its own
checkpoints, and a model is visible only once complete."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers.jobs import tiny_job
from helpers.lazy import lazy
from keras_operator.api import jobfile
from keras_operator.api.parse import parse
from keras_operator.api.report import EpochReport
from keras_trainer.reporting import PodReporter

train = lazy("keras_trainer.train")  # Keras and TensorFlow load with the first test that trains
pytestmark = pytest.mark.slow  # every test trains a model


@pytest.fixture(autouse=True)
def _termination_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "termination-log"))


class Crash(Exception):
    """Stands in for the pod dying (OOM, node lost) after an epoch's checkpoint was written."""


class Recording(PodReporter):
    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__()
        self.crash_after, self.epochs, self.initial = crash_after, [], 0

    def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
        self.initial = initial_epoch
        super().begin(epochs=epochs, initial_epoch=initial_epoch, steps=steps)

    def epoch(self, report: EpochReport) -> None:
        self.epochs.append(report.epoch)
        super().epoch(report)
        if report.epoch == self.crash_after:
            raise Crash(f"killed after epoch {report.epoch}")


def job(output: str, run_id: str, epochs: int) -> jobfile.TrainerJob:
    return jobfile.from_resource(
        parse(tiny_job("tiny", output={"uri": output}, training__epochs=epochs)), run_id=run_id
    )


def test_outputs_live_under_the_run_and_model_uri_names_them(tmp_path: Path) -> None:
    result = train.run(job(str(tmp_path / "out"), "uid-1", 1), None, Recording())
    assert result.phase == "Succeeded", result.message
    prefix = tmp_path / "out" / "runs" / "uid-1"
    assert result.model_uri == str(prefix / "model.keras")
    assert sorted(p.name for p in prefix.iterdir()) == ["_COMPLETE.json", "model.keras"]  # no checkpoints left
    marker = json.loads((prefix / "_COMPLETE.json").read_text())
    # When the model was in place, which decides the newest complete run of an output folder.
    completed = datetime.strptime(marker.pop("completedAt"), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - completed).total_seconds()) < 600
    assert marker == {
        "runId": "uid-1",
        "modelUri": result.model_uri,
        "formats": ["keras"],
        "epoch": 1,
        "epochs": 1,
    }


def test_a_retried_pod_resumes_its_own_run(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    first = Recording(crash_after=2)
    assert train.run(job(out, "uid-1", 4), None, first).phase == "Failed"
    checkpoints = tmp_path / "out" / "runs" / "uid-1" / "checkpoints"
    record = {"runId": "uid-1", "specHash": job(out, "uid-1", 4).spec_hash()}
    assert json.loads((checkpoints / "run.json").read_text()) == record
    assert not (checkpoints.parent / "model.keras").exists()
    again = Recording()
    result = train.run(job(out, "uid-1", 4), None, again)
    assert result.phase == "Succeeded", result.message
    assert again.initial == 2
    assert again.epochs == [3, 4]


def test_delete_and_reapply_is_a_new_run_that_never_resumes_the_old_checkpoints(tmp_path: Path) -> None:
    """The old run got to epoch 3; the re-applied resource (a new uid, the same output.uri) asks for 2 epochs:
    resuming would "succeed" at once with the old run's weights."""
    out = str(tmp_path / "out")
    assert train.run(job(out, "old-uid", 5), None, Recording(crash_after=3)).phase == "Failed"
    old = tmp_path / "out" / "runs" / "old-uid"
    assert (old / "checkpoints" / "training_metadata.json").exists()

    new = Recording()
    result = train.run(job(out, "new-uid", 2), None, new)
    assert result.phase == "Succeeded", result.message
    assert (new.initial, new.epochs) == (0, [1, 2])
    assert result.model_uri == str(tmp_path / "out" / "runs" / "new-uid" / "model.keras")
    assert (old / "checkpoints" / "training_metadata.json").exists()  # the old run's files are left alone


def test_a_checkpoint_copied_from_another_run_is_not_resumed(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    assert train.run(job(out, "old-uid", 5), None, Recording(crash_after=3)).phase == "Failed"
    runs = tmp_path / "out" / "runs"
    shutil.copytree(runs / "old-uid" / "checkpoints", runs / "new-uid" / "checkpoints")
    new = Recording()
    result = train.run(job(out, "new-uid", 2), None, new)
    assert result.phase == "Succeeded", result.message
    assert (new.initial, new.epochs) == (0, [1, 2])
    # Nor one without a record of its run (written before runs had ids).
    assert train.run(job(out, "third", 5), None, Recording(crash_after=3)).phase == "Failed"
    (runs / "third" / "checkpoints" / "run.json").unlink()
    again = Recording()
    assert train.run(job(out, "third", 2), None, again).phase == "Succeeded"
    assert (again.initial, again.epochs) == (0, [1, 2])


def test_a_crash_mid_save_leaves_no_model_at_the_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    out = str(tmp_path / "out")
    prefix = tmp_path / "out" / "runs" / "uid-1"
    real_save = keras.Model.save
    seen: list[tuple[str, bool]] = []

    def dying_save(self: keras.Model, filepath: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((Path(filepath).name, (prefix / "model.keras").exists()))
        Path(filepath).write_bytes(b"PK\x03\x04 half a zip")  # what a killed writer leaves
        raise Crash("killed while saving")

    monkeypatch.setattr(keras.Model, "save", dying_save)
    result = train.run(job(out, "uid-1", 1), None, Recording())
    assert result.phase == "Failed"
    assert seen
    assert seen[0][0] != "model.keras"  # written under another name...
    assert not (prefix / "model.keras").exists()  # ...so the final name never holds a part of a model
    assert not (prefix / "_COMPLETE.json").exists()

    # The retried pod cleans up the pieces and saves whole; the final name appears only complete.
    def watched_save(self: keras.Model, filepath: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((Path(filepath).name, (prefix / "model.keras").exists()))
        real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", watched_save)
    result = train.run(job(out, "uid-1", 1), None, Recording())
    assert result.phase == "Succeeded", result.message
    assert seen[1][0] != "model.keras"
    assert seen[1][1] is False  # nothing at the final name while the model was being written
    assert sorted(p.name for p in prefix.iterdir()) == ["_COMPLETE.json", "model.keras"]  # no partial files
    assert keras.models.load_model(result.model_uri).output_shape == (None, 3)


def test_a_retry_of_a_saved_run_replaces_the_model_atomically(tmp_path: Path) -> None:
    """A pod that saved and died before reporting is retried: the committed model is replaced whole, and
    the marker is taken down first so it never vouches for a half-replaced model."""
    out = str(tmp_path / "out")
    spec = tiny_job("tiny", output={"uri": out, "formats": ["keras", "savedmodel"]}, training__epochs=1)
    trainer_job = jobfile.from_resource(parse(spec), run_id="uid-1")
    assert train.run(trainer_job, None, Recording()).phase == "Succeeded"
    prefix = tmp_path / "out" / "runs" / "uid-1"
    before = (prefix / "savedmodel" / "saved_model.pb").stat().st_ino
    result = train.run(trainer_job, None, Recording())
    assert result.phase == "Succeeded", result.message
    assert (prefix / "savedmodel" / "saved_model.pb").stat().st_ino != before
    assert sorted(p.name for p in prefix.iterdir()) == ["_COMPLETE.json", "model.keras", "savedmodel"]


def test_on_object_storage_the_marker_goes_up_after_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// stands in for s3:// and gs://: the same fsspec code path."""
    from keras_trainer import storage

    order: list[str] = []
    publish, write_text = storage.publish, storage.write_text

    def recording_publish(local: Path, uri: str) -> None:
        order.append(uri.rsplit("/", 1)[-1])
        publish(local, uri)

    def recording_write(uri: str, text: str) -> None:
        order.append(uri.rsplit("/", 1)[-1])
        write_text(uri, text)

    monkeypatch.setattr(storage, "publish", recording_publish)
    monkeypatch.setattr(storage, "write_text", recording_write)
    spec = tiny_job("tiny", output={"uri": "memory://bucket/m", "formats": ["keras", "savedmodel"]})
    result = train.run(jobfile.from_resource(parse(spec), run_id="uid-9"), None, Recording())
    assert result.phase == "Succeeded", result.message
    assert result.model_uri == "memory://bucket/m/runs/uid-9/model.keras"
    assert order[-3:] == ["savedmodel", "model.keras", "_COMPLETE.json"]
    assert set(order[:-3]) == {"checkpoints"}  # every epoch, before the model


def test_kerasop_run_never_resumes_the_checkpoint_of_another_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `kerasop run` is run `local`: a run stopped at epoch 3 of 400, then the spec edited to 2
    epochs and run into the same output, must train its 2 epochs, not "succeed" at once with the first
    spec's weights; and it says why it did not resume."""
    from kerasop import cli

    out = tmp_path / "out"
    first = job(str(out), jobfile.LOCAL_RUN_ID, 400)
    assert train.run(first, None, Recording(crash_after=3)).phase == "Failed"
    checkpoints = out / "runs" / "local" / "checkpoints"
    assert (checkpoints / "training_metadata.json").exists()

    edited = tiny_job("tiny", output={"uri": str(out)}, training__epochs=2)
    path = tmp_path / "edited.yaml"
    path.write_text(json.dumps(edited))
    monkeypatch.setenv("KERAS_OPERATOR_PVC_ROOT", str(tmp_path / "pvc"))  # kerasop sets it for the process
    capsys.readouterr()
    assert cli.main(["run", str(path), "-o", "json"]) == 0
    printed = capsys.readouterr()
    status = json.loads(printed.out)["status"]
    ours = jobfile.from_resource(parse(edited), output_uri=str(out)).spec_hash()
    why = f"checkpoint from a different spec (hash {first.spec_hash()}, this run {ours})"
    assert status["message"] == f"trained 2/2 epochs ({why}: started fresh)"
    assert f"{why}: starting fresh" in printed.err  # the log line, as it happens
    assert "resuming" not in printed.err
    assert [line.split()[1] for line in printed.err.splitlines() if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert not checkpoints.exists()  # finished: nothing left for a later run to mistake for its own


def test_the_same_spec_still_resumes_whatever_its_output_settings(tmp_path: Path) -> None:
    """Where and how the model is saved is no part of the spec's hash: changing it resumes as before."""
    out = str(tmp_path / "out")
    assert train.run(job(out, jobfile.LOCAL_RUN_ID, 4), None, Recording(crash_after=2)).phase == "Failed"
    spec = tiny_job(
        "renamed",
        output={"uri": out, "formats": ["savedmodel"], "tensorboard": True},
        training__epochs=4,
        resources={"cpu": "2"},
    )
    again = Recording()
    result = train.run(jobfile.from_resource(parse(spec), run_id=jobfile.LOCAL_RUN_ID), None, again)
    assert result.phase == "Succeeded", result.message
    assert (again.initial, again.epochs) == (2, [3, 4])
    assert result.message == "trained 4/4 epochs"


def test_a_checkpoint_recorded_before_specs_were_hashed_is_not_resumed(tmp_path: Path) -> None:
    """Its record names the run but not the spec: it may be another spec's, so it is not trusted."""
    out = str(tmp_path / "out")
    assert train.run(job(out, "uid-1", 5), None, Recording(crash_after=3)).phase == "Failed"
    record = tmp_path / "out" / "runs" / "uid-1" / "checkpoints" / "run.json"
    record.write_text(json.dumps({"runId": "uid-1"}))
    again = Recording()
    result = train.run(job(out, "uid-1", 2), None, again)
    assert (again.initial, again.epochs) == (0, [1, 2])
    assert "checkpoint from a different spec (hash unrecorded, this run " in result.message
