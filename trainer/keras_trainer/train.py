"""Runs one training (a TrainerJob): data -> model -> fit (with checkpoints) -> save -> evaluate."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import structlog

from keras_operator.api import jobfile
from keras_operator.api.jobfile import TrainerJob
from keras_operator.api.report import EpochReport, TrainingResult, clean_metrics
from keras_operator.api.training import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    SAVEDMODEL_DIR,
    TENSORBOARD_DIR,
    KerasTrainingJob,
    OutputSpec,
)
from keras_trainer import data as data_mod
from keras_trainer import distribute, keras_compat, models, storage
from keras_trainer.errors import SpecError, TransientError, first_line
from keras_trainer.reporting import Reporter

log = structlog.get_logger("keras_trainer")


class _Progress(keras.callbacks.Callback):
    """Bridges Keras callbacks to a Reporter and remembers the latest epoch for the final result."""

    def __init__(
        self,
        reporter: Reporter,
        epochs: int,
        steps: int | None,
        samples: int | None,
        devices: int,
        on_epoch: Any = None,
    ) -> None:
        super().__init__()
        self.reporter, self.epochs, self.steps, self.on_epoch = reporter, epochs, steps, on_epoch
        self.devices = devices
        self.samples = samples  # training examples per epoch, when known (arrays; not a tf.data stream)
        self.last: EpochReport | None = None
        self.initial = 0
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        initial = keras_compat.initial_epoch(self.model)  # past 0 when BackupAndRestore resumed
        self.initial = initial
        self.reporter.begin(epochs=self.epochs, initial_epoch=initial, steps=self.steps)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.reporter.batch(batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self._started  # fit, validation and callbacks: what an epoch costs
        self.last = EpochReport(
            epoch=epoch + 1,
            epochs=self.epochs,
            metrics=clean_metrics(logs or {}),
            seconds=round(seconds, 3),
            samples_per_second=round(self.samples / seconds, 1) if self.samples and seconds > 0 else None,
            devices=self.devices,
        )
        if self.on_epoch is not None:
            self.on_epoch()
        self.reporter.epoch(self.last)


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
        record = _checkpoint_record(folder)
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

    def commit(self, model: keras.Model, output: OutputSpec, result: dict[str, Any]) -> str:
        """Save the model so that no reader ever sees a part of it. -> the model's URI.

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
        if "savedmodel" in formats:
            partial = self.local / f".{SAVEDMODEL_DIR}.{token}.partial"
            model.export(str(partial), verbose=False)
            _replace_folder(partial, self.local / SAVEDMODEL_DIR)
            self.push(SAVEDMODEL_DIR)
        if "keras" in formats:
            partial = self.local / f".{token}.partial.{MODEL_FILE}"  # Keras insists on the .keras suffix
            model.save(partial)
            os.replace(partial, self.local / MODEL_FILE)
            self.push(MODEL_FILE)
        model_uri = storage.join(self.uri, output.model_path())
        record = {"runId": self.run_id, "modelUri": model_uri, "formats": list(formats), **result}
        storage.write_text(marker, json.dumps(record, separators=(",", ":")))
        return model_uri


