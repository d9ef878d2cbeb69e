"""When checkpoints are saved within epochs (output.checkpoints.every), and that each save reaches a
remote output at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.jobs import tiny_job
from helpers.lazy import lazy

# Keras loads TensorFlow: the slow tier.
pytestmark = pytest.mark.slow
keras = lazy("keras")
keras_compat = lazy("keras_trainer.keras_compat")


def test_minutes_save_at_the_first_step_end_past_the_interval(tmp_path: Path) -> None:
    """A clock that moves 20 s per step: with minutes 1, a save every third step, and one at each epoch end
    (which restarts the interval)."""
    now = [0.0]

    class Tick(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            now[0] += 20.0

    saves: list[tuple[int, int, str]] = []
    checkpointer = keras_compat.Checkpointer(
        str(tmp_path / "ckpt"),
        minutes=1.0,
        on_save=lambda r: saves.append((r.epoch, r.step, r.trigger)),
        clock=lambda: now[0],
    )
    checkpointer.delete_checkpoint = False
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((80, 4), "float32"), np.zeros((80, 2), "float32")
    model.fit(x, y, batch_size=10, epochs=2, callbacks=[Tick(), checkpointer], verbose=0, shuffle=False)
    per_epoch = [(e, s, "minutes") for e in (0, 1) for s in (3, 6)]
    assert saves == sorted([*per_epoch, (1, 0, "epoch"), (2, 0, "epoch")])
    assert json.loads((tmp_path / "ckpt" / "training_metadata.json").read_text())["epoch"] == 2
    assert keras_compat.saved_position(tmp_path / "ckpt") == (2, 0, "epoch")


def test_every_step_checkpoint_reaches_a_remote_output_when_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    from keras_operator.api.parse import parse
    from keras_trainer import storage, train
    from keras_trainer.reporting import PodReporter

    monkeypatch.setenv("KERAS_TRAINER_TERMINATION_LOG", str(tmp_path / "term"))
    fs = fsspec.filesystem("memory")
    remote = "/bucket/steps/runs/local/checkpoints/training_metadata.json"
    uploaded: list[tuple[int, int]] = []
    publish = storage.publish

    def watched(local: Path, uri: str) -> None:
        publish(local, uri)
        if uri.endswith("/checkpoints"):
            metadata = json.loads(fs.cat(remote))
            uploaded.append((metadata["epoch"], metadata.get("step", 0)))

    monkeypatch.setattr(storage, "publish", watched)
    # 192 training examples in batches of 32: 6 steps an epoch, a save every 4 steps.
    job = parse(tiny_job(output={"checkpoints": {"every": {"steps": 4}}}))
    result = train.run(job, "memory://bucket/steps", PodReporter())
    assert result.phase == "Succeeded", result.message
    assert uploaded == [(0, 4), (1, 0), (1, 4), (2, 0)]
    assert result.checkpoint is not None
    assert (result.checkpoint.epoch, result.checkpoint.trigger) == (2, "epoch")
    assert result.checkpoint.seconds is not None
    assert not fs.exists(remote)  # removed once the training finished
