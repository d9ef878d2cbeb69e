"""The model server under pressure: admission by bytes and rows, clients that leave, large bodies, large requests."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from helpers.server import captured_serve
from keras_server import codec
from keras_server.app import BATCHER, Slot, create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel
from keras_server.server import listen

X = np.random.default_rng(11).normal(size=(5, 4)).astype("float32")
PREDICT = "/v1/models/m:predict"


class Recorder:
    """Stands in for a model's predict: keeps a copy of every call's inputs and, until `release` is set,
    holds the model thread in the first call, so the requests after it wait in the queue."""

    def __init__(self, model: ServedModel, hold: bool = False) -> None:
        self.calls: list[np.ndarray] = []
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()
        self._real = model.predict
        model.predict = self  # type: ignore[method-assign]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append(next(iter(inputs.values())).copy())
        self.entered.set()
        self.release.wait(60)  # a guard against a hung test; the tests release it themselves
        return self._real(inputs)


def served(path: Path, max_batch_size: int = 1) -> Slot:
    slot = Slot("m")
    slot.model = ServedModel.load(str(path), "m")
    slot.model.warm_up(max_batch_size)
    return slot


async def until(condition: Callable[[], bool], what: str) -> None:
    """Waits for the server to reach a state; the 30 s bound only turns a hang into a failure."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with client.post(path, data=data) as resp:
        return resp.status, await resp.json()


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return models.single(tmp_path / "m.keras")


@pytest_asyncio.fixture
async def started() -> AsyncIterator[list[TestClient]]:
    """Clients to close at the end, whatever the test did."""
    clients: list[TestClient] = []
    yield clients
    for client in clients:
        await client.close()


async def start(clients: list[TestClient], slot: Slot, config: ServerConfig) -> TestClient:
    client = TestClient(TestServer(create_app(slot, config)))
    await client.start_server()
    clients.append(client)
    return client


@pytest.fixture
def releases() -> Iterator[list[Recorder]]:
    recorders: list[Recorder] = []
    yield recorders
    for r in recorders:
        r.release.set()


# --- 1. admission by bytes and rows ---


@pytest.mark.slow
async def test_bytes_budget_refuses_what_would_pass_it_with_503(
    model_path: Path, started: list[TestClient], releases: list[Recorder]
) -> None:
    slot = served(model_path)
    recorder = Recorder(slot.model, hold=True)  # type: ignore[arg-type]
    releases.append(recorder)
    first = json.dumps({"instances": X[:1].tolist()})
    big = json.dumps({"instances": np.round(np.tile(X, (20, 1)), 6).tolist()})
    budget = len(first) + 1000
    assert len(big) > budget
    client = await start(started, slot, ServerConfig(max_batch_size=1, max_queued_bytes=budget))
    held = asyncio.ensure_future(post(client, PREDICT, first))
    await until(recorder.entered.is_set, "the first request reached the model")
    small = asyncio.ensure_future(post(client, PREDICT, {"instances": X[:2].tolist()}))
    await until(lambda: client.app[BATCHER].depth == 1, "a small request queued beside it")

    async with client.post(PREDICT, data=big) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        message = (await resp.json())["error"]
    assert "overloaded" in message
    assert f"{budget} at most" in message

    recorder.release.set()
    assert (await held)[0] == 200
    assert (await small)[0] == 200
    # Alone, a request larger than the budget is served: the budget never locks a client out.
    status, body = await post(client, PREDICT, big)
    assert status == 200, body
    assert client.app[BATCHER].held_bytes == 0


