"""status.resumedFrom and status.lastCheckpoint from the trainer's reports, and the CheckpointSlow Event."""

from __future__ import annotations

from keras_operator.api.report import CheckpointReport, EpochReport, ResumeReport, TrainingResult, last_epoch
from keras_operator.status.training_status import Observation, observe, slow_checkpoint

NOW = "2026-01-01T00:00:00Z"
RUNNING_JOB = {"metadata": {"name": "j", "labels": {}}, "spec": {"suspend": False}, "status": {"active": 1}}
RUNNING_POD = {"metadata": {"name": "j-abc"}, "status": {"phase": "Running", "containerStatuses": [{"state": {}}]}}


def _report(epoch: int, resumed: ResumeReport | None, checkpoint: CheckpointReport | None) -> EpochReport:
    return EpochReport(epoch=epoch, epochs=5, metrics={}, resumed_from=resumed, checkpoint=checkpoint)


def test_running_shows_where_the_attempt_resumed_and_the_last_checkpoint() -> None:
    resumed = ResumeReport(epoch=2, step=130, trigger="signal", steps_lost=0)
    saved = CheckpointReport(epoch=3, step=0, trigger="epoch", seconds=0.8)
    status = observe(Observation(RUNNING_JOB, RUNNING_POD, _report(3, resumed, saved)), {}, 1, NOW, 5)
    assert status["resumedFrom"] == {"epoch": 2, "step": 130, "trigger": "signal", "stepsLost": 0}
    assert status["lastCheckpoint"] == {"epoch": 3, "step": 0, "trigger": "epoch", "seconds": 0.8}
    # No report right now (a log not read yet) takes nothing back.
    again = observe(Observation(RUNNING_JOB, RUNNING_POD, None), status, 1, NOW, 5)
    assert again["resumedFrom"] == status["resumedFrom"]
    assert again["lastCheckpoint"] == status["lastCheckpoint"]


def test_the_log_line_fallback_carries_the_resume_too() -> None:
    line = (
        '{"event": "epoch_end", "epoch": 1, "epochs": 2, "metrics": {}, '
        '"resumed_from": {"epoch": 0, "step": 41, "trigger": "signal", "stepsLost": 0}, '
        '"checkpoint": {"epoch": 1, "step": 0, "trigger": "epoch", "seconds": 0.05}}'
    )
    report = last_epoch(line)
    assert report is not None
    assert report.resumed_from == ResumeReport(epoch=0, step=41, trigger="signal", steps_lost=0)
    status = observe(Observation(RUNNING_JOB, RUNNING_POD, report), {}, 1, NOW, 2)
    assert status["resumedFrom"]["step"] == 41


def test_a_resume_after_a_kill_without_warning_says_nothing_of_steps_lost() -> None:
    resumed = ResumeReport(epoch=1, step=40, trigger="steps")
    status = observe(Observation(RUNNING_JOB, RUNNING_POD, _report(2, resumed, None)), {}, 1, NOW, 5)
    assert status["resumedFrom"] == {"epoch": 1, "step": 40, "trigger": "steps"}


def test_the_result_keeps_the_resume_shown() -> None:
    resumed = ResumeReport(epoch=0, step=41, trigger="signal", steps_lost=0)
    result = TrainingResult(phase="Succeeded", message="done", epoch=2, epochs=2, resumed_from=resumed)
    ended = {
        "metadata": {"name": "j-abc"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [
                {"state": {"terminated": {"exitCode": 0, "message": result.to_termination_message()}}}
            ],
        },
    }
    complete = {**RUNNING_JOB, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    status = observe(Observation(complete, ended), {}, 1, NOW, 2)
    assert status["phase"] == "Succeeded"
    assert status["resumedFrom"] == {"epoch": 0, "step": 41, "trigger": "signal", "stepsLost": 0}


def test_a_checkpoint_slower_than_save_seconds_is_warned_once() -> None:
    def status(seconds: float) -> dict:
        return {"lastCheckpoint": {"epoch": 1, "step": 0, "trigger": "epoch", "seconds": seconds}}

    assert slow_checkpoint({}, status(59.0), 60) == []
    [(kind, reason, message)] = slow_checkpoint(status(59.0), status(75.5), 60)
    assert (kind, reason) == ("Warning", "CheckpointSlow")
    assert message.startswith("saving a checkpoint took 75.5 s, more than spec.output.checkpoints.saveSeconds (60 s)")
    assert message.endswith("give the next training a saveSeconds of at least 76")
    assert slow_checkpoint(status(75.5), status(80.0), 60) == []  # already said
    assert slow_checkpoint({}, {}, 60) == []
