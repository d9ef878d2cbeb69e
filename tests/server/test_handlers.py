"""A handler around a real model: text tokenised for a model of word ids and its classes named, on both
protocols, batched; errors of user code answered as JSON naming it, the server serving on; a handler that
cannot be loaded stops the server with one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from helpers import models
from keras_server.app import METRICS, Slot, create_app
from keras_server.config import ServerConfig
from keras_server.handler import load
from keras_server.model import ServedModel

pytestmark = pytest.mark.slow

CODE = Path(__file__).resolve().parent.parent / "helpers" / "handler_code"
TEXTS = ["good movie", "boring plot", "bad bad movie", "fine", "unknown words only", "good plot fine movie"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.token_classifier(tmp_path_factory.mktemp("handler") / "tokens.keras")


async def app_client(path: Path, ref: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.syspath_prepend(str(CODE))
    slot = Slot("reviews")
    slot.model = ServedModel.load(str(path), "reviews")
    slot.model.warm_up(8)
    # A long wait for the batch to fill: requests sent together are batched together, on a busy machine too.
    config = ServerConfig(max_batch_size=8, max_latency_ms=2000)
    client = TestClient(TestServer(create_app(slot, config, load(ref))))
    await client.start_server()
    return client


@pytest_asyncio.fixture
async def tokens(classifier: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    client = await app_client(classifier, "text_handler:Tokens", monkeypatch)
    yield client
    await client.close()


def expected(path: Path, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(class names, scores) for the texts, tokenised, predicted and named here, without the server."""
    import text_handler

    probs = models.load(path).predict(text_handler.token_ids(texts), verbose=0)
    return [text_handler.CLASSES[i] for i in probs.argmax(axis=1)], probs.max(axis=1)


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    async with client.post(path, json=body) as resp:
        return resp.status, await resp.json()


def v2_text(texts: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


async def test_text_in_class_names_out_on_both_protocols(tokens: TestClient, classifier: Path) -> None:
    names, scores = expected(classifier, TEXTS)
    assert len(set(names)) > 1  # the names come from the model's outputs, not a constant
    status, body = await post(tokens, "/v1/models/reviews:predict", {"instances": TEXTS})
    assert status == 200, body
    assert [p["label"] for p in body["predictions"]] == names
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], scores, rtol=1e-5)
    status, body = await post(tokens, "/v1/models/reviews:predict", {"inputs": {"text": TEXTS[:2]}})
    assert status == 200, body
    assert body["outputs"]["label"] == names[:2]

    status, body = await post(tokens, "/v2/models/reviews/infer", {"id": "r1", **v2_text(TEXTS)})
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["label"]["shape"] == [len(TEXTS)]
    assert outputs["label"]["data"] == names
    np.testing.assert_allclose(outputs["score"]["data"], scores, rtol=1e-5)
    # b64 text reaches preprocess as bytes; only the outputs asked for are answered.
    b64 = [{"b64": "Z29vZCBtb3ZpZQ=="}]  # "good movie"
    body = {**v2_text(b64), "outputs": [{"name": "label"}]}
    status, answer = await post(tokens, "/v2/models/reviews/infer", body)
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["label"]
    assert answer["outputs"][0]["data"] == names[:1]


async def test_concurrent_requests_reach_the_handler_as_one_batch(tokens: TestClient, classifier: Path) -> None:
    names, _ = expected(classifier, TEXTS)
    requests = [post(tokens, "/v1/models/reviews:predict", {"instances": [t]}) for t in TEXTS[:3]]
    requests += [post(tokens, "/v2/models/reviews/infer", v2_text([t])) for t in TEXTS[3:]]
    answers = await asyncio.gather(*requests)
    assert all(status == 200 for status, _ in answers), answers
    tfs = [body["predictions"][0] for _, body in answers[:3]]
    v2 = [{o["name"]: o["data"][0] for o in body["outputs"]} for _, body in answers[3:]]
    assert [row["label"] for row in tfs + v2] == names  # each request got its own rows back
    batches = [row["batch"] for row in tfs + v2]
    assert max(batches) > 1, batches  # preprocess and postprocess saw batches, not requests


async def test_user_code_errors_are_json_naming_the_handler_and_the_server_serves_on(tokens: TestClient) -> None:
    status, body = await post(tokens, "/v1/models/reviews:predict", {"instances": [7]})
    assert (status, body) == (
        400,
        {"error": "handler text_handler:Tokens.preprocess: TypeError: each text must be a string, got int64"},
    )
    status, body = await post(tokens, "/v2/models/reviews/infer", v2_text(["explode please"]))
    assert (status, body) == (
        500,
        {"error": "handler text_handler:Tokens.preprocess: RuntimeError: the tokeniser broke"},
    )
    status, body = await post(tokens, "/v1/models/reviews:predict", {"instances": ["good movie"]})
    assert status == 200, body
    status, body = await post(tokens, "/v1/models/reviews:classify", {"examples": [{"text": "good"}]})
    assert (status, body) == (400, {"error": ":classify is not served with a handler; use :predict"})
    async with tokens.get("/metrics") as resp:
        metrics = await resp.text()
    assert 'keras_server_handler_errors_total{code="400",stage="preprocess"} 1.0' in metrics
    assert 'keras_server_handler_errors_total{code="500",stage="preprocess"} 1.0' in metrics


async def test_a_failing_postprocess_fails_only_its_batch(classifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = await app_client(classifier, "text_handler:BrokenAfter", monkeypatch)
    try:
        ids = [[2, 5, 0, 0, 0, 0]]
        for _ in range(2):  # the server is still there for the next request
            status, body = await post(client, "/v1/models/reviews:predict", {"instances": ids})
            assert (status, body) == (
                500,
                {"error": "handler text_handler:BrokenAfter.postprocess: ZeroDivisionError: division by zero"},
            )
        # Without a preprocess, requests carry the model's own inputs, checked as without a handler.
        status, body = await post(client, "/v1/models/reviews:predict", {"instances": [["good"] * 6]})
        assert status == 400
        assert "expected numbers, got text" in body["error"]
        assert client.app is not None
        assert client.app[METRICS].handler_errors.labels("postprocess", "500")._value.get() == 2
    finally:
        await client.close()


def test_a_handler_that_cannot_be_loaded_stops_kerasop_serve_with_one_line(classifier: Path, tmp_path: Path) -> None:
    """spec.server.handler reaches the server as --handler; one it cannot import stops it before the model
    loads: exit 1, one line, no traceback."""
    service = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "reviews"},
        "spec": {"model": {"uri": str(classifier)}, "server": {"handler": "no_such_module:Tokens"}},
    }
    (tmp_path / "service.yaml").write_text(json.dumps(service))
    kerasop = Path(sys.executable).parent / "kerasop"
    args = [str(kerasop), "serve", str(tmp_path / "service.yaml"), "--port", "0"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: handler no_such_module:Tokens: cannot import 'no_such_module': ModuleNotFoundError: "
        "No module named 'no_such_module'"
    ]
    assert "Traceback" not in done.stdout
