"""What the trainer tells the operator, without any Kubernetes credentials in its pod.

While it runs: one JSON log line per finished epoch on stdout (read through `pods/log`).
When it ends: a TrainingResult in the container's termination message file, which the
kubelet copies into the pod status (and which survives the log being rotated away).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from keras_operator.api.base import ApiModel

EPOCH_EVENT = "epoch_end"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
EXIT_INVALID_SPEC = 2  # the Job's podFailurePolicy fails at once on this code: retrying cannot help
# 128 + SIGTERM, as a shell reports a process the signal ended: the trainer saved a checkpoint on SIGTERM
# and stopped. A disrupted pod (DisruptionTarget) is not counted by the podFailurePolicy; any other
# SIGTERM counts as one retry, which resumes at the saved step.
EXIT_STOPPED = 143
TERMINATION_MESSAGE_LIMIT = 4096  # bytes; the kubelet truncates anything longer


def clean_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """Keras logs -> JSON-safe floats (NaN and infinities are dropped: JSON has no such numbers)."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = float(f"{number:.6g}")
    return out


class _Report(ApiModel):
    """What one trainer version tells an operator of another: read leniently (log lines name fields in
    snake_case, numbers may come as either kind), unlike user specs."""

    model_config = ConfigDict(strict=False, allow_inf_nan=True)
    data_by_name = True


class CheckpointReport(_Report):
    """A saved checkpoint: where in the training it was taken, why, and what saving it cost."""

    epoch: Annotated[int, Field(ge=0)]
    """Epochs finished when it was saved."""
    step: Annotated[int, Field(ge=0)] = 0
    """Steps (batches) of the next epoch done when it was saved; 0 at an epoch end."""
    trigger: str = "epoch"
    """What saved it: epoch (an epoch end), steps or minutes (output.checkpoints.every), signal (SIGTERM)."""
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Wall time of the save, the upload to a remote output included."""


class ResumeReport(_Report):
    """Where a training that found its checkpoint resumed, and what the interruption lost."""

    epoch: Annotated[int, Field(ge=0)]
    """Epochs already done (the resumed training starts the next one)."""
    step: Annotated[int, Field(ge=0)] = 0
    """Steps of that next epoch already done, which the resumed training skips."""
    trigger: str = "epoch"
    """What saved the checkpoint resumed from (epoch, steps, minutes, signal)."""
    steps_lost: Annotated[int, Field(ge=0)] | None = None
    """Steps the interruption lost: 0 when the checkpoint was saved on SIGTERM; unknown (absent) after a
    kill without warning, when up to one checkpoint interval is lost."""


class EpochReport(_Report):
    """One finished epoch, as logged on stdout and pushed to the operator."""

    event: Literal["epoch_end"] = EPOCH_EVENT
    epoch: Annotated[int, Field(ge=0)]
    epochs: Annotated[int, Field(ge=0)]
    metrics: dict[str, float]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Wall time of this epoch."""
    samples_per_second: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Training examples per second in this epoch."""
    devices: Annotated[int, Field(ge=1)] | None = None
    """Devices that trained (each batch is split between them)."""
    checkpoint: CheckpointReport | None = None
    """The last checkpoint saved."""
    resumed_from: ResumeReport | None = None
    """Where this attempt resumed, when it resumed a checkpoint."""

    def progress(self) -> dict[str, Any]:
        """status.progress for this report: epochs, percent, throughput and time remaining."""
        out: dict[str, Any] = {"epoch": self.epoch, "epochs": self.epochs}
        if self.epochs:
            out["percent"] = min(100, self.epoch * 100 // self.epochs)
        if self.samples_per_second is not None:
            out["samplesPerSecond"] = float(f"{self.samples_per_second:.4g}")
        if self.seconds is not None:
            out["secondsRemaining"] = round(max(0, self.epochs - self.epoch) * self.seconds)
        return out


class TrainingResult(_Report):
    """The trainer's final word, written to the termination message file."""

    phase: Literal["Succeeded", "Failed"]
    reason: Literal["Completed", "InvalidSpec", "TrainingError", "Unservable"] = "Completed"
    """InvalidSpec failures are the user's to fix: the trainer exits with EXIT_INVALID_SPEC and the Job
    does not retry them. Unservable: the saved model did not load (or predicted otherwise) in a fresh
    process with only the recorded code; also not retried, for the same reason."""
    message: str = ""
    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, float] | None = None
    model_uri: str | None = None
    devices: int | None = None
    started_from: str | None = None
    """The model the training started from, when spec.model.uri named an output folder: its newest run's."""
    code_hash: str | None = None
    """The content hash of the code the run recorded beside its model."""
    checkpoint: CheckpointReport | None = None
    """The last checkpoint saved; with trigger signal, the one saved on SIGTERM before stopping."""
    resumed_from: ResumeReport | None = None

    @property
    def stopped_by_signal(self) -> bool:
        """The trainer saved on SIGTERM and stopped: the next attempt resumes there."""
        return self.phase == "Failed" and self.checkpoint is not None and self.checkpoint.trigger == "signal"

    def to_termination_message(self) -> str:
        """Serialize within the kubelet's limit, giving up metrics and then message text if needed."""
        text = json.dumps(self.dump(), separators=(",", ":"))
        if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
            return text
        slim = self.model_copy(update={"metrics": None})
        text = json.dumps(slim.dump(), separators=(",", ":"))
        overflow = len(text.encode()) - TERMINATION_MESSAGE_LIMIT
        if overflow > 0:
            slim.message = (
                slim.message.encode()[: max(0, len(slim.message.encode()) - overflow - 3)].decode(errors="ignore")
                + "..."
            )
            text = json.dumps(slim.dump(), separators=(",", ":"))
        return text


LOGGED_FIELDS = (
    "epoch",
    "epochs",
    "metrics",
    "seconds",
    "samples_per_second",
    "devices",
    "checkpoint",
    "resumed_from",
)


def parse_epoch_line(line: str) -> EpochReport | None:
    """An epoch report from one log line, or None for any other line."""
    line = line.strip()
    if not line.startswith("{") or EPOCH_EVENT not in line:
        return None
    try:
        data = json.loads(line)
        if data.get("event") != EPOCH_EVENT:
            return None
        return EpochReport.model_validate({k: data[k] for k in LOGGED_FIELDS if k in data})
    except (ValueError, KeyError, TypeError):
        return None


def last_epoch(log: str) -> EpochReport | None:
    for line in reversed(log.splitlines()):
        report = parse_epoch_line(line)
        if report is not None:
            return report
    return None


def parse_termination_message(text: str | None) -> TrainingResult | None:
    """The trainer's result, or None when the message is not one (e.g. the log-tail fallback)."""
    if not text:
        return None
    try:
        return TrainingResult.model_validate_json(text.strip())
    except ValueError:
        return None
