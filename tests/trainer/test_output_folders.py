"""A training's output folder named as a model: its newest complete run's model, by the completion record's
time; incomplete runs ignored; none complete is a clear error. Files only: no Keras, part of the fast tier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keras_operator.api.jobfile import COMPLETE_MARKER
from keras_trainer import outputs, storage


def run(output: Path, run_id: str, completed_at: str | None, formats: tuple[str, ...] = ("keras",)) -> Path:
    """A run folder; with a marker when `completed_at` is not None ("" for a marker without the field)."""
    folder = output / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"model of " + run_id.encode())
    if completed_at is not None:
        record = {"runId": run_id, "formats": list(formats)}
        if completed_at:
            record["completedAt"] = completed_at
        (folder / COMPLETE_MARKER).write_text(json.dumps(record))
    return folder


def test_the_newest_complete_run_is_by_its_completion_time_not_its_name(tmp_path: Path) -> None:
    # Names sort the other way round from completion: listing order must not decide.
    run(tmp_path, "zzz-old", "2026-01-01T10:00:00.000000Z")
    run(tmp_path, "aaa-new", "2026-01-02T10:00:00.000000Z")
    run(tmp_path, "mmm-unfinished", None)  # still training: no marker
    uri, found = outputs.resolve(str(tmp_path))
    assert found is not None
    assert found.run_id == "aaa-new"
    assert uri == str(tmp_path / "runs" / "aaa-new" / "model.keras")


def test_an_incomplete_newer_run_is_ignored(tmp_path: Path) -> None:
    run(tmp_path, "done", "2026-01-01T10:00:00.000000Z")
    broken = run(tmp_path, "later", None)
    (broken / COMPLETE_MARKER).write_text("{not json")  # an unreadable marker vouches for nothing
    assert outputs.newest_run(str(tmp_path)).run_id == "done"


def test_markers_without_a_time_are_older_than_any_with_one(tmp_path: Path) -> None:
    run(tmp_path, "zz-before-the-field", "")
    run(tmp_path, "aa-timed", "2020-01-01T00:00:00.000000Z")
    assert outputs.newest_run(str(tmp_path)).run_id == "aa-timed"


def test_a_savedmodel_only_run_names_its_savedmodel(tmp_path: Path) -> None:
    run(tmp_path, "r1", "2026-01-01T00:00:00.000000Z", formats=("savedmodel",))
    assert outputs.newest_run(str(tmp_path)).model_uri.endswith("runs/r1/savedmodel")


def test_no_complete_run_is_a_clear_error(tmp_path: Path) -> None:
    run(tmp_path, "running", None)
    with pytest.raises(outputs.NoCompleteRun, match="no complete run"):
        outputs.resolve(str(tmp_path))


def test_a_model_file_or_a_missing_path_is_left_as_it_is(tmp_path: Path) -> None:
    model = run(tmp_path, "r", "2026-01-01T00:00:00.000000Z") / "model.keras"
    assert outputs.resolve(str(model)) == (str(model), None)
    missing = str(tmp_path / "nothing")
    assert outputs.resolve(missing) == (missing, None)
    versions = tmp_path / "base"
    (versions / "1").mkdir(parents=True)
    assert outputs.resolve(str(versions)) == (str(versions), None)  # numbered versions: not an output folder


@pytest.mark.usefixtures("local_pvc_root")
def test_pvc_uris_resolve_within_the_claim(tmp_path: Path) -> None:
    output = storage.local_path("pvc://models/base")
    run(output, "uid-1", "2026-01-01T00:00:00.000000Z")
    uri, found = outputs.resolve("pvc://models/base")
    assert found is not None
    assert uri == "pvc://models/base/runs/uid-1/model.keras"
