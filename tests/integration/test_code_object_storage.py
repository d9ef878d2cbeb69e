"""spec.code on s3:// (moto's server): an archive fetched and unpacked, and a run's recorded code found
beside its model and fetched, as a trainer and a server in a pod read them. No Keras needed."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from helpers.s3 import Bucket
from keras_operator.api.common import CodeSpec
from keras_trainer import usercode

pytestmark = pytest.mark.slow
FILES = {"layers.py": "VALUE = 1\n", "models.py": "import layers\n"}


def _code(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return folder


def test_a_code_archive_on_s3_is_fetched_and_unpacked(bucket: Bucket, tmp_path: Path) -> None:
    archive = tmp_path / "code.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        out.add(_code(tmp_path / "code"), arcname="code")
    code = usercode.prepare(CodeSpec(uri=bucket.upload(archive, "releases/code-v1.tar.gz")))
    assert code is not None
    assert {p.name: p.read_text() for p in code.folder.iterdir()} == FILES
    assert code.imports == ["layers", "models"]


def test_a_runs_recorded_code_is_found_beside_its_model_on_s3(bucket: Bucket, tmp_path: Path) -> None:
    code = usercode.prepare(CodeSpec(path=str(_code(tmp_path / "code"))))
    assert code is not None
    run = tmp_path / "run"
    run.mkdir()
    digest = usercode.record(code, run)
    for path in run.rglob("*"):
        if path.is_file():
            bucket.upload(path, f"out/runs/r1/{path.relative_to(run).as_posix()}")
    found = usercode.recorded(bucket.url("out/runs/r1/model.keras"))
    assert found is not None
    assert {p.name: p.read_text() for p in found.folder.iterdir()} == FILES
    assert found.imports == ["layers", "models"]
    assert found.source == {"recorded": digest}
    assert usercode.recorded(bucket.url("out/runs/r2/model.keras")) is None  # no record: nothing to import
