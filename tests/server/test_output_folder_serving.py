"""The model server given a training's output folder serves its newest complete run and says which, in
both protocols' metadata. In process, with real Keras models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import models
from keras_operator.api.jobfile import COMPLETE_MARKER
from keras_server.app import create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel
from keras_server.repository import Repository
from keras_server.versions import parse_policy
from keras_server.watcher import Watcher

pytestmark = pytest.mark.slow


def complete_run(output: Path, run_id: str, value: float, completed_at: str | None) -> None:
    folder = output / "runs" / run_id
    models.constant(folder / "model.keras", value)
    if completed_at is not None:
        record = {"runId": run_id, "formats": ["keras"], "completedAt": completed_at}
        (folder / COMPLETE_MARKER).write_text(json.dumps(record))


def load(uri: str, version: str, staging: Path | None) -> ServedModel:
    model = ServedModel.load(uri, "m", version, staging)
    model.warm_up(1)
    return model


async def test_the_newest_complete_run_is_served_and_named(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    complete_run(tmp_path, "b-older", 1.0, "2026-01-01T00:00:00.000000Z")
    complete_run(tmp_path, "a-newest", 2.0, "2026-03-01T00:00:00.000000Z")
    complete_run(tmp_path, "c-unfinished", 3.0, None)
    repository = Repository("m")
    watcher = Watcher(repository, str(tmp_path), parse_policy("latest:1"), load)
    client = TestClient(TestServer(create_app(repository, ServerConfig(max_batch_size=1))))
    await client.start_server()
    try:
        await watcher.start()
        assert watcher.single  # no folder to watch: the run was chosen at start

        async def get(path: str) -> Any:
            async with client.get(path) as resp:
                assert resp.status == 200
                return await resp.json()

        async with client.post("/v1/models/m:predict", data=json.dumps({"instances": [[0, 0, 0, 0]]})) as resp:
            assert (await resp.json())["predictions"] == [[2.0]]
        run = {
            "runId": "a-newest",
            "completedAt": "2026-03-01T00:00:00.000000Z",
            "modelUri": str(tmp_path / "runs" / "a-newest" / "model.keras"),
            "output": str(tmp_path),
        }
        assert (await get("/v2/models/m"))["parameters"]["training_run"] == run
        assert (await get("/v1/models/m/metadata"))["metadata"]["training_run"] == run
    finally:
        await client.close()
