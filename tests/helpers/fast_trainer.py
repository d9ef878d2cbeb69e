"""Trainings that cost a process start, not a TensorFlow import: the fake kubelet runs fake_keras_trainer
(next to this file) instead of `keras-trainer`; it reports success as the trainer does (its termination
message, with model URI MODEL_URI)."""

from __future__ import annotations

from pathlib import Path

from cluster.harness import Cluster

MODEL_URI = "fake://trained/{name}"
SCRIPT = Path(__file__).with_name("fake_keras_trainer")


def fast_trainers(cluster: Cluster) -> None:
    """From now on, every training pod of `cluster` runs the fake trainer."""
    assert cluster.controller is not None
    # The kubelet rewrites a container's command and args by prefix (it is how cluster addresses reach the
    # test's servers); the trainer's command is `keras-trainer`, and nothing else it is given starts so.
    cluster.controller.url_aliases["keras-trainer"] = str(SCRIPT)
