"""The model server, in process: both protocols, errors, batching, overload, metrics."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from keras_server.app import BATCHER, Slot, create_app
from keras_server.config import ServerConfig
from keras_server.model import ServedModel

X = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")


async def client_for(path: Path, name: str, config: ServerConfig | None = None) -> TestClient:
    slot = Slot(name)
    slot.model = ServedModel.load(str(path), name)
    slot.model.warm_up()
    client = TestClient(TestServer(create_app(slot, config or ServerConfig())))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def single(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Any]]:
    path = models.single(tmp_path / "single.keras")
    client = await client_for(path, "iris")
    yield client, models.load(path)
    await client.close()


@pytest_asyncio.fixture
async def multi(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Any]]:
    path = models.multi(tmp_path / "multi.keras")
    client = await client_for(path, "multi")
    yield client, models.load(path)
    await client.close()


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with client.post(path, data=data) as resp:
        return resp.status, await resp.json()


@pytest.mark.slow
async def test_tfs_status_metadata_and_row_predict(single: tuple[TestClient, Any]) -> None:
    client, model = single
    async with client.get("/v1/models/iris") as resp:
        assert (await resp.json())["model_version_status"][0]["state"] == "AVAILABLE"
    async with client.get("/v1/models/iris/metadata") as resp:
        sig = (await resp.json())["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "4"]
    status, body = await post(client, "/v1/models/iris:predict", {"instances": X.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["predictions"], model.predict(X, verbose=0), rtol=1e-5)
    status, body = await post(client, "/v1/models/iris/versions/1:predict", {"inputs": X.tolist()})
    assert status == 200
    np.testing.assert_allclose(body["outputs"], model.predict(X, verbose=0), rtol=1e-5)


@pytest.mark.slow
async def test_tfs_multi_input_multi_output(multi: tuple[TestClient, Any]) -> None:
    client, model = multi
    counts = np.array([[1, 2], [3, 4]], dtype="int32")
    feats = X[:2]
    expected = model.predict({"features": feats, "counts": counts}, verbose=0)
    rows = [{"features": f.tolist(), "counts": c.tolist()} for f, c in zip(feats, counts, strict=True)]
    status, body = await post(client, "/v1/models/multi:predict", {"instances": rows})
    assert status == 200
    assert set(body["predictions"][0]) == {"probs", "score"}
    np.testing.assert_allclose([p["probs"] for p in body["predictions"]], expected["probs"], rtol=1e-5)
    status, body = await post(
        client, "/v1/models/multi:predict", {"inputs": {"features": feats.tolist(), "counts": counts.tolist()}}
    )
    assert status == 200
    np.testing.assert_allclose(body["outputs"]["score"], expected["score"], rtol=1e-5)


@pytest.mark.slow
async def test_v2_health_metadata_and_infer(multi: tuple[TestClient, Any]) -> None:
    client, model = multi
    for path, expected in [
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
        ("/v2/models/multi/ready", {"name": "multi", "ready": True}),
    ]:
        async with client.get(path) as resp:
            assert resp.status == 200
            assert await resp.json() == expected
    async with client.get("/v2") as resp:
        assert (await resp.json())["name"] == "keras-model-server"
    async with client.get("/v2/models/multi") as resp:
        meta = await resp.json()
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "features": ("FP32", [-1, 4]),
        "counts": ("INT32", [-1, 2]),
    }
    assert {o["name"] for o in meta["outputs"]} == {"probs", "score"}
    counts = np.array([[1, 0], [0, 2], [5, 5]], dtype="int64")
    body = {
        "id": "req-7",
        "inputs": [
            {
                "name": "features",
                "shape": [3, 4],
                "datatype": "FP64",
                "data": X[:3].astype("float64").reshape(-1).tolist(),
            },
            {"name": "counts", "shape": [3, 2], "datatype": "INT64", "data": counts.reshape(-1).tolist()},
        ],
        "outputs": [{"name": "score"}],
    }
    status, result = await post(client, "/v2/models/multi/versions/1/infer", body)
    assert status == 200, result
    assert result["id"] == "req-7"
    assert result["model_name"] == "multi"
    assert [o["name"] for o in result["outputs"]] == ["score"]
    out = result["outputs"][0]
    assert out["shape"] == [3, 1]
    assert out["datatype"] == "FP32"
    expected = model.predict({"features": X[:3], "counts": counts.astype("int32")}, verbose=0)["score"]
    np.testing.assert_allclose(np.array(out["data"]).reshape(3, 1), expected, rtol=1e-5)


@pytest.mark.slow
async def test_bool_data_and_b64_values(single: tuple[TestClient, Any]) -> None:
    client, _ = single
    status, body = await post(
        client,
        "/v2/models/iris/infer",
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BOOL", "data": [True, False, True, False]}]},
    )
    assert status == 200, body
    status, body = await post(
        client, "/v1/models/iris:predict", {"instances": [[{"b64": base64.b64encode(b"abc").decode()}] * 4]}
    )
    assert status == 400
    assert "expected numbers" in body["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/models/nope:predict", {"instances": [[0, 0, 0, 0]]}, 404, "model 'nope' not found"),
        ("/v1/models/iris/versions/2:predict", {"instances": [[0, 0, 0, 0]]}, 404, "no version '2'"),
        ("/v2/models/nope/infer", {"inputs": []}, 404, "not found"),
        ("/v1/models/iris:predict", "{not json", 400, "not valid JSON"),
        ("/v1/models/iris:predict", "[1, 2]", 400, "JSON object"),
        ("/v1/models/iris:predict", {"instances": [[0, 0, 0]]}, 400, "must have shape [-1, 4]"),
        ("/v1/models/iris:predict", {"instances": [[0, 0, 0, 0], [1, 2]]}, 400, "rectangular"),
        ("/v1/models/iris:predict", {"instances": [["a", "b", "c", "d"]]}, 400, "expected numbers"),
        ("/v1/models/iris:predict", {"instances": []}, 400, "non-empty"),
        ("/v1/models/iris:predict", {"instances": [[0] * 4], "inputs": [[0] * 4]}, 400, "exactly one of"),
        ("/v1/models/iris:predict", {"inputs": [[0] * 4], "signature_name": "other"}, 400, "signature_name"),
        ("/v1/models/iris:predict", {"instances": [[{"b64": "!!"}] * 4]}, 400, "expected numbers"),
        ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, 400, "lacks data"),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [0] * 4}]},
            400,
            "unknown datatype",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0] * 4}]},
            400,
            "holds 8 values, data has 4",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]},
            400,
            "does not fit datatype FP32",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
            400,
            "does not fit input",
        ),
        (
            "/v2/models/iris/infer",
            {
                "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}],
                "outputs": [{"name": "nope"}],
            },
            400,
            "unknown outputs",
        ),
        (
            "/v2/models/iris/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0] * 4}], "id": 5},
            400,
            '"id" must be a string',
        ),
        ("/v2/models/iris/infer", {"inputs": "x"}, 400, "non-empty"),
    ],
)
@pytest.mark.slow
async def test_bad_requests_get_4xx_with_an_error(
    single: tuple[TestClient, Any], path: str, body: Any, status: int, needle: str
) -> None:
    client, _ = single
    got_status, got = await post(client, path, body)
    assert got_status == status, got
    assert needle in got["error"]


@pytest.mark.slow
async def test_oversized_body_is_413(tmp_path: Path) -> None:
    client = await client_for(models.single(tmp_path / "m.keras"), "m", ServerConfig(max_request_bytes=1000))
    try:
        status, body = await post(client, "/v1/models/m:predict", {"instances": [[0.0] * 4] * 200})
        assert status == 413
        assert "larger than 1000 bytes" in body["error"]
    finally:
        await client.close()


@pytest.mark.slow
async def test_concurrent_requests_share_model_calls_and_get_their_own_rows(tmp_path: Path) -> None:
    path = models.single(tmp_path / "m.keras")
    client = await client_for(path, "m", ServerConfig(max_batch_size=64, max_latency_ms=50))
    model = models.load(path)
    try:
        batcher = client.app[BATCHER]
        calls_before = batcher.calls
        rng = np.random.default_rng(3)
        requests = [rng.normal(size=(int(rng.integers(1, 4)), 4)).astype("float32") for _ in range(20)]
        results = await asyncio.gather(
            *(post(client, "/v1/models/m:predict", {"instances": r.tolist()}) for r in requests)
        )
        assert batcher.calls - calls_before < len(requests)
        for sent, (status, body) in zip(requests, results, strict=True):
            assert status == 200
            np.testing.assert_allclose(body["predictions"], model.predict(sent, verbose=0), rtol=1e-5, atol=1e-7)
    finally:
        await client.close()


@pytest.mark.slow
async def test_batching_off_is_one_call_per_request(tmp_path: Path) -> None:
    client = await client_for(models.single(tmp_path / "m.keras"), "m", ServerConfig(max_batch_size=1))
    try:
        batcher = client.app[BATCHER]
        before = batcher.calls
        # One row each: a request of more rows than max_batch_size runs in chunks (test_server_pressure.py).
        await asyncio.gather(*(post(client, "/v1/models/m:predict", {"instances": X[:1].tolist()}) for _ in range(8)))
        assert batcher.calls - before == 8
    finally:
        await client.close()


@pytest.mark.slow
async def test_overload_sheds_with_503(tmp_path: Path) -> None:
    import time

    slot = Slot("slow")
    slot.model = ServedModel.load(str(models.single(tmp_path / "m.keras")), "slow")
    slot.model.warm_up()
    real = slot.model.predict

    def slow(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.2)
        return real(inputs)

    slot.model.predict = slow  # type: ignore[method-assign]
    client = TestClient(TestServer(create_app(slot, ServerConfig(max_batch_size=1, max_queue=2))))
    await client.start_server()
    try:
        results = await asyncio.gather(
            *(post(client, "/v1/models/slow:predict", {"instances": X[:1].tolist()}) for _ in range(10))
        )
        codes = sorted(status for status, _ in results)
        assert 200 in codes
        assert 503 in codes
        assert all("overloaded" in body["error"] for status, body in results if status == 503)
    finally:
        await client.close()


@pytest.mark.slow
async def test_metrics(single: tuple[TestClient, Any]) -> None:
    client, _ = single
    await post(client, "/v1/models/iris:predict", {"instances": X.tolist()})
    await post(client, "/v1/models/nope:predict", {"instances": X.tolist()})
    async with client.get("/metrics") as resp:
        text = await resp.text()
    assert 'keras_server_requests_total{code="200",endpoint="/v1/models/{name}:predict",version="1"} 1.0' in text
    assert 'keras_server_requests_total{code="404",endpoint="/v1/models/{name}:predict",version=""} 1.0' in text
    assert "keras_server_request_duration_seconds_bucket" in text
    assert "keras_server_batch_size_count 1.0" in text
    assert "keras_server_queue_depth 0.0" in text
    assert "keras_server_model_load_seconds" in text


async def test_loading_model_is_not_ready(tmp_path: Path) -> None:
    client = TestClient(TestServer(create_app(Slot("later"), ServerConfig())))
    await client.start_server()
    try:
        async with client.get("/v2/health/live") as resp:
            assert resp.status == 200
        async with client.get("/v2/health/ready") as resp:
            assert resp.status == 503
        status, body = await post(client, "/v1/models/later:predict", {"instances": [[0] * 4]})
        assert status == 503
        assert "loading" in body["error"]
    finally:
        await client.close()


@pytest.mark.slow
def test_saved_model_export_is_served(tmp_path: Path) -> None:
    model = models.load(models.single(tmp_path / "m.keras"))
    model.export(str(tmp_path / "exported"), verbose=False)
    served = ServedModel.load(str(tmp_path / "exported"), "exported")
    served.warm_up()
    out = served.predict({served.inputs[0].name: X})
    np.testing.assert_allclose(next(iter(out.values())), model.predict(X, verbose=0), rtol=1e-5)


@pytest.mark.slow
async def test_string_inputs_as_b64_text_and_bytes(tmp_path: Path) -> None:
    client = await client_for(models.strings(tmp_path / "s.keras"), "words")
    try:
        async with client.get("/v2/models/words") as resp:
            assert (await resp.json())["inputs"] == [{"name": "word", "datatype": "BYTES", "shape": [-1, 1]}]
        dog = base64.b64encode(b"dog").decode()
        status, body = await post(
            client, "/v1/models/words:predict", {"instances": [[{"b64": dog}], ["bird"], ["unknown"]]}
        )
        assert status == 200, body
        assert body["predictions"] == [[2.0], [3.0], [0.0]]
        status, body = await post(
            client,
            "/v2/models/words/infer",
            {"inputs": [{"name": "word", "shape": [2, 1], "datatype": "BYTES", "data": ["cat", {"b64": dog}]}]},
        )
        assert status == 200, body
        assert body["outputs"][0]["data"] == [1.0, 2.0]
        status, body = await post(client, "/v1/models/words:predict", {"instances": [[{"b64": "!!"}]]})
        assert status == 400
        assert "invalid base64" in body["error"]
        status, body = await post(
            client,
            "/v2/models/words/infer",
            {"inputs": [{"name": "word", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]},
        )
        assert status == 400
        assert "does not fit input 'word'" in body["error"]
    finally:
        await client.close()


async def binary_post(client: TestClient, path: str, header: dict[str, Any], data: bytes, length: str | None = None):
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": length or str(len(text))}
    async with client.post(path, data=text + data, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


@pytest.mark.slow
async def test_v2_binary_tensors_in_and_out(multi: tuple[TestClient, Any]) -> None:
    client, model = multi
    counts = np.array([[1, 2], [0, 0], [3, 1]], dtype="<i4")
    features = X[:3].astype("<f4")
    header = {
        "inputs": [
            {"name": "features", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}},
            {"name": "counts", "shape": [3, 2], "datatype": "INT32", "data": counts.reshape(-1).tolist()},
        ],
        "outputs": [{"name": "probs", "parameters": {"binary_data": True}}, {"name": "score"}],
    }
    status, headers, raw = await binary_post(client, "/v2/models/multi/infer", header, features.tobytes())
    assert status == 200, raw
    length = int(headers["Inference-Header-Content-Length"])
    response = json.loads(raw[:length])
    probs, score = response["outputs"]
    assert probs["parameters"]["binary_data_size"] == len(raw) - length == 3 * 3 * 4
    expected = model.predict({"features": features, "counts": counts}, verbose=0)
    np.testing.assert_allclose(np.frombuffer(raw[length:], "<f4").reshape(3, 3), expected["probs"], rtol=1e-5)
    np.testing.assert_allclose(np.array(score["data"]).reshape(3, -1), expected["score"], rtol=1e-5)


@pytest.mark.parametrize(
    ("size", "data", "length", "message"),
    [
        (48, b"\0" * 40, None, "goes past the end"),
        (42, b"\0" * 42, None, "not a whole number of FP32"),
        (48, b"\0" * 52, None, "4 bytes of binary data belong to no input"),
        (48, b"\0" * 48, "many", "must be a number of bytes"),
        (48, b"\0" * 48, "100000", "but the body has"),
        (-1, b"", None, "binary_data_size must be a number of bytes"),
    ],
)
@pytest.mark.slow
async def test_v2_binary_mistakes_are_400(
    multi: tuple[TestClient, Any], size: int, data: bytes, length: str | None, message: str
) -> None:
    client, _ = multi
    header = {
        "inputs": [
            {"name": "features", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}},
            {"name": "counts", "shape": [3, 2], "datatype": "INT32", "data": [0] * 6},
        ]
    }
    status, _, raw = await binary_post(client, "/v2/models/multi/infer", header, data, length)
    assert status == 400
    assert message in json.loads(raw)["error"]


@pytest.mark.slow
async def test_v2_binary_bytes_elements(tmp_path: Path) -> None:
    client = await client_for(models.strings(tmp_path / "s.keras"), "words")
    try:
        data = b"".join(len(w).to_bytes(4, "little") + w for w in (b"bird", b"cat"))
        header = {
            "inputs": [{"name": "word", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 15}}]
        }
        status, _, raw = await binary_post(client, "/v2/models/words/infer", header, data)
        assert status == 200, raw
        assert json.loads(raw)["outputs"][0]["data"] == [3.0, 1.0]
        status, _, raw = await binary_post(client, "/v2/models/words/infer", header, data[:-1])
        assert status == 400
    finally:
        await client.close()


@pytest.mark.slow
def test_models_run_xla_compiled_when_xla_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = ServedModel.load(str(models.single(tmp_path / "m.keras")), "m")
    served._try_xla()
    assert served.compiled
    served.warm_up(4)  # keeps whichever call is faster: both must give the model's answers
    expected = models.load(tmp_path / "m.keras").predict(X, verbose=0)
    for compiled in (True, False):
        served.compiled = compiled
        out = served.predict({served.inputs[0].name: X})
        np.testing.assert_allclose(next(iter(out.values())), expected, rtol=1e-5)
    text = ServedModel.load(str(models.strings(tmp_path / "s.keras")), "s")
    text.warm_up(2)  # a string lookup: XLA cannot compile it, predict_on_batch serves it
    assert not text.compiled
    out = text.predict({"word": np.array([[b"dog"]], dtype=object)})
    assert out["index"].tolist() == [[2.0]]
    monkeypatch.setenv("KERAS_SERVER_XLA", "0")
    plain = ServedModel.load(str(tmp_path / "m.keras"), "m")
    plain.warm_up(1)
    assert not plain.compiled
