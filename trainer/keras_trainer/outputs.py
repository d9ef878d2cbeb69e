"""A training's output folder (spec.output.uri) named where a model is expected: it stands for the model of
its newest complete run, for model.uri of both kinds (the trainer's starting model, the model server's).

OUTPUT/runs/RUN_ID/ is a run's folder; a run is complete once its COMPLETE_MARKER is there (written last,
runs.Workspace.commit). "Newest" is the marker's `completedAt` (RFC 3339, UTC, written by the trainer when
the model was in place), never the listing's order; markers without one (written before the field) count
as older than any that has one, and among equal times the greater run id wins, so the choice is one.

Nothing here loads a model: the caller loads what `newest_run` names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from keras_operator.api.jobfile import COMPLETE_MARKER, RUNS_DIR
from keras_operator.api.training_job import MODEL_FILE, SAVEDMODEL_DIR
from keras_trainer import storage


class NoCompleteRun(storage.StorageError):
    """An output folder without a run whose model is complete."""


@dataclass(frozen=True)
class CompleteRun:
    run_id: str
    model_uri: str
    """The run's model under the folder as the caller named it (the .keras file, else the SavedModel)."""
    completed_at: str


def is_output_folder(uri: str) -> bool:
    """Whether `uri` is a training's output folder (it holds RUNS_DIR/), not a model nor a folder of
    numbered versions. StorageError when the URI names nothing."""
    if uri.rstrip("/").endswith(".keras"):
        return False
    return any(e.folder and e.name == RUNS_DIR for e in storage.listing(uri))


def _record(uri: str) -> dict[str, Any] | None:
    try:
        record = json.loads(storage.read_text(uri) or "null")
    except ValueError:
        return None  # a marker is written whole; an unreadable one vouches for nothing
    return record if isinstance(record, dict) else None


def newest_run(output: str) -> CompleteRun:
    """The newest complete run in output folder `output`. NoCompleteRun naming the folder when none is."""
    runs = storage.join(output, RUNS_DIR)
    found: list[CompleteRun] = []
    for entry in storage.listing(runs):
        if not entry.folder:
            continue
        folder = storage.join(runs, entry.name)
        record = _record(storage.join(folder, COMPLETE_MARKER))
        if record is None:
            continue  # still training, failed, or being replaced
        formats = record.get("formats") or ["keras"]
        model = MODEL_FILE if "keras" in formats else SAVEDMODEL_DIR
        found.append(CompleteRun(entry.name, storage.join(folder, model), str(record.get("completedAt") or "")))
    if not found:
        raise NoCompleteRun(
            f"{output} is a training's output folder with no complete run yet (no {RUNS_DIR}/RUN_ID/"
            f"{COMPLETE_MARKER}); name a model file, or wait for the training to succeed"
        )
    return max(found, key=lambda run: (run.completed_at, run.run_id))


def resolve(uri: str) -> tuple[str, CompleteRun | None]:
    """(the model `uri` stands for, the run it was taken from when it is an output folder). A URI that is
    no folder, or names nothing, is returned as it is: loading it says what is wrong."""
    try:
        folder = is_output_folder(uri)
    except storage.StorageError:
        folder = False
    if not folder:
        return uri, None
    run = newest_run(uri)
    return run.model_uri, run
