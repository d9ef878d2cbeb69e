"""Several pods train one model (spec.distribution.workers, JAX): here two local processes form the JAX
cluster on CPU (gloo collectives), as two pods of an Indexed Job do through the KERAS_DISTRIBUTION_*
variables the operator sets.

Worker 1 is given its own --output folder in the runs that start afresh: it resumes from nothing there
either way, and that folder staying empty proves it wrote nothing (on a cluster both point at one
PVC or bucket, where a second writer would race worker 0).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.weights import epoch_lines, log_lines, weights_of
from keras_operator.api.training_job import TENSORBOARD_DIR

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]  # every test runs trainer processes

# What two processes reach against one process with the same global batch: the same float32 sums, in
# another order (each worker sums its half, then the halves are added).
ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job(tmp_path: Path, name: str, workers: int = 2, **spec: Any) -> Path:
    defaults: dict[str, Any] = {
        "training__epochs": 3,
        "training__batchSize": 32,
        "training__optimizer": {"name": "sgd", "learningRate": 0.05},
        "data__shuffle": False,
        "data__train": {"synthetic": {"samples": 512, "inputShape": [8], "classes": 3}},
        "data__validationSplit": 0.25,
    }
    doc = tiny_job(name, backend="jax", distribution={"workers": workers}, **{**defaults, **spec})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(config: Path, output: Path, term: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "keras_trainer", "train", "--config", str(config), "--output", str(output)]
    full = {**os.environ, "KERAS_TRAINER_TERMINATION_LOG": str(term), "KERAS_OPERATOR_LOG_FORMAT": "json", **env}
    return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def start_group(
    config: Path, outputs: list[Path], tmp_path: Path, tag: str, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    port = free_port()
    return [
        start(
            config,
            output,
            tmp_path / f"{tag}-term-{k}",
            {
                "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                "KERAS_DISTRIBUTION_NUM_PROCESSES": str(len(outputs)),
                "KERAS_DISTRIBUTION_PROCESS_ID": str(k),
                **(env or {}),
            },
        )
        for k, output in enumerate(outputs)
    ]


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def test_two_workers_train_as_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    config = job(tmp_path, "group", output={"formats": ["keras", "savedmodel"], "tensorboard": True})
    alone = job(tmp_path, "alone", workers=1, output={"formats": ["keras", "savedmodel"]})
    one = start(alone, tmp_path / "one", tmp_path / "one-term", {})
    one_log, _ = one.communicate(timeout=240)
    assert one.returncode == 0, one_log[-3000:]

    workers = start_group(config, [tmp_path / "out", tmp_path / "out1"], tmp_path, "two")
    logs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    # Worker 0 alone wrote the run's output; worker 1 wrote nothing at all.
    run = tmp_path / "out" / "runs" / "local"
    assert {"model.keras", "_COMPLETE.json", "savedmodel/saved_model.pb"} <= files(run)
    assert any(name.startswith(f"{TENSORBOARD_DIR}/") and ".tfevents." in name for name in files(run))
    assert not any(name.startswith("checkpoints") for name in files(run))  # removed once finished
    assert files(tmp_path / "out1") == set()

    result = json.loads((tmp_path / "two-term-0").read_text())
    assert result["phase"] == "Succeeded"
    assert result["devices"] == 2
    assert result["modelUri"] == str(run / "model.keras")
    assert json.loads((run / "_COMPLETE.json").read_text())["epoch"] == 3
    other = json.loads((tmp_path / "two-term-1").read_text())
    assert other["phase"] == "Succeeded"
    assert other["message"] == "worker 1 of 2 finished; worker 0 reports the training's result"
    assert not other.get("modelUri")
    assert not other.get("metrics")

    # The same weights as one process with the global batch: each worker fed half of every batch.
    single = json.loads((tmp_path / "one-term").read_text())
    a = weights_of(tmp_path / "one" / "runs" / "local" / "model.keras", tmp_path / "w1.npz")
    b = weights_of(run / "model.keras", tmp_path / "w2.npz")
    assert len(a) == len(b) == 4
    print("largest weight difference:", max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True)))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=ATOL)
    # Validation (the held-out quarter, split before sharding) and the final evaluation are the group's.
    for key in ("loss", "val_loss", "val_accuracy"):
        assert result["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-4), key
    per_worker = [[e["metrics"] for e in epoch_lines(log)] for log in logs]
    assert len(per_worker[0]) == 3
    assert per_worker[0] == per_worker[1]  # every worker logs the same epoch metrics


@pytest.mark.parametrize(("victim", "sig"), [(1, signal.SIGKILL), (0, signal.SIGKILL), (1, signal.SIGSTOP)])
def test_a_lost_worker_ends_the_other_with_an_error_in_bounded_time(
    tmp_path: Path, victim: int, sig: signal.Signals
) -> None:
    """SIGKILL: the peer's connections reset and the collective fails at once. SIGSTOP: a hung node,
    nothing resets; the coordination service's heartbeat timeout (set to 5 s here) ends the group."""
    config = job(tmp_path, "lost", training__epochs=500, output={"checkpoints": False})
    workers = start_group(
        config, [tmp_path / "out", tmp_path / "out1"], tmp_path, "lost", {"KERAS_TRAINER_HEARTBEAT_TIMEOUT": "5"}
    )
    survivor = workers[1 - victim]
    try:
        assert workers[victim].stdout is not None
        for line in workers[victim].stdout:  # wait until training runs
            if '"epoch": 2' in line:
                break
        else:
            pytest.fail("the worker ended before its second epoch")
        workers[victim].send_signal(sig)
        killed = time.monotonic()
        log, _ = survivor.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert survivor.returncode not in (0, 2), log[-3000:]
    assert took < 30, f"the survivor took {took:.0f} s to end"
    result = json.loads((tmp_path / f"lost-term-{1 - victim}").read_text())
    print(f"survivor: exit {survivor.returncode} after {took:.1f} s: {result['message']}")  # shown with -s
    assert result["phase"] == "Failed"
    assert result["message"].startswith(f"worker {1 - victim} of 2")
    assert "peer worker was lost" in result["message"]
    assert "\n" not in result["message"]
    assert "Traceback" not in log


