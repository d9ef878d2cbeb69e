"""The model server's event loop (uvloop, with a way back) and which requests its access log records."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import structlog
import uvloop
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from keras_server import eventloop
from keras_server.app import Slot, create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel


def test_the_server_runs_on_uvloop_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    monkeypatch.delenv("KERAS_SERVER_UVLOOP", raising=False)
    assert issubclass(eventloop.run(loop_type()), uvloop.Loop)
    monkeypatch.setenv("KERAS_SERVER_UVLOOP", "0")
    assert not issubclass(eventloop.run(loop_type()), uvloop.Loop)


def test_access_log_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERAS_SERVER_ACCESS_LOG", raising=False)
    assert ServerConfig().access_log == "errors"
    monkeypatch.setenv("KERAS_SERVER_ACCESS_LOG", "ALL")
    assert ServerConfig().access_log == "all"
    monkeypatch.setenv("KERAS_SERVER_ACCESS_LOG", "some")
    with pytest.raises(ValueError, match="KERAS_SERVER_ACCESS_LOG must be one of all, errors, off, got 'some'"):
        ServerConfig()


@pytest.mark.parametrize(
    ("mode", "logged"), [("errors", [404]), ("all", [200, 404]), ("off", [])], ids=["errors", "all", "off"]
)
@pytest.mark.slow
async def test_access_log_records_what_it_is_set_to(tmp_path: Path, mode: str, logged: list[int]) -> None:
    slot = Slot("iris")
    slot.model = ServedModel.load(str(models.single(tmp_path / "m.keras")), "iris")
    slot.model.warm_up()
    client = TestClient(TestServer(create_app(slot, ServerConfig(access_log=mode))))
    await client.start_server()
    try:
        with structlog.testing.capture_logs() as logs:
            async with client.post("/v1/models/iris:predict", json={"instances": [[0.0] * 4]}) as resp:
                assert resp.status == 200
            async with client.post("/v1/models/other:predict", json={"instances": [[0.0] * 4]}) as resp:
                assert resp.status == 404
    finally:
        await client.close()
    lines = [e for e in logs if e["event"] == "request"]
    assert [e["status"] for e in lines] == logged
    assert all(e["path"].startswith("/v1/models/") and e["ms"] >= 0 for e in lines)