def _replace_folder(new: Path, target: Path) -> None:
    """Put folder `new` at `target`; a reader sees the old folder or the new one, or (for an instant,
    when replacing) none, never a mix."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)


def _checkpoint_record(folder: Path) -> dict[str, str]:
    """The checkpoint's RUN_RECORD ({} when there is none, or it is unreadable: then it vouches for nothing)."""
    try:
        record = json.loads((folder / jobfile.RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {key: str(value) for key, value in record.items() if key in ("runId", "specHash") and value}


def run(job: TrainerJob | KerasTrainingJob, output_uri: str | None, reporter: Reporter) -> TrainingResult:
    """Train, report and return the result; user mistakes become a Failed result naming the field.
    `output_uri` replaces output.uri; a KerasTrainingJob is run as the job file made from it."""
    if isinstance(job, KerasTrainingJob):
        job = jobfile.from_resource(job, output_uri=output_uri)
    elif output_uri:
        job = job.model_copy(update={"output": job.output.model_copy(update={"uri": output_uri})})
    epochs = job.training.epochs
    try:
        if not job.output.uri:
            raise SpecError("spec.output.uri", "required")
        result = _train(job, reporter)
    except SpecError as exc:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message=str(exc), epochs=epochs)
    except TransientError as exc:  # the store or network may be back when the Job retries the pod
        result = TrainingResult(phase="Failed", reason="TrainingError", message=str(exc), epochs=epochs)
    except Exception as exc:  # anything else still ends as one clear line, not a traceback in status
        lost = distribute.lost_peer_message(exc)
        result = TrainingResult(
            phase="Failed",
            reason="TrainingError",
            message=lost or f"training failed: {type(exc).__name__}: {first_line(exc)}",
            epochs=epochs,
        )
    reporter.end(result)
    return result


def _train(job: TrainerJob, reporter: Reporter) -> TrainingResult:
    spec = job  # the job file's sections are the spec's, under the same names
    training = spec.training
    if training.seed is not None:
        keras.utils.set_random_seed(training.seed)
    # Set either way: the policy is global, and one process may train more than once (kerasop, tests).
    keras.mixed_precision.set_global_policy("mixed_float16" if training.mixed_precision else "float32")

    model_input = spec.model.input_shape
    seed = training.seed
    if seed is None and distribute.process()[1] > 1:
        # Each worker takes its part of the same data: synthetic data and shuffled image folders must
        # come out the same on every worker.
        seed = 0
    train = data_mod.load(
        spec.data.train,
        "spec.data.train",
        "train",
        batch_size=training.batch_size,
        seed=seed,
        shape_hint=model_input,
    )
    validation = None
    if spec.data.validation is not None:
        validation = data_mod.load(
            spec.data.validation,
            "spec.data.validation",
            "validation",
            batch_size=training.batch_size,
            seed=seed,
            shape_hint=model_input,
        )
    if spec.data.validation_split is not None and train.x is None:
        raise SpecError(
            "spec.data.validationSplit",
            "works with npz, csv, synthetic and keras data; give spec.data.validation for tfrecord and images",
        )

    placement = distribute.place(spec.backend)
    worker, workers = distribute.process()
    batch_size = training.batch_size
    validation_split = spec.data.validation_split
    # keras.distribution splits every batch evenly over the devices and fails on a last batch that does not
    # split (MirroredStrategy copes): on JAX with several devices, even in one process, the data is cut so
    # that every batch splits.
    if workers > 1 or (spec.backend == "jax" and len(placement.devices) > 1):
        train, validation, validation_split = _shard(train, validation, validation_split, batch_size, placement)
        batch_size //= workers  # what each worker feeds per step: its part of the global batch
    with placement.scope():  # the model and its optimizer live on every device the pod was given
        model = models.build(spec.model, mixed_precision=training.mixed_precision)
        _check_shapes(model, train)
        model.compile(
            optimizer=models.optimizer(training), loss=models.loss(training), metrics=models.metrics(training)
        )

    workspace = Workspace(job.prefix(), job.run.id, job.spec_hash(), writer=worker == 0)
    try:
        return _fit(spec, model, train, validation, validation_split, batch_size, placement, workspace, reporter)
    finally:
        workspace.discard()


def _fit(
    spec: TrainerJob,
    model: keras.Model,
    train: data_mod.Data,
    validation: data_mod.Data | None,
    validation_split: float | None,
    batch_size: int,
    placement: distribute.Placement,
    workspace: Workspace,
    reporter: Reporter,
) -> TrainingResult:
    training = spec.training
    workers = distribute.process()[1]
    callbacks: list[keras.callbacks.Callback] = []
    if spec.output.checkpoints:
        checkpoints = workspace.restore_checkpoints()
        backup = keras.callbacks.BackupAndRestore
        if workers > 1:
            backup = keras_compat.SaveAlone if workspace.writer else keras_compat.RestoreOnly
        callbacks.append(backup(str(checkpoints), double_checkpoint=True))
    if training.early_stopping is not None:
        es = training.early_stopping
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=es.monitor,
                patience=es.patience,
                min_delta=es.min_delta,
                mode=es.mode,
                restore_best_weights=es.restore_best_weights,
            )
        )
    # What reaches a remote output every epoch, so a preempted run loses at most one epoch of either.
    pushed = [CHECKPOINT_DIR]
    if spec.output.tensorboard and workspace.writer:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(workspace.local / TENSORBOARD_DIR)))
        pushed.append(TENSORBOARD_DIR)

    samples = _samples_per_epoch(train, validation_split)
    steps = int(np.ceil(samples / batch_size)) if samples is not None else None
    progress = _Progress(
        reporter,
        training.epochs,
        steps,
        samples * workers if samples is not None else None,  # the group's: each worker counts its part
        devices=len(placement.devices),
        on_epoch=lambda: [workspace.push(p) for p in pushed],
    )
    callbacks.append(progress)

    fit_args: dict[str, Any] = {"epochs": training.epochs, "callbacks": callbacks, "verbose": 0}
    if train.x is not None:
        fit_args.update(x=train.x, y=train.y, batch_size=batch_size, shuffle=spec.data.shuffle)
        if validation_split is not None:
            fit_args["validation_split"] = validation_split
    else:
        fit_args["x"] = train.dataset
    if validation is not None:
        fit_args["validation_data"] = (validation.x, validation.y) if validation.x is not None else validation.dataset
    try:
        with placement.scope():
            model.fit(**fit_args)
    except ValueError as exc:
        if distribute.lost_peer_message(exc):  # jax raises a failed collective as a ValueError too
            raise
        raise SpecError("spec.model", f"the model does not fit the data: {first_line(exc)}") from exc

    last = progress.last
    # No epoch ran when a retry resumed a run whose last epoch was done but not yet saved.
    epoch = last.epoch if last else progress.initial
    metrics = dict(last.metrics) if last else {}
    if workers > 1:
        # Evaluation is the last step every worker must take part in; then the group disbands, so that
        # worker 0's save (however long an upload takes) keeps no peer waiting on a barrier.
        with placement.scope():
            metrics.update(_evaluate(model, train, validation, validation_split, batch_size))
        distribute.leave_cluster()
    if spec.output.tensorboard:
        workspace.push(TENSORBOARD_DIR)  # the last epoch's events, written after its callback ran
    model_uri = None
    if workspace.writer:
        model_uri = workspace.commit(model, spec.output, {"epoch": epoch, "epochs": training.epochs})
    if spec.output.checkpoints:
        workspace.finish_checkpoints()
    if workers == 1:
        # The saved weights may be the best epoch's (early stopping), not the last one's: report theirs.
        metrics.update(_evaluate(model, train, validation, validation_split, batch_size))
    message = f"trained {epoch}/{training.epochs} epochs"
    if workspace.not_resumed:  # the user may have expected a resume: say why this run started over
        message += f" ({workspace.not_resumed}: started fresh)"
    return TrainingResult(
        phase="Succeeded",
        reason="Completed",
        message=message,
        epoch=epoch,
        epochs=training.epochs,
        metrics=metrics,
        model_uri=model_uri,
        devices=len(placement.devices),
    )


