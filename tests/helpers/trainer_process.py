"""The trainer as a pod runs it (`python -m keras_trainer train`), killed mid-run and run again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from keras_operator.api.report import last_epoch


def train_command(config: Path, output: str) -> list[str]:
    return [sys.executable, "-m", "keras_trainer", "train", "--config", str(config), "--output", output]


def kill_after_epoch(cmd: list[str], env: dict[str, str], epoch: int) -> list[int]:
    """Run until `epoch` is reported, then SIGKILL (an OOM kill, a node lost). -> the epochs it reported."""
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    assert first.stdout is not None
    for line in first.stdout:
        report = last_epoch(line)
        if report:
            seen.append(report.epoch)
            if report.epoch == epoch:
                first.send_signal(signal.SIGKILL)
                break
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    return seen


def run_again(cmd: list[str], env: dict[str, str]) -> tuple[list[int], bool]:
    """Run to the end. -> (the epochs it reported, whether it said it resumed from a checkpoint)."""
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    lines = second.stdout.splitlines()
    epochs = [r.epoch for r in map(last_epoch, lines) if r]
    resumed = any(json.loads(line).get("event") == "resumed" for line in lines if line.startswith("{"))
    return epochs, resumed


def events(text: str) -> list[dict[str, object]]:
    """The JSON log lines of a trainer's stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def sigterm_after_checkpoint(cmd: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, float]:
    """Run until the first checkpoint saved within an epoch is logged, then SIGTERM, as the kubelet does
    to a preempted pod. -> (the exit code, seconds from the signal to the exit)."""
    import time

    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    signalled = None
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("event") == "checkpoint_saved":
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            break
    assert signalled is not None, "no checkpoint was saved within an epoch"
    process.stdout.read()
    process.wait(timeout=timeout)
    return process.returncode, time.monotonic() - signalled
