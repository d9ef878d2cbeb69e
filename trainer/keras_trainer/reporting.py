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
    the log line and the message staying the fallback."""

    def __init__(self, termination_path: str | None = None, pusher: ProgressPusher | None = None) -> None:
        self.log = structlog.get_logger("keras_trainer")
        self.termination_path = Path(
            termination_path or os.environ.get(TERMINATION_PATH_ENV) or TERMINATION_MESSAGE_PATH
        )
        self.pusher = pusher if pusher is not None else ProgressPusher.from_env()

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
        )
        if self.pusher is not None:
            self.pusher.epoch(report)

    def end(self, result: TrainingResult) -> None:
        if result.phase == "Succeeded":
            self.log.info("training_succeeded", model_uri=result.model_uri, metrics=result.metrics)
        else:
            self.log.error("training_failed", message=result.message)
        try:
            self.termination_path.write_text(result.to_termination_message())
        except OSError as exc:  # outside a pod the file may not be writable; the log line still says it all
            self.log.warning("termination_message_not_written", path=str(self.termination_path), error=str(exc))
        if self.pusher is not None:  # after the termination message: that one must exist whatever happens here
            self.pusher.result(result)
            self.pusher.close()


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
