"""TF Serving's :classify and :regress: examples (with context) in, [label, score] pairs or values out,
a 400 saying why for malformed examples and for models whose output cannot be read that way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from keras_server import examples
from keras_server.app import BATCHER, Slot, create_app
from keras_server.codec import RequestError
from keras_server.config import ServerConfig
from keras_server.model import ServedModel, TensorSpec

X = np.random.default_rng(5).normal(size=(3, 4)).astype("float32")
F32 = np.dtype("float32")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tasks")
    return {
        "single": models.single(root / "single.keras"),  # softmax over 3 classes
        "multi": models.multi(root / "multi.keras"),  # two outputs
        "constant": models.constant(root / "constant.keras", 0.25),  # [batch, 1]
        "echo": models.echo(root / "echo.keras"),  # a string output
    }


@pytest_asyncio.fixture
async def client_for(saved: dict[str, Path]) -> AsyncIterator[Any]:
    clients: list[TestClient] = []

    async def make(kind: str, config: ServerConfig | None = None) -> TestClient:
        slot = Slot("m")
        model = ServedModel.load(str(saved[kind]), "m")
        model.warm_up(4)
        slot.model = model
        client = TestClient(TestServer(create_app(slot, config or ServerConfig(max_batch_size=4))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, data=body if isinstance(body, str) else json.dumps(body)) as resp:
        return resp.status, await resp.json()


# --- parsing examples (pure) ---


def test_examples_merge_over_the_context_and_fill_each_input() -> None:
    specs = [TensorSpec("a", F32, (None, 2)), TensorSpec("b", np.dtype("int32"), (None,))]
    body = {"context": {"a": [9, 9], "b": 1}, "examples": [{"a": [1, 2]}, {"b": [5]}, {"a": [3, 4], "b": 7}]}
    arrays = examples.parse_examples(body, specs)
    np.testing.assert_array_equal(arrays["a"], [[1, 2], [9, 9], [3, 4]])  # an example's feature wins
    np.testing.assert_array_equal(arrays["b"], [1, 5, 7])
    assert arrays["a"].dtype == F32
    assert arrays["b"].dtype == np.dtype("int32")


def test_flat_example_values_fill_the_input_shape_and_nested_ones_are_taken_as_they_are() -> None:
    spec = [TensorSpec("img", F32, (None, 2, 2))]
    flat = examples.parse_examples({"examples": [{"img": [1, 2, 3, 4]}]}, spec)["img"]
    nested = examples.parse_examples({"examples": [{"img": [[1, 2], [3, 4]]}]}, spec)["img"]
    np.testing.assert_array_equal(flat, [[[1, 2], [3, 4]]])
    np.testing.assert_array_equal(nested, flat)
    # One input: a feature of any name feeds it (Keras names inputs itself).
    single = examples.parse_examples({"examples": [{"x": [1, 2, 3, 4]}]}, spec)["img"]
    np.testing.assert_array_equal(single, flat)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([1], "JSON object"),
        ({"examples": []}, "non-empty list"),
        ({"examples": {"a": [1, 2]}}, "non-empty list"),
        ({"examples": [[1, 2]]}, "examples[0] must be an object"),
        ({"examples": [{"a": [1, 2]}], "context": [1]}, '"context" must be an object'),
        ({"examples": [{"a": [1, 2], "b": 1}, {"c": [1, 2]}]}, "examples[1] lacks feature 'a'"),
        ({"examples": [{"a": [1, 2, 3], "b": 1}]}, "must have shape [-1, 2]"),
        ({"examples": [{"a": ["x", "y"], "b": 1}]}, "expected numbers"),
        ({"examples": [{"a": [1, 2], "b": 1.5}]}, "takes integers"),
        ({"examples": [{"a": [1, 2], "b": 1}], "signature_name": "other"}, "unknown signature_name"),
    ],
)
def test_malformed_examples_are_400(body: Any, needle: str) -> None:
    specs = [TensorSpec("a", F32, (None, 2)), TensorSpec("b", np.dtype("int32"), (None,))]
    with pytest.raises(RequestError) as caught:
        examples.parse_examples(body, specs)
    assert caught.value.status == 400
    assert needle in caught.value.message


@pytest.mark.parametrize(
    ("task", "outputs", "needle"),
    [
        ("regress", [TensorSpec("p", F32, (None, 10))], "output 'p' has shape [-1, 10]"),
        ("classify", [TensorSpec("v", F32, (None,))], "shape [batch, classes]"),
        ("classify", [TensorSpec("w", np.dtype(object), (None, 1))], "output 'w' is text, not numbers"),
        ("regress", [TensorSpec("a", F32, (None, 1)), TensorSpec("b", F32, (None, 1))], "one output"),
    ],
)
def test_what_a_model_cannot_do_is_a_400_saying_why(
    task: examples.Task, outputs: list[TensorSpec], needle: str
) -> None:
    with pytest.raises(RequestError) as caught:
        examples.check(task, outputs)
    assert caught.value.status == 400
    assert needle in caught.value.message


def test_results_as_tf_serving_writes_them() -> None:
    scores = np.array([[0.1, 0.9], [0.7, 0.3]], dtype="float32")
    got = examples.result("classify", {"p": scores})["result"]
    assert [[label for label, _ in row] for row in got] == [["0", "1"], ["0", "1"]]
    np.testing.assert_allclose([[s for _, s in row] for row in got], scores)
    assert examples.result("regress", {"v": np.array([[1.5], [2.5]])}) == {"result": [1.5, 2.5]}
    assert examples.result("regress", {"v": np.array([3.0])}) == {"result": [3.0]}
    with pytest.raises(RequestError, match=r"has shape \[2, 3\]"):  # an open dimension that does not fit
        examples.result("regress", {"v": np.zeros((2, 3))})


# --- through the server ---


@pytest.mark.slow
async def test_classify_gives_each_example_its_class_scores(client_for: Any, saved: dict[str, Path]) -> None:
    client = await client_for("single")
    body = {"examples": [{"input": row.tolist()} for row in X]}
    status, got = await post(client, "/v1/models/m:classify", body)
    assert status == 200, got
    expected = models.load(saved["single"]).predict(X, verbose=0)
    assert [[label for label, _ in row] for row in got["result"]] == [["0", "1", "2"]] * 3
    np.testing.assert_allclose([[s for _, s in row] for row in got["result"]], expected, rtol=1e-5)
    status, got = await post(client, "/v1/models/m/versions/1:classify", body)
    assert status == 200, got


@pytest.mark.slow
async def test_regress_gives_one_value_per_example(client_for: Any) -> None:
    client = await client_for("constant")
    status, got = await post(client, "/v1/models/m:regress", {"context": {"x": [0, 0, 0, 0]}, "examples": [{}, {}]})
    assert (status, got) == (200, {"result": [0.25, 0.25]})


@pytest.mark.parametrize(
    ("kind", "path", "needle"),
    [
        ("single", "/v1/models/m:regress", "regress needs one value per example"),
        ("echo", "/v1/models/m:classify", "output 'same' is text, not numbers"),
        ("multi", "/v1/models/m:classify", "classify needs a model with one output; this one has 2"),
    ],
)
@pytest.mark.slow
async def test_a_model_that_cannot_gets_a_400(client_for: Any, kind: str, path: str, needle: str) -> None:
    client = await client_for(kind)
    status, got = await post(client, path, {"examples": [{"input": [0.0] * 4}]})
    assert status == 400, got
    assert needle in got["error"]


@pytest.mark.slow
async def test_bad_bodies_are_400_never_500(client_for: Any) -> None:
    client = await client_for("single")
    for body, needle in [
        ("{nope", "not valid JSON"),
        ({"examples": [{"input": [1, 2]}]}, "must have shape [-1, 4]"),
        ({"examples": [{"input": [1, 2, 3, 4]}, {"input": [1, 2, 3]}]}, "rectangular"),
        ({"examples": [{"input": [[1], [2], [3], [4]]}]}, "must have shape [-1, 4]"),
        ({"examples": [{"input": [{"b64": "AAAA"}] * 4}]}, "expected numbers"),
        ({"instances": [[0] * 4]}, '"examples" must be a non-empty list'),
    ]:
        status, got = await post(client, "/v1/models/m:classify", body)
        assert status == 400, (body, got)
        assert needle in got["error"]


@pytest.mark.slow
async def test_classify_shares_model_calls_with_predict(client_for: Any) -> None:
    client = await client_for("single", ServerConfig(max_batch_size=32, max_latency_ms=50))
    batcher = client.app[BATCHER]
    before = batcher.calls
    classify = {"examples": [{"input": X[0].tolist()}]}
    predict = {"instances": X[:1].tolist()}
    results = await asyncio.gather(
        *(post(client, "/v1/models/m:classify", classify) for _ in range(8)),
        *(post(client, "/v1/models/m:predict", predict) for _ in range(8)),
    )
    assert all(status == 200 for status, _ in results)
    assert batcher.calls - before < 16
    scores = [s for _, s in results[0][1]["result"][0]]
    np.testing.assert_allclose(scores, results[8][1]["predictions"][0], rtol=1e-6)
