"""A base folder of versions on s3:// (moto's S3 server): listed, loaded (.keras and SavedModel), followed
as new versions are uploaded, and each unloaded version's download removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import models
from helpers.s3 import Bucket
from keras_server import discovery
from keras_server.model import ServedModel
from keras_server.repository import Repository
from keras_server.versions import parse_policy
from keras_server.watcher import Watcher


@pytest.fixture(autouse=True)
def _no_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_SERVER_XLA", "0")


def upload_folder(bucket: Bucket, local: Path, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        bucket.upload(path, f"{prefix}/{path.relative_to(local).as_posix()}")


def load(uri: str, version: str, staging: Path | None) -> ServedModel:
    model = ServedModel.load(uri, "m", version, staging)
    model.warm_up(2)
    return model


async def test_versions_on_s3_are_found_loaded_and_followed(tmp_path: Path, bucket: Bucket) -> None:
    one = models.constant(tmp_path / "one" / "model.keras", 1.0)
    models.load(models.constant(tmp_path / "two.keras", 2.0)).export(str(tmp_path / "two"), verbose=False)
    bucket.upload(one, "base/1/model.keras")
    upload_folder(bucket, tmp_path / "two", "base/2")
    bucket.upload(one, "base/notes/model.keras")  # not a numbered folder: ignored

    base = bucket.url("base")
    found = discovery.discover(base)
    assert sorted(found) == [1, 2]
    assert found[1].uri == bucket.url("base/1/model.keras")
    assert found[2].uri == bucket.url("base/2")
    assert ("saved_model.pb", (tmp_path / "two" / "saved_model.pb").stat().st_size) in found[2].fingerprint
    assert not discovery.is_single_model(base)
    assert discovery.is_single_model(bucket.url("base/2"))

    repository = Repository("m")
    watcher = Watcher(repository, base, parse_policy("latest:1"), load)
    await watcher.start()
    x = np.full((1, 4), 0.5, dtype="float32")
    two = repository.route(None, None)
    assert two.number == 2
    assert next(iter(two.predict({two.loaded().inputs[0].name: x}).values())).tolist() == [[2.0]]
    staging = two.staging
    assert staging is not None
    assert staging.exists()

    bucket.upload(one, "base/3/model.keras")  # s3fs would list from its cache without a fresh listing
    await watcher.scan()
    three = repository.route(None, None)
    assert three.number == 3
    assert three.predict({three.loaded().inputs[0].name: x})["output"].tolist() == [[1.0]]
    assert (repository.versions[2].state, repository.versions[2].model) == ("END", None)
    assert not staging.exists()