@pytest.mark.slow
async def test_rows_budget_refuses_what_would_pass_it_with_503(
    model_path: Path, started: list[TestClient], releases: list[Recorder]
) -> None:
    slot = served(model_path, 8)
    recorder = Recorder(slot.model, hold=True)  # type: ignore[arg-type]
    releases.append(recorder)
    client = await start(started, slot, ServerConfig(max_batch_size=8, max_queued_rows=4))
    held = asyncio.ensure_future(post(client, PREDICT, {"instances": X[:1].tolist()}))
    await until(recorder.entered.is_set, "the first request reached the model")
    three = asyncio.ensure_future(post(client, PREDICT, {"instances": X[:3].tolist()}))
    await until(lambda: client.app[BATCHER].queued_rows == 3, "three rows queued")

    async with client.post(PREDICT, json={"instances": X[:2].tolist()}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert "3 rows waiting, 4 at most" in (await resp.json())["error"]
    one = asyncio.ensure_future(post(client, PREDICT, {"instances": X[:1].tolist()}))  # 3 + 1 fits
    await until(lambda: client.app[BATCHER].queued_rows == 4, "the fourth row queued")

    recorder.release.set()
    assert [(await r)[0] for r in (held, three, one)] == [200, 200, 200]


def test_budgets_are_set_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_SERVER_MAX_QUEUED_BYTES", "1000")
    monkeypatch.setenv("KERAS_SERVER_MAX_QUEUED_ROWS", "64")
    monkeypatch.setenv("KERAS_SERVER_OFFLOAD_BYTES", "0")
    config = ServerConfig()
    assert (config.max_queued_bytes, config.max_queued_rows, config.offload_bytes) == (1000, 64, 0)
    monkeypatch.delenv("KERAS_SERVER_MAX_QUEUED_BYTES")
    assert ServerConfig().max_queued_bytes == 256 * 1024 * 1024
    monkeypatch.setenv("KERAS_SERVER_MAX_QUEUED_ROWS", "lots")
    with pytest.raises(ValueError, match="KERAS_SERVER_MAX_QUEUED_ROWS must be a whole number, got 'lots'"):
        ServerConfig()


# --- 2. a client that leaves ---


@pytest.mark.slow
async def test_a_request_whose_client_left_never_reaches_the_model(model_path: Path, releases: list[Recorder]) -> None:
    slot = served(model_path, 8)
    recorder = Recorder(slot.model, hold=True)  # type: ignore[arg-type]
    releases.append(recorder)
    app = create_app(slot, ServerConfig(max_batch_size=8))
    batcher = app[BATCHER]
    runner = await listen(app, "127.0.0.1", 0)  # the server's own runner, not the test server's
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def predict(rows: np.ndarray) -> int:
                async with session.post(url + PREDICT, json={"instances": rows.tolist()}) as resp:
                    return resp.status

            held = asyncio.ensure_future(predict(X[:1]))
            await until(recorder.entered.is_set, "the first request reached the model")
            body = json.dumps({"instances": np.full((3, 4), 7.0).tolist()}).encode()
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"POST {PREDICT} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            await until(lambda: batcher.depth == 1, "the sevens queued behind the held call")
            writer.close()  # the client gives up
            await writer.wait_closed()
            await until(lambda: batcher.dropped == 1, "the server dropped the sevens")
            assert batcher.depth == 0

            recorder.release.set()
            assert await held == 200
            assert await predict(X[1:2]) == 200  # the worker has gone past where the sevens were
            async with session.get(url + "/metrics") as resp:
                metrics = await resp.text()
    finally:
        recorder.release.set()
        await runner.cleanup()
    assert len(recorder.calls) == 2
    assert not any((call == 7.0).any() for call in recorder.calls)
    assert "keras_server_dropped_requests_total 1.0" in metrics
    assert 'keras_server_requests_total{code="499",endpoint="/v1/models/{name}:predict",version="1"} 1.0' in metrics


# --- 3. large bodies off the event loop ---


@pytest.mark.parametrize("stage", ["parse_tfs", "encode_tfs"])
@pytest.mark.slow
async def test_a_large_body_is_coded_off_the_event_loop(
    model_path: Path, started: list[TestClient], monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    rows = np.random.default_rng(5).normal(size=(40_000, 4)).astype("float32")
    body = json.dumps({"instances": rows.tolist()})
    assert len(body) > 3 * 1024 * 1024
    coding, gate = threading.Event(), threading.Event()
    order: list[str] = []
    threads: list[str] = []
    real = getattr(codec, stage)

    def slow(*args: Any) -> Any:
        # Stays in the stage until the probes have been answered. On the event loop nothing else
        # would run meanwhile: the probes would come after the stage, whatever the wait.
        threads.append(threading.current_thread().name)
        coding.set()
        gate.wait(20)
        result = real(*args)
        order.append(stage)
        return result

    monkeypatch.setattr(codec, stage, slow)
    client = await start(started, served(model_path, 1024), ServerConfig(max_batch_size=1024))
    large = asyncio.ensure_future(post(client, PREDICT, body))
    await asyncio.to_thread(coding.wait, 30)
    for probe in ("/v1/models/m", "/v2/health/ready"):
        async with client.get(probe) as resp:
            assert resp.status == 200
    order.append("probes")
    gate.set()
    status, out = await large
    assert status == 200, out
    assert order == ["probes", stage]
    assert threads[0].startswith("codec")
    expected = models.load(model_path).predict(rows, batch_size=4096, verbose=0)
    np.testing.assert_allclose(out["predictions"], expected, rtol=1e-5, atol=1e-6)
    # A small body is coded on the loop: the thread hop would cost more than the coding.
    assert (await post(client, PREDICT, {"instances": X[:1].tolist()}))[0] == 200
    assert threads[-1] == threading.main_thread().name


# --- 4. more rows than max_batch_size ---


@pytest.mark.slow
async def test_more_rows_than_max_batch_size_run_in_warmed_chunks(
    model_path: Path, started: list[TestClient], releases: list[Recorder]
) -> None:
    slot = served(model_path, 8)
    recorder = Recorder(slot.model)  # type: ignore[arg-type]
    releases.append(recorder)
    client = await start(started, slot, ServerConfig(max_batch_size=8))
    rows = np.random.default_rng(7).normal(size=(45, 4)).astype("float32")
    expected = models.load(model_path).predict(rows, verbose=0)

    status, body = await post(client, PREDICT, {"instances": rows.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"], expected, rtol=1e-5, atol=1e-6)
    v2 = {"inputs": [{"name": "x", "shape": [45, 4], "datatype": "FP32", "data": rows.reshape(-1).tolist()}]}
    status, body = await post(client, "/v2/models/m/infer", v2)
    assert status == 200, body
    out = body["outputs"][0]
    assert out["shape"] == [45, 3]
    np.testing.assert_allclose(np.array(out["data"]).reshape(45, 3), expected, rtol=1e-5, atol=1e-6)

    assert [len(c) for c in recorder.calls] == [8, 8, 8, 8, 8, 5] * 2
    np.testing.assert_array_equal(np.concatenate(recorder.calls[:6]), rows)  # in order, each row once


@pytest.mark.slow
def test_the_budgets_are_flags_too_and_a_bad_environment_value_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keras_server import cli as server_cli

    seen = captured_serve(monkeypatch)
    base = ["--model-uri", "m.keras", "--model-name", "m"]
    monkeypatch.setenv("KERAS_SERVER_MAX_QUEUED_ROWS", "77")
    assert server_cli.main([*base, "--max-queued-bytes", "1024", "--offload-bytes", "0"]) == 0
    assert (seen[0].max_queued_bytes, seen[0].max_queued_rows, seen[0].offload_bytes) == (1024, 77, 0)

    monkeypatch.setenv("KERAS_SERVER_MAX_QUEUED_ROWS", "lots")
    assert server_cli.main(base) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: KERAS_SERVER_MAX_QUEUED_ROWS must be a whole number, got 'lots'"
