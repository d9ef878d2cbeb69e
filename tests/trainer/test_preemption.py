"""No lost work on preemption: checkpoints within epochs, a save on SIGTERM, a resume at the saved step."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.trainer_process import events, sigterm_after_checkpoint, train_command
from keras_operator.api.report import EXIT_STOPPED, last_epoch, parse_termination_message

STEPS_PER_EPOCH = 1000  # 16000 examples in batches of 16: an epoch of a few seconds, long enough to catch
SAVE_EVERY = 40


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_the_rerun_resumes_at_that_step(tmp_path: Path) -> None:
    doc = tiny_job(
        training__epochs=2,
        training__batchSize=16,
        data__train={"synthetic": {"samples": STEPS_PER_EPOCH * 16, "inputShape": [8], "classes": 3}},
        data__shuffle=False,
        data__validationSplit=None,
        output={"checkpoints": {"every": {"steps": SAVE_EVERY}}},
    )
    del doc["spec"]["data"]["validationSplit"]
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(doc))
    term = tmp_path / "term"
    env = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(term), "KERAS_OPERATOR_LOG_FORMAT": "json"}
    cmd = train_command(config, str(tmp_path / "out"))

    code, seconds = sigterm_after_checkpoint(cmd, env)
    assert code == EXIT_STOPPED
    assert seconds < 10, f"took {seconds:.1f} s from SIGTERM to exit"
    stopped = parse_termination_message(term.read_text())
    assert stopped is not None
    assert stopped.checkpoint is not None, term.read_text()
    assert stopped.checkpoint.trigger == "signal"
    assert stopped.checkpoint.epoch == 0
    saved_step = stopped.checkpoint.step
    assert SAVE_EVERY <= saved_step < STEPS_PER_EPOCH, "the signal was not handled mid-epoch"
    assert (
        stopped.message
        == f"stopped by SIGTERM; checkpoint saved at epoch 1 step {saved_step}: the next attempt resumes there"
    )
    checkpoints = tmp_path / "out" / "runs" / "local" / "checkpoints"
    assert (checkpoints / "latest.weights.h5").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    first_epoch = next(r for r in map(last_epoch, second.stdout.splitlines()) if r)
    assert first_epoch.epoch == 1
    assert first_epoch.resumed_from is not None
    resumed = first_epoch.resumed_from
    assert (resumed.epoch, resumed.step, resumed.trigger, resumed.steps_lost) == (0, saved_step, "signal", 0)
    # The resumed epoch ran only its remaining steps: its step saves continue from the saved step, and
    # the last one is before the epoch's end (an epoch run from its start would count past it).
    saves = [e for e in events(second.stdout) if e.get("event") == "checkpoint_saved" and e["epoch"] == 0]
    assert [e["step"] for e in saves] == list(range(saved_step + SAVE_EVERY, STEPS_PER_EPOCH, SAVE_EVERY))
    result = parse_termination_message(term.read_text())
    assert result is not None
    assert result.phase == "Succeeded", result
    assert result.epoch == 2
    assert result.resumed_from == resumed
    assert not checkpoints.exists()
