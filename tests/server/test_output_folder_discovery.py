"""The model server given a training's output folder: it serves the newest complete run, says which, and
refuses a folder that is both an output folder and a base folder of versions. No Keras: the fast tier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keras_operator.api.jobfile import COMPLETE_MARKER
from keras_server import discovery
from keras_trainer import storage


def complete_run(output: Path, run_id: str, completed_at: str) -> None:
    folder = output / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"x")
    (folder / COMPLETE_MARKER).write_text(
        json.dumps({"runId": run_id, "formats": ["keras"], "completedAt": completed_at})
    )


def test_an_output_folder_is_its_newest_complete_run(tmp_path: Path) -> None:
    complete_run(tmp_path, "b-older", "2026-01-01T00:00:00.000000Z")
    complete_run(tmp_path, "a-newer", "2026-02-01T00:00:00.000000Z")
    found = discovery.output_run(str(tmp_path))
    assert found is not None
    assert found.uri == str(tmp_path / "runs" / "a-newer" / "model.keras")
    assert found.run == {
        "runId": "a-newer",
        "completedAt": "2026-02-01T00:00:00.000000Z",
        "modelUri": found.uri,
        "output": str(tmp_path),
    }


def test_a_base_folder_of_versions_is_no_output_folder(tmp_path: Path) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.keras").write_bytes(b"x")
    assert discovery.output_run(str(tmp_path)) is None
    assert set(discovery.discover(str(tmp_path))) == {1}


def test_runs_beside_numbered_versions_is_refused_as_ambiguous(tmp_path: Path) -> None:
    complete_run(tmp_path, "r", "2026-01-01T00:00:00.000000Z")
    (tmp_path / "2").mkdir()
    with pytest.raises(storage.StorageError, match="both a training's runs/ and numbered versions"):
        discovery.output_run(str(tmp_path))


def test_an_output_folder_with_no_complete_run_says_so(tmp_path: Path) -> None:
    (tmp_path / "runs" / "still-training").mkdir(parents=True)
    with pytest.raises(storage.StorageError, match="no complete run"):
        discovery.output_run(str(tmp_path))
