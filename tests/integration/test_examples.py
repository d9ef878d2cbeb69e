"""Every training example runs with `kerasop run` as a newcomer would (data paths relative to the repo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.manifests import ROOT
from kerasop import cli

ORDER = [
    "digits.yaml",
    "fine-tune.yaml",
    "tabular-csv.yaml",
    "cnn-images.yaml",
    "gpu.yaml",
    "multi-gpu.yaml",
    "kueue.yaml",
    "custom-code.yaml",  # its ConfigMap of code is in the same file: kerasop writes it out
]
# Examples that need more than this machine; each runs elsewhere, against a stand-in.
ELSEWHERE = {
    "s3-training.yaml": "needs an S3 endpoint: test_object_storage.py runs it against moto's S3 server",
    "multi-node-jax.yaml": "needs several pods: tests/e2e/test_multinode.py trains two JAX workers",
}


def test_the_list_covers_every_training_example() -> None:
    trainings = {p.name for p in (ROOT / "examples").glob("*.yaml") if "kind: KerasTrainingJob" in p.read_text()}
    assert trainings == set(ORDER) | set(ELSEWHERE)


def test_examples_train_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERAS_OPERATOR_PVC_ROOT", str(tmp_path / "pvc"))
    accuracy = {}
    for name in ORDER:  # fine-tune starts from what digits.yaml saved
        # fine-tune.yaml starts from digits (trainingJobRef), which a local run is told where to find.
        start = ["--start-from", "pvc://models/digits"] if name == "fine-tune.yaml" else []
        code = cli.main(["run", f"examples/{name}", "-o", "json", *start])
        out, err = capsys.readouterr()
        assert code == 0, f"{name}: {err[-2000:]}"
        status = json.loads(out)["status"]
        assert status["phase"] == "Succeeded"
        accuracy[name] = status["metrics"]["accuracy"]
        assert status["devices"] == 1  # no GPU here: the 4-GPU example trains on the one CPU
    assert (tmp_path / "pvc" / "models" / "digits-cnn" / "runs" / "local" / "savedmodel" / "saved_model.pb").exists()
    assert accuracy["digits.yaml"] > 0.9  # 20 epochs on real digits, not random
    assert accuracy["fine-tune.yaml"] > 0.9  # starts from the trained weights
