"""spec.code on the emulated cluster: a training whose custom layer and loss come from a ConfigMap, then a
KerasModelService serving it by trainingJobRef with real trainer and server processes; the server imports
the code recorded with the run (the service names no code). On tensorflow and jax."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cluster.harness import CONFIGMAPS, KMS, KTJ, Cluster, operator
from helpers import custom_code
from helpers.server import post_json

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_config_map_trained_model_is_served_by_training_job_ref(cluster: Cluster, backend: str) -> None:
    import tensorflow as tf

    service = copy.deepcopy(custom_code.SERVICE)
    service["spec"]["backend"] = backend
    with operator(cluster):
        # examples/custom-code.yaml as it is, but for a short training on random data.
        cluster.create(CONFIGMAPS, custom_code.CONFIG_MAP)
        trained = cluster.create(KTJ, custom_code.training("digits-custom", backend=backend))
        cluster.create(KMS, service)
        status = cluster.wait_for(
            lambda: (s := (cluster.get(KMS, "digits-custom") or {}).get("status") or {}).get("phase") == "Ready" and s,
            240,
            "the service Ready",
        )
        training = cluster.ktj("digits-custom")["status"]
        assert training["phase"] == "Succeeded", training
        run = cluster.pvc_root / "models" / "digits-custom" / "runs" / trained["metadata"]["uid"]
        assert training["codeHash"] == custom_code.check_recorded(run)
        assert "loads and predicts alike" in training["message"]
        # Keras' export from jax wraps the computation in one XlaCallModule op; tensorflow's has none.
        assert (b"XlaCallModule" in (run / "savedmodel" / "saved_model.pb").read_bytes()) == (backend == "jax")

        x = np.random.default_rng(4).uniform(0, 16, size=(3, 64)).astype("float32")
        code, body = post_json(
            f"{cluster.service_url(status['url'])}/v1/models/digits-custom:predict", {"instances": x.tolist()}
        )
        assert code == 200, body
        fn = tf.saved_model.load(str(run / "savedmodel")).signatures["serving_default"]
        (name,) = fn.structured_input_signature[1]
        (expected,) = fn(**{name: tf.constant(x)}).values()
        np.testing.assert_allclose(body["predictions"], expected.numpy(), rtol=1e-4, atol=1e-5)
