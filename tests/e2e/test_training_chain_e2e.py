"""A training chain as a GitOps repository writes it, end to end: job B fine-tunes from `trainingJobRef: A`
(applied first: it waits), and a KerasModelService serves B by its output folder. The real operator, the
emulated API, real trainer and server processes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.harness import JOBS, KMS, KTJ, Cluster, operator
from helpers.jobs import tiny_job
from helpers.server import get_json, post_json

pytestmark = pytest.mark.e2e


def status(cluster: Cluster, name: str) -> dict:
    return (cluster.get(KTJ, name) or {}).get("status") or {}


def resolved(cluster: Cluster, name: str) -> dict:
    found = {c["type"]: c for c in status(cluster, name).get("conditions") or []}
    return found.get("ModelResolved") or {}


def test_a_chain_waits_fine_tunes_from_its_source_and_serves_by_output_folder(cluster: Cluster) -> None:
    import keras

    # B: one epoch at a learning rate too small to move a weight: its model is A's, shown to be so below.
    finetune = tiny_job(
        "finetune",
        output={"uri": "pvc://models/finetune"},
        training__epochs=1,
        training__optimizer={"name": "sgd", "learningRate": 1e-12},
    )
    finetune["spec"]["model"] = {"trainingJobRef": {"name": "base"}}
    with operator(cluster):
        cluster.create(KTJ, finetune)
        cluster.wait_for(lambda: resolved(cluster, "finetune").get("reason") == "TrainingJobNotFound", 30, "not found")
        base = cluster.create(KTJ, tiny_job("base", output={"uri": "pvc://models/base"}, training__epochs=2))
        cluster.wait_for(lambda: resolved(cluster, "finetune").get("reason") == "WaitingForTraining", 30, "waiting")
        assert status(cluster, "finetune")["phase"] == "Pending"
        assert "base" in resolved(cluster, "finetune")["message"]
        assert cluster.get(JOBS, "finetune-train") is None or status(cluster, "base").get("phase") == "Succeeded"

        cluster.wait_for(lambda: status(cluster, "finetune").get("phase") in ("Succeeded", "Failed"), 240, "B ends")
        a, b = status(cluster, "base"), status(cluster, "finetune")
        assert a["phase"] == "Succeeded", a
        assert b["phase"] == "Succeeded", b
        assert b["startedFrom"] == a["modelUri"] == f"pvc://models/base/runs/{base['metadata']['uid']}/model.keras"
        assert resolved(cluster, "finetune")["status"] == "True"
        job = cluster.get(JOBS, "finetune-train")
        job_file = json.loads(job["spec"]["template"]["metadata"]["annotations"]["kerasoperator.dev/trainer-config"])
        assert job_file["model"]["uri"] == a["modelUri"]

        root = cluster.pvc_root / "models"
        a_model = keras.models.load_model(root / "base" / a["modelUri"].split("models/base/")[1])
        b_model = keras.models.load_model(root / "finetune" / b["modelUri"].split("models/finetune/")[1])
        for before, after in zip(a_model.weights, b_model.weights, strict=True):
            np.testing.assert_allclose(before.numpy(), after.numpy(), atol=1e-6)  # B started from A's weights

        serving = {
            "apiVersion": "kerasoperator.dev/v1alpha1",
            "kind": "KerasModelService",
            "metadata": {"name": "finetune"},
            "spec": {"model": {"uri": "pvc://models/finetune"}},
        }
        cluster.create(KMS, serving)
        cluster.wait_for(
            lambda: ((cluster.get(KMS, "finetune") or {}).get("status") or {}).get("phase") == "Ready", 120, "Ready"
        )
        url = cluster.service_url(cluster.get(KMS, "finetune")["status"]["url"])
        x = np.random.default_rng(3).normal(size=(2, 8)).astype("float32")
        code, body = post_json(f"{url}/v1/models/finetune:predict", {"instances": x.tolist()})
        assert code == 200, body
        np.testing.assert_allclose(body["predictions"], b_model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
        code, metadata = get_json(f"{url}/v2/models/finetune")
        assert code == 200, metadata
        run = b["modelUri"].split("/runs/")[1].split("/")[0]
        assert metadata["parameters"]["training_run"]["runId"] == run