def _evaluate(
    model: keras.Model,
    train: data_mod.Data,
    validation: data_mod.Data | None,
    split: float | None,
    batch_size: int,
) -> dict[str, float]:
    """val_* metrics of the final model on the validation data (held-out split or separate set)."""
    if validation is not None:
        x, y = (validation.x, validation.y) if validation.x is not None else (validation.dataset, None)
    elif split and train.x is not None:
        # Keras holds out the last fraction of the arrays for validation_split.
        held_out = int(len(train.x) * split)
        if not held_out:
            return {}
        x, y = train.x[-held_out:], train.y[-held_out:] if train.y is not None else None
    else:
        return {}
    results = model.evaluate(x, y, batch_size=batch_size if y is not None else None, verbose=0, return_dict=True)
    return clean_metrics({f"val_{k}": v for k, v in results.items()})


def _shard(
    train: data_mod.Data,
    validation: data_mod.Data | None,
    split: float | None,
    batch_size: int,
    placement: distribute.Placement,
) -> tuple[data_mod.Data, data_mod.Data | None, None]:
    """This worker's part of the training and validation data. A validationSplit is taken here, from
    all the data as Keras would take it, before sharding (Keras would split each worker's part)."""
    worker, workers = distribute.process()
    devices = len(placement.devices)
    if batch_size % devices:
        raise SpecError(
            "spec.training.batchSize",
            f"{batch_size} does not split over the {devices} devices"
            + (f" of {workers} workers" if workers > 1 else "")
            + f"; use a multiple of {devices}",
        )
    granule = devices // workers  # a worker's part of a batch is split again over its own devices
    if validation is None and split and train.x is not None:
        cut = int(np.floor(len(train.x) * (1.0 - split)))
        held_x, held_y = train.x[cut:], train.y[cut:] if train.y is not None else None
        validation = data_mod.Data(x=held_x, y=held_y, size=len(held_x))
        train = data_mod.Data(x=train.x[:cut], y=train.y[:cut] if train.y is not None else None, size=cut)

    def part(data: data_mod.Data) -> data_mod.Data:
        if data.x is None:
            return data_mod.Data(dataset=distribute.shard_dataset(data.dataset, batch_size, worker, workers))
        x, y = distribute.shard_arrays(data.x, data.y, batch_size, worker, workers, granule)
        return data_mod.Data(x=x, y=y, size=len(x))

    return part(train), part(validation) if validation is not None else None, None


def _check_shapes(model: keras.Model, train: data_mod.Data) -> None:
    """Catch the commonest mistake before fit, where Keras' message is long and names no field."""
    shape = train.example_shape
    try:
        expected = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):  # multi-input models: leave it to fit
        return
    if shape is None:
        return
    if len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape, strict=False)):
        raise SpecError(
            "spec.model.inputShape",
            f"the model takes examples of shape {list(expected)} but spec.data.train has shape {list(shape)}",
        )


def _samples_per_epoch(train: data_mod.Data, validation_split: float | None) -> int | None:
    if train.x is None:
        return None
    n = len(train.x)
    return int(n * (1 - validation_split)) if validation_split else n
