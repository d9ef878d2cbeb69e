"""Where training progress goes: JSON lines + termination message in a pod, a progress bar on a terminal."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol, TextIO

import structlog

from keras_operator.api.report import TERMINATION_MESSAGE_PATH, EpochReport, TrainingResult
from keras_trainer.progress_push import ProgressPusher

TERMINATION_PATH_ENV = "KERAS_TRAINER_TERMINATION_LOG"


class Reporter(Protocol):
    def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None: ...
    def batch(self, step: int) -> None: ...
    def epoch(self, report: EpochReport) -> None: ...
    def end(self, result: TrainingResult) -> None: ...


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class PodReporter:
    """One JSON log line per epoch on stdout, and the result in the termination message file; both are
    also pushed to the operator's progress endpoint when the pod was given one (KERAS_OPERATOR_PROGRESS_URL),
    the log line and the message staying the fallback.

    Of several workers, worker 0 reports the training (the operator reads its pod); the others log their
    epoch lines but push nothing, and their termination message only says how this worker ended
    ("worker K of N ..."), with no model and no metrics.
    """

    def __init__(self, termination_path: str | None = None, pusher: ProgressPusher | None = None) -> None:
        self.log = structlog.get_logger("keras_trainer")
        self.termination_path = Path(
            termination_path or os.environ.get(TERMINATION_PATH_ENV) or TERMINATION_MESSAGE_PATH
        )
        self.pusher = pusher if pusher is not None else ProgressPusher.from_env()
        self.worker: tuple[int, int] | None = None  # (K, N) once this pod is worker K of N

    def join(self, worker: int, workers: int) -> None:
        """This pod is worker `worker` of `workers`. The termination message is written now, saying that
        the worker stopped without a result: the JAX coordination service ends a worker whose peer is
        lost by aborting the process, and then no Python code runs to write one."""
        self.worker = (worker, workers)
        if worker != 0 and self.pusher is not None:
            self.pusher.close(timeout=0)  # nothing was sent yet: only worker 0 speaks for the training
            self.pusher = None
        self._write(
            TrainingResult(
                phase="Failed",
                reason="TrainingError",
                message=f"worker {worker} of {workers} stopped without a result: a peer worker was lost "
                "(the JAX coordination service then ends every worker) or this worker was killed",
            )
        )

    def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
        if initial_epoch:
            self.log.info("resumed", from_epoch=initial_epoch, epochs=epochs)
        self.log.info("training_started", epochs=epochs, steps_per_epoch=steps)

    def batch(self, step: int) -> None:
        pass

    def epoch(self, report: EpochReport) -> None:
        self.log.info(
            report.event,
            epoch=report.epoch,
            epochs=report.epochs,
            metrics=report.metrics,
            seconds=report.seconds,
            samples_per_second=report.samples_per_second,
            devices=report.devices,
            checkpoint=report.checkpoint.dump() if report.checkpoint else None,
            resumed_from=report.resumed_from.dump() if report.resumed_from else None,
        )
        if self.pusher is not None:
            self.pusher.epoch(report)

    def end(self, result: TrainingResult) -> None:
        if self.worker is not None and self.worker[0] != 0:
            result = self._as_worker(result, *self.worker)
        if result.phase == "Succeeded":
            self.log.info("training_succeeded", model_uri=result.model_uri, metrics=result.metrics)
        else:
            self.log.error("training_failed", message=result.message)
        self._write(result)
        if self.pusher is not None:  # after the termination message: that one must exist whatever happens here
            self.pusher.result(result)
            self.pusher.close()

    def _write(self, result: TrainingResult) -> None:
        try:
            self.termination_path.write_text(result.to_termination_message())
        except OSError as exc:  # outside a pod the file may not be writable; the log line still says it all
            self.log.warning("termination_message_not_written", path=str(self.termination_path), error=str(exc))

    @staticmethod
    def _as_worker(result: TrainingResult, worker: int, workers: int) -> TrainingResult:
        """What worker K (not 0) says of itself: never a model or metrics a reader could take for the
        training's result."""
        if result.phase == "Succeeded":
            message = f"worker {worker} of {workers} finished; worker 0 reports the training's result"
        else:
            message = (
                result.message
                if result.message.startswith("worker ")
                else f"worker {worker} of {workers}: {result.message}"
            )
        return result.model_copy(update={"message": message, "metrics": None, "model_uri": None})


class ConsoleReporter:
    """For `kerasop run`: a progress bar per epoch on a terminal, one plain line per epoch otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self._progress: object | None = None
        self._task: object | None = None
        self._steps: int | None = None
        self._epochs = 0

    def begin(self, *, epochs: int, initial_epoch: int, steps: int | None) -> None:
        self._epochs, self._steps = epochs, steps
        if initial_epoch:
            print(f"resuming from epoch {initial_epoch}/{epochs} (checkpoint found)", file=self.stream)
        if self.interactive:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=Console(file=self.stream),
            )
            progress.start()
            self._progress = progress
            self._task = progress.add_task(f"epoch {initial_epoch + 1}/{epochs}", total=steps, metrics="")

    def batch(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)  # type: ignore[attr-defined]

    def epoch(self, report: EpochReport) -> None:
        line = f"epoch {report.epoch}/{report.epochs} {format_metrics(report.metrics)}"
        if self._progress is None:
            print(line, file=self.stream, flush=True)
            return
        progress = self._progress
        progress.update(  # type: ignore[attr-defined]
            self._task,
            completed=self._steps,
            description=f"epoch {report.epoch}/{report.epochs}",
            metrics=format_metrics(report.metrics),
        )
        if report.epoch < report.epochs:
            self._task = progress.add_task(  # type: ignore[attr-defined]
                f"epoch {report.epoch + 1}/{report.epochs}", total=self._steps, metrics=""
            )

    def end(self, result: TrainingResult) -> None:
        if self._progress is not None:
            self._progress.stop()  # type: ignore[attr-defined]
            self._progress = None
        if result.phase == "Succeeded":
            print(f"saved {result.model_uri}", file=self.stream)
        else:
            print(f"training failed: {result.message}", file=self.stream)
