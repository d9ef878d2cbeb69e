"""s3:// on the emulated cluster: a training reads and writes a bucket, a model service serves from it.

moto's S3 server stands in for S3 or MinIO. The AWS settings reach the pods only through
`spec.podTemplate.spec.env` (this test process has none of them), as they would in a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cluster.harness import DEPLOYMENTS, JOBS, KMS, KTJ, Cluster, operator
from helpers.jobs import tiny_job
from helpers.s3 import Bucket, moto_server, new_bucket
from helpers.server import post_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


def pod_env(bucket: Bucket) -> dict:
    return {"spec": {"env": [{"name": k, "value": v} for k, v in bucket.env.items()]}}


def test_train_to_s3_then_serve_from_s3(
    cluster: Cluster, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    bucket = new_bucket(s3_endpoint)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(96, 8)).astype("float32"), y=np.arange(96) % 3)
    data = bucket.upload(tmp_path / "d.npz", "datasets/d.npz")

    job = tiny_job("s3job", data={"train": {"uri": data}}, output={"uri": bucket.url("runs/s3job")})
    job["spec"]["podTemplate"] = pod_env(bucket)
    kms = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "s3job"},
        "spec": {"model": {"trainingJobRef": {"name": "s3job"}}, "podTemplate": pod_env(bucket)},
    }
    with operator(cluster):
        cluster.create(KTJ, job)
        cluster.create(KMS, kms)
        cluster.wait_for(
            lambda: (cluster.ktj("s3job").get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            120,
            "the end of training",
        )
        status = cluster.ktj("s3job")["status"]
        assert status["phase"] == "Succeeded", status
        run = f"runs/s3job/runs/{cluster.ktj('s3job')['metadata']['uid']}"  # the run's own prefix: its uid
        assert status["modelUri"] == bucket.url(f"{run}/model.keras")
        assert {f"{run}/model.keras", f"{run}/_COMPLETE.json"} <= set(bucket.keys("runs/s3job/"))

        served = cluster.wait_for(
            lambda: (
                ((cluster.get(KMS, "s3job") or {}).get("status") or {}).get("phase") in ("Ready", "Failed")
                and cluster.get(KMS, "s3job")["status"]
            ),
            120,
            "the model service",
        )
        assert served["phase"] == "Ready", served
        assert served["modelUri"] == bucket.url(f"{run}/model.keras")
        x = rng.normal(size=(2, 8)).astype("float32")
        code, body = post_json(
            f"{cluster.service_url(served['url'])}/v1/models/s3job:predict", {"instances": x.tolist()}
        )
        assert code == 200, body

    model = keras.models.load_model(bucket.download(f"{run}/model.keras", tmp_path / "m.keras"))
    np.testing.assert_allclose(body["predictions"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    container = cluster.get(DEPLOYMENTS, "s3job")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "AWS_ENDPOINT_URL", "value": s3_endpoint} in container["env"]
    assert cluster.get(JOBS, "s3job-train") is not None
