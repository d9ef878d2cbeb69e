"""A run's output folder: OUTPUT/runs/RUN_ID, local or staged from object storage, holding the run's
checkpoints (resumed only by the run and spec that wrote them) and its saved model (written whole or
not at all, COMPLETE_MARKER last)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import structlog

from keras_operator.api import jobfile
from keras_operator.api.training_job import CHECKPOINT_DIR, MODEL_FILE, SAVEDMODEL_DIR, OutputSpec
from keras_trainer import storage, usercode

log = structlog.get_logger("keras_trainer")


class Workspace:
    """One run's own output folder (OUTPUT/runs/RUN_ID) as a local folder; remote outputs are staged
    locally and uploaded.

    What it holds is the run's alone: checkpoints are resumed only by the run that wrote them, training
    the same spec (their RUN_RECORD says which run and which TrainerJob.spec_hash), and a model counts as
    written only once COMPLETE_MARKER is there, written after every file of the model is in place.

    A reader (a worker other than worker 0 of several) never writes to the output: its local folder is
    a private scratch folder, into which it copies worker 0's last checkpoint to resume from.
    """

    def __init__(self, prefix: str, run_id: str, spec_hash: str, writer: bool = True) -> None:
        self.uri = prefix
        self.run_id = run_id
        self.spec_hash = spec_hash
        self.writer = writer
        # Why a checkpoint found in the run's folder was not resumed: the result says it, as a user who
        # ran the same command again expects a resume.
        self.not_resumed: str | None = None
        self.remote = storage.is_remote(prefix)
        private = self.remote or not writer
        self.local = Path(tempfile.mkdtemp(prefix="keras-out-")) if private else storage.local_path(prefix)
        self.local.mkdir(parents=True, exist_ok=True)
        for partial in self.local.glob(".*partial*"):  # a save cut short by a crash in an earlier attempt
            shutil.rmtree(partial) if partial.is_dir() else partial.unlink(missing_ok=True)

    def restore_checkpoints(self) -> Path:
        """The checkpoint folder for BackupAndRestore: this run's last checkpoint if there is one, else empty."""
        folder = self.local / CHECKPOINT_DIR
        remote = storage.join(self.uri, CHECKPOINT_DIR)
        if not self.writer:
            return self._copy_checkpoints(remote, folder)
        if self.remote and storage.exists(remote):
            storage.fetch(remote, self.local)
        if folder.exists() and (why := self._foreign(folder)):
            # Resuming it would continue another training (and, past our epochs, "finish" without
            # training at all): the same output may hold another run's, or, under one run id (every
            # `kerasop run` is `local`), an edited spec's.
            if any(p.name != jobfile.RUN_RECORD for p in folder.iterdir()):  # more than a record: a checkpoint
                self.not_resumed = why
                log.warning("checkpoint_not_resumed", path=str(remote), reason=f"{why}: starting fresh")
            shutil.rmtree(folder)
            storage.remove(remote)
        folder.mkdir(parents=True, exist_ok=True)
        record = folder / jobfile.RUN_RECORD
        if not record.exists():  # written first, so it is also the first file uploaded
            record.write_text(json.dumps({"runId": self.run_id, "specHash": self.spec_hash}))
        return folder

    def _foreign(self, folder: Path) -> str | None:
        """Why the checkpoint in `folder` is not this training's to resume, or None when it is."""
        record = checkpoint_record(folder)
        owner = record.get("runId")
        if owner != self.run_id:  # copied from elsewhere, or written before runs had ids
            return f"checkpoint of another run ({owner or 'unrecorded'}, this run {self.run_id})"
        theirs = record.get("specHash")
        if theirs != self.spec_hash:  # also one written before specs were hashed: it may be another's
            return f"checkpoint from a different spec (hash {theirs or 'unrecorded'}, this run {self.spec_hash})"
        return None

    def _copy_checkpoints(self, source: str, folder: Path) -> Path:
        """A reader's copy of worker 0's checkpoint. Worker 0 decides the same way from the same files
        (it alone removes another run's), and writes none before every worker is past this point: its
        first checkpoint needs every worker's first epoch."""
        if storage.exists(source):
            if self.remote:
                storage.fetch(source, self.local)
            else:
                shutil.copytree(storage.local_path(source), folder, dirs_exist_ok=True)
        if folder.exists() and self._foreign(folder):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def finish_checkpoints(self) -> None:
        """A finished training must not be "resumed" by a retry of the same run (Keras already removed
        the local copy)."""
        if self.writer:
            storage.remove(storage.join(self.uri, CHECKPOINT_DIR))

    def discard(self) -> None:
        """A reader's scratch folder goes when its training ends."""
        if not self.writer:
            shutil.rmtree(self.local, ignore_errors=True)

    def push(self, name: str) -> None:
        if self.writer and self.remote and (self.local / name).exists():
            storage.publish(self.local / name, storage.join(self.uri, name))

    def commit(
        self,
        model: keras.Model,
        output: OutputSpec,
        result: dict[str, Any],
        code: usercode.Code | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> tuple[str, str | None]:
        """Save the model so that no reader ever sees a part of it. -> (the model's URI, the hash of the
        code recorded beside it).

        The code the run trained with is recorded first (CODE_FOLDER, CODE_RECORD); `check` is given the
        saved model (the .keras file when there is one) before the marker is written: raising there
        leaves the run incomplete.

        Locally each format is written under a temporary name in the same folder and renamed into place
        (os.replace: atomic on one filesystem). On object storage, which has no rename, the files are
        uploaded (each object appears only once complete) and the marker goes up after all of them.
        In both, COMPLETE_MARKER is written last and removed first, so it never vouches for a model
        that is being replaced (a retry of a run that already saved).
        """
        marker = storage.join(self.uri, jobfile.COMPLETE_MARKER)
        (self.local / jobfile.COMPLETE_MARKER).unlink(missing_ok=True)
        storage.remove(marker)
        token = secrets.token_hex(4)
        formats = output.formats
        code_hash = None
        if code is not None:
            code_hash = usercode.record(code, self.local)
            self.push(jobfile.CODE_FOLDER)
            self.push(jobfile.CODE_RECORD)
        if "savedmodel" in formats:
            partial = self.local / f".{SAVEDMODEL_DIR}.{token}.partial"
            model.export(str(partial), verbose=False)
            replace_folder(partial, self.local / SAVEDMODEL_DIR)
            self.push(SAVEDMODEL_DIR)
        if "keras" in formats:
            partial = self.local / f".{token}.partial.{MODEL_FILE}"  # Keras insists on the .keras suffix
            model.save(partial)
            os.replace(partial, self.local / MODEL_FILE)
            self.push(MODEL_FILE)
        if check is not None:
            check(self.local / output.model_path())
        model_uri = storage.join(self.uri, output.model_path())
        record = {"runId": self.run_id, "modelUri": model_uri, "formats": list(formats), **result}
        # What "the newest complete run" of an output folder is decided by (keras_trainer.outputs).
        record["completedAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if code_hash:
            record["codeHash"] = code_hash
        storage.write_text(marker, json.dumps(record, separators=(",", ":")))
        return model_uri, code_hash


def replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`; a reader sees the old folder or the new one, or (for an instant,
    when replacing) none, never a mix."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def checkpoint_record(folder: Path) -> dict[str, str]:
    """The checkpoint's RUN_RECORD ({} when there is none, or it is unreadable: then it vouches for nothing)."""
    try:
        record = json.loads((folder / jobfile.RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {key: str(value) for key, value in record.items() if key in ("runId", "specHash") and value}
