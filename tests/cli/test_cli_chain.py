"""`kerasop run` of a chained training: there is no cluster to resolve trainingJobRef, so it is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.jobs import tiny_job, write_job
from kerasop import cli


def test_a_chained_training_run_locally_needs_start_from(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tiny_job("finetune")
    doc["spec"]["model"] = {"trainingJobRef": {"name": "base"}}
    code = cli.main(["run", write_job(tmp_path, doc)])
    assert code == 2
    err = capsys.readouterr().err
    assert "spec.model.trainingJobRef" in err
    assert "--start-from" in err