def test_a_restarted_group_resumes_from_worker_0s_checkpoint(tmp_path: Path) -> None:
    config = job(
        tmp_path,
        "resume",
        training__epochs=6,
        data__train={"synthetic": {"samples": 4096, "inputShape": [8], "classes": 3}},
    )
    outputs = [tmp_path / "out", tmp_path / "out"]  # one PVC, as on a cluster
    workers = start_group(config, outputs, tmp_path, "first")
    try:
        assert workers[0].stdout is not None
        for line in workers[0].stdout:
            if '"epoch": 3' in line:  # worker 0 logs an epoch after its checkpoint is written
                break
        workers[1].kill()  # one pod dies: the Job restarts the group
        workers[0].communicate(timeout=90)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert workers[0].returncode not in (0, 2)
    checkpoints = tmp_path / "out" / "runs" / "local" / "checkpoints"
    saved_epoch = json.loads((checkpoints / "training_metadata.json").read_text())["epoch"]
    assert 3 <= saved_epoch < 6

    again = start_group(config, outputs, tmp_path, "again")
    logs = [w.communicate(timeout=240)[0] for w in again]
    assert [w.returncode for w in again] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    for log in logs:  # every worker resumed from the same epoch, worker 0's last checkpoint
        resumed = [e for e in log_lines(log) if e.get("event") == "resumed"]
        assert resumed, log[-2000:]
        assert resumed[0]["from_epoch"] == saved_epoch
        assert [e["epoch"] for e in epoch_lines(log)] == list(range(saved_epoch + 1, 7))
    result = json.loads((tmp_path / "again-term-0").read_text())
    assert (result["phase"], result["epoch"]) == ("Succeeded", 6)
