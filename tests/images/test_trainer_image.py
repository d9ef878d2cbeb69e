"""The trainer image runs the Job and the Deployment the operator builds, as a kubelet would run them.

The podman arguments come from keras_operator.builders (training.build_job for examples/digits.yaml,
serving.build_deployment for examples/digits-service.yaml): uid 1000, read-only root, /tmp as tmpfs,
the job file where the downward API mounts it, a host folder as the "models" PVC, the termination log.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from podrun import ROOT, free_port, host_dir, podman, podman_run_args, progress, wait_http, workdir

from helpers.server import get_json, post_json
from keras_operator.api.parse import parse
from keras_operator.builders.serving import build_deployment
from keras_operator.builders.training import build_job

pytestmark = [pytest.mark.images]


def resource(path: str, **meta: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    doc["metadata"].update(namespace="default", uid=str(uuid.uuid4()), generation=1, **meta)
    return doc


@dataclass
class Training:
    exit_code: int
    logs: str
    termination_message: str
    pvc: Path
    job: dict[str, Any]


@pytest.fixture(scope="module")
def trained(images) -> Iterator[Training]:
    doc = resource("examples/digits.yaml")
    spec = parse(doc).spec
    job = build_job(doc, spec, images.trainer)
    with workdir("keras-trainer-image-") as work:
        pvc = host_dir(work / "pvc" / "models", writable=True)
        args, termination_log = podman_run_args(
            job["spec"]["template"]["spec"],
            image=images.trainer,
            work=work,
            annotations=job["spec"]["template"]["metadata"]["annotations"],
            claims={"models": pvc},
        )
        assert termination_log is not None
        progress("training examples/digits.yaml in the trainer image")
        run = podman("run", "--rm", "--name", f"keras-train-{uuid.uuid4().hex[:8]}", *args, check=False, timeout=600)
        progress(f"training exited with {run.returncode}")
        yield Training(run.returncode, run.stdout + run.stderr, termination_log.read_text(), pvc, job)


@pytest.mark.timeout(1800)
def test_trainer_image_trains_digits_as_the_job_runs_it(trained: Training) -> None:
    container = trained.job["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True  # what the run above enforced
    assert trained.exit_code == 0, trained.logs[-3000:]
    result = json.loads(trained.termination_message)
    assert result["phase"] == "Succeeded", result
    run = f"runs/{trained.job['metadata']['ownerReferences'][0]['uid']}"  # the run's folder: its resource's uid
    assert result["modelUri"] == f"pvc://models/digits/{run}/model.keras"
    assert result["metrics"]["val_accuracy"] > 0.8
    assert (trained.pvc / "digits" / run / "model.keras").stat().st_size > 10_000
    epochs = [json.loads(line) for line in trained.logs.splitlines() if '"epoch_end"' in line]
    assert epochs, trained.logs[-3000:]
    assert epochs[-1]["epoch"] == result["epoch"]


@pytest.mark.timeout(1800)
def test_trainer_image_serves_the_trained_model_as_the_deployment_runs_it(images, trained: Training) -> None:
    assert trained.exit_code == 0, "the training failed (see the test above)"
    doc = resource("examples/digits-service.yaml")
    spec = parse(doc).spec
    model_uri = json.loads(trained.termination_message)["modelUri"]  # the run's model, as the operator passes it
    deployment = build_deployment(doc, spec, model_uri, images.trainer)
    pod_spec = deployment["spec"]["template"]["spec"]
    port = free_port()
    with workdir("keras-server-image-") as work:
        args, _ = podman_run_args(
            pod_spec, image=images.trainer, work=work, claims={"models": trained.pvc}, ports={8080: port}
        )
        name = f"keras-serve-{uuid.uuid4().hex[:8]}"
        progress("serving the trained model from the trainer image")
        podman("run", "--detach", "--name", name, *args)
        try:
            probe = pod_spec["containers"][0]["readinessProbe"]["httpGet"]["path"]
            wait_http(f"http://127.0.0.1:{port}{probe}", 180, alive=[name])
            data = np.load(ROOT / "examples" / "data" / "digits-test.npz")
            x, y = data["x"][:16], data["y"][:16]

            code, body = post_json(f"http://127.0.0.1:{port}/v1/models/digits:predict", {"instances": x.tolist()})
            assert code == 200, body
            predictions = np.array(body["predictions"])
            assert predictions.shape == (16, 10)
            assert (predictions.argmax(axis=1) == y).mean() >= 0.75

            code, meta = get_json(f"http://127.0.0.1:{port}/v2/models/digits")
            assert code == 200, meta
            request = {
                "inputs": [
                    {
                        "name": meta["inputs"][0]["name"],
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    }
                ]
            }
            code, body = post_json(f"http://127.0.0.1:{port}/v2/models/digits/infer", request)
            assert code == 200, body
            (output,) = body["outputs"]
            assert output["shape"] == [16, 10]
            np.testing.assert_allclose(np.array(output["data"]).reshape(16, 10), predictions, rtol=1e-4, atol=1e-5)
        finally:
            stop = podman("stop", "--time", "30", name, check=False)
            logs = podman("logs", name, check=False)
            exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False).stdout.strip()
            podman("rm", "--force", name, check=False)
    assert stop.returncode == 0, stop.stderr
    assert exit_code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]  # SIGTERM drains, then exits cleanly


@pytest.mark.timeout(1800)
def test_trainer_image_holds_no_build_tools_and_the_storage_drivers(images) -> None:
    code = (
        "import importlib.util as u, sys; "
        "gone = [m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m)]; "
        "missing = [m for m in ('tensorflow', 'keras', 's3fs', 'gcsfs', 'keras_trainer') if not u.find_spec(m)]; "
        "(gone or missing) and sys.exit(f'present: {gone}, missing: {missing}'); "
        # The drivers load with everything they import (botocore, google-auth...), as fsspec will use them.
        "import fsspec; fsspec.filesystem('s3', anon=True); fsspec.filesystem('gs', token='anon')"
    )
    result = podman("run", "--rm", "--read-only", "--entrypoint", "python", images.trainer, "-c", code, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads(podman("image", "inspect", images.trainer).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
