"""TF Serving's batching knobs: allowed batch sizes (the only shapes a model call ever sees, all warmed
up) and a cap on rows per request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from helpers.server import captured_serve
from keras_server.app import BATCHER, Slot, create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel, bucket, default_batch_sizes


def test_default_sizes_are_powers_of_two_up_to_the_max_batch_size() -> None:
    assert default_batch_sizes(1) == (1,)
    assert default_batch_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert default_batch_sizes(48) == (1, 2, 4, 8, 16, 32, 48)  # never padded past what the batcher forms
    assert ServerConfig(max_batch_size=8).batch_sizes == (1, 2, 4, 8)
    assert ServerConfig(max_batch_size=32, allowed_batch_sizes=(4, 16, 32)).batch_sizes == (4, 16, 32)


def test_rows_are_padded_to_the_next_allowed_size() -> None:
    sizes = (4, 16, 32)
    assert [bucket(n, sizes) for n in (1, 4, 5, 16, 17, 32)] == [4, 4, 16, 16, 32, 32]
    assert bucket(45, sizes) == 64  # only callers other than the batcher pass the largest


@pytest.mark.parametrize(
    ("sizes", "needle"),
    [
        ((4, 16), "the largest size (16) must equal --max-batch-size (32)"),
        ((16, 4, 32), "ascending"),
        ((0, 32), "ascending whole numbers >= 1"),
        ((4, 4, 32), "ascending"),
    ],
)
def test_bad_allowed_sizes_are_refused(sizes: tuple[int, ...], needle: str) -> None:
    with pytest.raises(ValueError, match="--allowed-batch-sizes") as caught:
        ServerConfig(max_batch_size=32, allowed_batch_sizes=sizes)
    assert needle in str(caught.value)


@pytest.mark.slow
def test_the_flags_reach_the_server_and_a_mismatch_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from keras_server import cli as server_cli

    seen = captured_serve(monkeypatch)
    base = ["--model-uri", "m.keras", "--model-name", "m"]
    assert server_cli.main([*base, "--allowed-batch-sizes", "4,16,32", "--max-rows-per-request", "100"]) == 0
    assert (seen[0].allowed_batch_sizes, seen[0].max_rows_per_request) == ((4, 16, 32), 100)
    assert server_cli.main(base) == 0
    assert (seen[1].allowed_batch_sizes, seen[1].max_rows_per_request) == (None, None)

    assert server_cli.main([*base, "--allowed-batch-sizes", "4,16", "--max-batch-size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --allowed-batch-sizes: the largest size (16) must equal --max-batch-size (32)"
    with pytest.raises(SystemExit) as exited:
        server_cli.main([*base, "--allowed-batch-sizes", "4,x"])
    assert exited.value.code == 2
    assert "whole numbers >= 1 separated by commas" in capsys.readouterr().err


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.single(tmp_path_factory.mktemp("sizes") / "m.keras")


class Shapes:
    """Records the batch dimension of every call that reaches the model itself (after padding)."""

    def __init__(self, model: ServedModel) -> None:
        self.seen: list[int] = []
        real = model._call

        def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.seen.append(next(iter(inputs.values())).shape[0])
            return real(inputs)

        model._call = call  # type: ignore[method-assign]


@pytest_asyncio.fixture
async def served(model_path: Path) -> AsyncIterator[tuple[TestClient, Shapes]]:
    config = ServerConfig(max_batch_size=32, allowed_batch_sizes=(4, 16, 32), max_rows_per_request=100)
    model = ServedModel.load(str(model_path), "m")
    shapes = Shapes(model)
    model.warm_up(config.max_batch_size, config.batch_sizes)
    slot = Slot("m")
    slot.model = model
    client = TestClient(TestServer(create_app(slot, config)))
    await client.start_server()
    yield client, shapes
    await client.close()


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, data=json.dumps(body)) as resp:
        return resp.status, await resp.json()


@pytest.mark.slow
async def test_model_calls_only_ever_see_warmed_allowed_sizes(
    served: tuple[TestClient, Shapes], model_path: Path
) -> None:
    client, shapes = served
    assert set(shapes.seen) == {4, 16, 32}  # warm-up: exactly the allowed sizes
    warm = len(shapes.seen)
    rng = np.random.default_rng(2)
    expected = models.load(model_path)
    for rows in (1, 5, 20, 32, 45, 100):  # 45 rows: a chunk of 32, then 13 padded to 16
        x = rng.normal(size=(rows, 4)).astype("float32")
        status, body = await post(client, "/v1/models/m:predict", {"instances": x.tolist()})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], expected.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    served_shapes = shapes.seen[warm:]
    assert served_shapes
    assert set(served_shapes) <= {4, 16, 32}
    assert 16 in served_shapes  # the last chunk of 45 rows, padded


@pytest.mark.slow
async def test_a_request_over_the_rows_cap_is_400_before_the_batcher(served: tuple[TestClient, Shapes]) -> None:
    client, shapes = served
    batcher = client.app[BATCHER]
    calls, model_calls = batcher.calls, len(shapes.seen)
    rows = [[0.0] * 4] * 101
    for path, body in [
        ("/v1/models/m:predict", {"instances": rows}),
        ("/v2/models/m/infer", {"inputs": [{"name": "x", "shape": [101, 4], "datatype": "FP32", "data": [0.0] * 404}]}),
        ("/v1/models/m:classify", {"examples": [{"x": r} for r in rows]}),
    ]:
        status, got = await post(client, path, body)
        assert status == 400, got
        assert got["error"] == "the request has 101 rows; this server takes 100 rows at most"
    assert (batcher.calls, len(shapes.seen)) == (calls, model_calls)
    assert batcher.held_bytes == 0
