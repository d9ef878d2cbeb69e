"""Runs one training (a TrainerJob): data -> model -> fit (with checkpoints) -> save -> evaluate."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import structlog

from keras_operator.api import jobfile
from keras_operator.api.jobfile import TrainerJob
from keras_operator.api.report import EpochReport, ResumeReport, TrainingResult, clean_metrics
from keras_operator.api.training_job import (
    CALLBACK_PATH_ARGS,
    CALLBACKS_DIR,
    TENSORBOARD_DIR,
    KerasTrainingJob,
)
from keras_trainer import (
    checkpointing,
    distribute,
    fit_options,
    keras_compat,
    models,
    runs,
    servable,
    transfer,
    usercode,
)
from keras_trainer import data as data_mod
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
        self.checkpoints: keras_compat.Checkpointer | None = None  # its last save goes in each report
        self.resumed: ResumeReport | None = None
        self._begun = False
        self._skipped = 0  # steps of the current epoch done before this attempt
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.monotonic()
        # A resume mid-epoch runs only the rest of that epoch: its steps count on from the saved one.
        self._skipped = self.resumed.step if self.resumed is not None and epoch == self.resumed.epoch else 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._begun:  # a resume mid-epoch's second fit, or the next phase: the same training goes on
            return
        self._begun = True
        initial = keras_compat.initial_epoch(self.model)  # past 0 when BackupAndRestore resumed
        self.initial = initial
        self.reporter.begin(epochs=self.epochs, initial_epoch=initial, steps=self.steps)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.reporter.batch(self._skipped + batch + 1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.monotonic() - self._started  # fit, validation and callbacks: what an epoch costs
        samples = self.samples
        if samples and self.steps and self._skipped:
            samples = samples * max(self.steps - self._skipped, 0) // self.steps
        self.last = EpochReport(
            epoch=epoch + 1,
            epochs=self.epochs,
            metrics=clean_metrics(logs or {}),
            seconds=round(seconds, 3),
            samples_per_second=round(samples / seconds, 1) if samples and seconds > 0 else None,
            devices=self.devices,
            checkpoint=self.checkpoints.last if self.checkpoints else None,
            resumed_from=self.resumed,
        )
        if self.on_epoch is not None:
            self.on_epoch()
        self.reporter.epoch(self.last)


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
    except servable.Unservable as exc:
        message = f"the saved model cannot be served with the code recorded with it: {exc}"
        result = TrainingResult(phase="Failed", reason="Unservable", message=message, epochs=epochs)
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
    # An output folder's newest run, resolved first: the spec hash (whether a checkpoint may be resumed)
    # covers the model actually started from, so a retry that finds a newer run starts fresh, never mixes.
    model_spec, started_from = models.starting_model(job.model)
    job = job.model_copy(update={"model": model_spec})
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

    # Imported before the model is built: their registered layers, losses and metrics must be known to
    # Keras when a config or a saved model names them.
    code = usercode.prepare(job.code)
    if code is not None:
        usercode.activate(code)
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
        if code is None and spec.model.callable:  # its module came from the image's path: record it
            code = usercode.of_module(spec.model.callable.split(":")[0])
        _check_shapes(model, train)
        model.compile(
            optimizer=models.optimizer(training), loss=models.loss(training), metrics=models.metrics(training)
        )

    workspace = runs.Workspace(job.prefix(), job.run.id, job.spec_hash(), writer=worker == 0)
    try:
        result = _fit(
            spec, model, train, validation, validation_split, batch_size, placement, workspace, reporter, code
        )
        return result.model_copy(update={"started_from": started_from})
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
    workspace: runs.Workspace,
    reporter: Reporter,
    code: usercode.Code | None = None,
) -> TrainingResult:
    training = spec.training
    workers = distribute.process()[1]
    callbacks, pushed = _callbacks(spec, workspace, workers)
    callbacks += fit_options.callbacks(training.callbacks, workspace.local)
    if any(c.name in CALLBACK_PATH_ARGS for c in training.callbacks or []):
        pushed.append(CALLBACKS_DIR)  # what they write reaches a remote output every epoch, as checkpoints
    checkpoints = next((c for c in callbacks if isinstance(c, keras_compat.Checkpointer)), None)
    resumed = checkpointing.resume_point(checkpoints)
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
    progress.checkpoints, progress.resumed = checkpoints, resumed
    callbacks.append(progress)

    fit_args = _fit_args(spec, train, validation, validation_split, batch_size, callbacks)
    if weights := fit_options.class_weight(training.class_weight):
        fit_args["class_weight"] = weights
    rest_args = None
    if resumed is not None and resumed.step:
        rest, held = checkpointing.rest_of_epoch(
            train, validation_split, resumed.step, batch_size, spec.data.shuffle, training.seed, resumed.epoch
        )
        rest_args = _fit_args(spec, rest, validation or held, None, batch_size, callbacks)
        if weights:
            rest_args["class_weight"] = weights

    def compile_phase(phase: transfer.Phase) -> None:
        rate_field = f"spec.training.phases[{phase.index}]"
        model.compile(
            optimizer=models.optimizer(training, phase.learning_rate, rate_field),
            loss=models.loss(training),
            metrics=models.metrics(training),
        )

    def fit_epochs(args: dict[str, Any]) -> None:
        """One fit (the whole training, or a phase's epochs): in two when it holds the epoch resumed mid-way."""
        if resumed is not None and args.get("initial_epoch", 0) <= resumed.epoch < args["epochs"]:
            checkpointing.fit(model, args, checkpoints, resumed, rest_args)
        else:
            model.fit(**args)

    backups = Path(checkpoints.backup_dir) if checkpoints else None
    try:
        with placement.scope(), checkpointing.stop_on_sigterm(checkpoints.stop if checkpoints else None):
            transfer.fit(model, fit_args, training, compile_phase, backups, fit_epochs)
    except keras_compat.Stopped as stopped:
        where = f"epoch {stopped.checkpoint.epoch + 1} step {stopped.checkpoint.step}" if stopped.checkpoint else ""
        return TrainingResult(
            phase="Failed",
            reason="TrainingError",
            message=f"stopped by SIGTERM; checkpoint saved at {where}: the next attempt resumes there"
            if where
            else "stopped by SIGTERM; the next attempt resumes from the last checkpoint",
            epoch=progress.last.epoch if progress.last else progress.initial,
            epochs=training.epochs,
            checkpoint=stopped.checkpoint,
            resumed_from=resumed,
        )
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
    model_uri = code_hash = None
    checked: list[float] = []

    def check(saved: Path) -> None:
        # Only with user code: a model of Keras' own objects has nothing a server could be missing, and
        # the fresh process costs seconds (importing the backend).
        if code is not None and (sample := servable.examples(train.x, train.dataset)) is not None:
            on_cpu = all("cpu" in d.lower() for d in placement.devices) and not training.mixed_precision
            tolerance = servable.TIGHT if on_cpu else servable.LOOSE
            # The copy recorded beside the model, not the source: what a server will import.
            recorded = dataclasses.replace(code, folder=saved.parent / jobfile.CODE_FOLDER)
            checked.append(servable.check(model, saved, recorded, sample, tolerance))
            log.info("servable_checked", model=str(saved), seconds=round(checked[-1], 2))

    if workspace.writer:
        model_uri, code_hash = workspace.commit(
            model, spec.output, {"epoch": epoch, "epochs": training.epochs}, code=code, check=check
        )
    if spec.output.checkpoints:
        workspace.finish_checkpoints()
    if workers == 1:
        # The saved weights may be the best epoch's (early stopping), not the last one's: report theirs.
        metrics.update(_evaluate(model, train, validation, validation_split, batch_size))
    message = f"trained {epoch}/{training.epochs} epochs"
    if workspace.not_resumed:  # the user may have expected a resume: say why this run started over
        message += f" ({workspace.not_resumed}: started fresh)"
    if checked:
        message += f"; the saved model loads and predicts alike in a fresh process ({checked[0]:.1f} s)"
    return TrainingResult(
        phase="Succeeded",
        reason="Completed",
        message=message,
        epoch=epoch,
        epochs=training.epochs,
        metrics=metrics,
        model_uri=model_uri,
        devices=len(placement.devices),
        code_hash=code_hash,
        checkpoint=checkpoints.last if checkpoints else None,
        resumed_from=resumed,
    )


def _callbacks(
    spec: TrainerJob, workspace: runs.Workspace, workers: int
) -> tuple[list[keras.callbacks.Callback], list[str]]:
    """-> (fit's callbacks but the progress one, the folders pushed to a remote output every epoch)."""
    training = spec.training
    callbacks: list[keras.callbacks.Callback] = []
    if spec.output.checkpoints:
        callbacks.append(checkpointing.checkpointer(spec.output.checkpoints, workspace, workers))
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
    # What reaches a remote output every epoch (checkpoints go up at each save, checkpointing.checkpointer).
    pushed: list[str] = []
    if spec.output.tensorboard and workspace.writer:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(workspace.local / TENSORBOARD_DIR)))
        pushed.append(TENSORBOARD_DIR)
    return callbacks, pushed


def _fit_args(
    spec: TrainerJob,
    train: data_mod.Data,
    validation: data_mod.Data | None,
    validation_split: float | None,
    batch_size: int,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, Any]:
    fit_args: dict[str, Any] = {"epochs": spec.training.epochs, "callbacks": callbacks, "verbose": 0}
    if train.x is not None:
        fit_args.update(x=train.x, y=train.y, batch_size=batch_size, shuffle=spec.data.shuffle)
        if validation_split is not None:
            fit_args["validation_split"] = validation_split
    else:
        fit_args["x"] = train.dataset
    if validation is not None:
        fit_args["validation_data"] = (validation.x, validation.y) if validation.x is not None else validation.dataset
    return fit_args


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
