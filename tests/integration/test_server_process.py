"""The model server as a process, spoken to by clients we did not write."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import models
from helpers.server import get_json, model_server, post_json

X = np.random.default_rng(2).normal(size=(3, 4)).astype("float32")


@pytest.fixture(scope="module")
def multi_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.multi(tmp_path_factory.mktemp("m") / "multi.keras")


def test_tritonclient_speaks_v2_to_it(multi_model: Path) -> None:
    import tritonclient.http as triton

    model = models.load(multi_model)
    counts = np.array([[1, 2], [0, 0], [3, 1]], dtype="int32")
    expected = model.predict({"features": X, "counts": counts}, verbose=0)
    with model_server(multi_model, "multi") as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("multi")
        meta = client.get_model_metadata("multi")
        assert {i["name"] for i in meta["inputs"]} == {"features", "counts"}
        features = triton.InferInput("features", list(X.shape), "FP32")
        features.set_data_from_numpy(X, binary_data=False)
        counts_in = triton.InferInput("counts", list(counts.shape), "INT32")
        counts_in.set_data_from_numpy(counts, binary_data=False)
        outputs = [
            triton.InferRequestedOutput("probs", binary_data=False),
            triton.InferRequestedOutput("score", binary_data=False),
        ]
        result = client.infer("multi", [features, counts_in], outputs=outputs, request_id="abc")
        np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("score"), expected["score"], rtol=1e-5)
        assert result.get_response()["id"] == "abc"
        bad = triton.InferInput("nope", [1, 4], "FP32")
        bad.set_data_from_numpy(X[:1], binary_data=False)
        with pytest.raises(triton.InferenceServerException, match="unknown input"):
            client.infer("multi", [bad, counts_in])


def test_tritonclient_binary_tensors(multi_model: Path, tmp_path: Path) -> None:
    """tritonclient's defaults: inputs and outputs in the binary tensor extension."""
    import tritonclient.http as triton

    model = models.load(multi_model)
    counts = np.array([[1, 2], [0, 0], [3, 1]], dtype="int32")
    expected = model.predict({"features": X, "counts": counts}, verbose=0)
    with model_server(multi_model, "multi") as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        features = triton.InferInput("features", list(X.shape), "FP32")
        features.set_data_from_numpy(X)
        counts_in = triton.InferInput("counts", list(counts.shape), "INT32")
        counts_in.set_data_from_numpy(counts)
        result = client.infer("multi", [features, counts_in])  # no outputs named: all come back binary
        np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], rtol=1e-5)
        np.testing.assert_allclose(result.as_numpy("score"), expected["score"], rtol=1e-5)
        assert all("data" not in o for o in result.get_response()["outputs"])
        mixed = client.infer(
            "multi",
            [features, counts_in],
            outputs=[triton.InferRequestedOutput("score"), triton.InferRequestedOutput("probs", binary_data=False)],
        )
        outputs = {o["name"]: o for o in mixed.get_response()["outputs"]}
        assert list(outputs) == ["score", "probs"]
        assert "data" in outputs["probs"]
        assert "data" not in outputs["score"]
        np.testing.assert_allclose(mixed.as_numpy("score"), expected["score"], rtol=1e-5)
    with model_server(models.strings(tmp_path / "s.keras"), "words") as (url, _):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        words = triton.InferInput("word", [3, 1], "BYTES")
        words.set_data_from_numpy(np.array([[b"dog"], [b"cat"], [b"zebra"]], dtype=object))
        result = client.infer("words", [words])
        np.testing.assert_array_equal(result.as_numpy("index"), [[2.0], [1.0], [0.0]])


def test_tf_serving_rest_as_documented(multi_model: Path) -> None:
    """Bodies shaped as in the TensorFlow Serving REST API documentation."""
    with model_server(multi_model, "multi") as (url, _):
        status, body = get_json(f"{url}/v1/models/multi")
        assert status == 200
        assert body["model_version_status"][0]["state"] == "AVAILABLE"
        status, body = post_json(
            f"{url}/v1/models/multi:predict",
            {
                "signature_name": "serving_default",
                "instances": [
                    {"features": [1.0, 2.0, 3.0, 4.0], "counts": [1, 2]},
                    {"features": [0.5, 0.5, 0.5, 0.5], "counts": [0, 1]},
                ],
            },
        )
        assert status == 200
        assert len(body["predictions"]) == 2
        assert set(body["predictions"][0]) == {"probs", "score"}
        status, body = post_json(
            f"{url}/v1/models/multi/versions/1:predict",
            {"inputs": {"features": [[1.0, 2.0, 3.0, 4.0]], "counts": [[1, 2]]}},
        )
        assert status == 200
        assert len(body["outputs"]["probs"][0]) == 3


def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    path = models.single(tmp_path / "m.keras")
    # A long batch window keeps the request in flight while the signal arrives.
    with model_server(path, "m", "--max-latency-ms", "1500", "--max-batch-size", "64") as (url, proc):
        result: dict[str, object] = {}
        thread = threading.Thread(
            target=lambda: result.update(r=post_json(f"{url}/v1/models/m:predict", {"instances": X.tolist()}))
        )
        thread.start()
        import time

        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert proc.wait(timeout=30) == 0
        status, body = result["r"]  # type: ignore[misc]
        assert status == 200
        assert len(body["predictions"]) == 3
        log = proc.stdout.read() if proc.stdout else ""
        assert '"event": "shutting_down"' in log
        assert '"event": "stopped"' in log


def test_unloadable_model_exits_non_zero(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "keras-server"),
            "--model-uri",
            str(tmp_path / "missing.keras"),
            "--model-name",
            "x",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "model_load_failed" in result.stdout
    assert "not found" in result.stdout


def test_kerasop_serve_serves_what_the_deployment_would(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    import yaml

    from helpers.server import free_port

    path = models.single(tmp_path / "m.keras")
    port = free_port()
    (tmp_path / "svc.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kerasoperator.dev/v1alpha1",
                "kind": "KerasModelService",
                "metadata": {"name": "local"},
                "spec": {"model": {"uri": str(path)}, "modelName": "clf", "server": {"port": port}},
            }
        )
    )
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "kerasop"), "serve", str(tmp_path / "svc.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if get_json(f"http://127.0.0.1:{port}/v2/models/clf/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        status, body = post_json(f"http://127.0.0.1:{port}/v1/models/clf:predict", {"instances": X.tolist()})
        assert status == 200
        np.testing.assert_allclose(body["predictions"], models.load(path).predict(X, verbose=0), rtol=1e-5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
