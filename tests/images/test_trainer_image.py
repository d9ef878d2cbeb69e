"""The trainer image runs the Job and the Deployment the operator builds, as a kubelet would run them.

The podman arguments come from keras_operator.builders (training.build_job for examples/digits.yaml,
serving.build_deployment for examples/digits-service.yaml): uid 1000, read-only root, /tmp as tmpfs,
the job file where the downward API mounts it, a host folder as the "models" PVC, the termination log.

Each test runs per backend image: the default (tensorflow) and the jax trainer (BACKEND=jax), whose
resources say spec.backend: jax (`-k "not jax"` leaves that image's build and runs out).
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
from podrun import ROOT, free_port, host_dir, podman, podman_run_args, pre_stop, progress, wait_http, workdir

from helpers.server import get_json, post_json
from keras_operator.api.parse import parse
from keras_operator.builders.serving_manifests import build_deployment
from keras_operator.builders.training_manifests import build_job

pytestmark = [pytest.mark.images]

BACKENDS = ["tensorflow", "jax"]
# What Keras' SavedModel export writes on the jax backend (jax2tf wraps the JAX computation in one
# XlaCallModule op); on tensorflow the graph holds TensorFlow's own ops and no such op.
JAX_EXPORT_OP = b"XlaCallModule"


def resource(path: str, backend: str = "tensorflow", **meta: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    doc["metadata"].update(namespace="default", uid=str(uuid.uuid4()), generation=1, **meta)
    if backend != "tensorflow":
        doc["spec"]["backend"] = backend
    return doc


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def trainer_image(request: pytest.FixtureRequest, backend: str) -> str:
    """The image the operator picks for this backend (built for the session, on first use)."""
    if backend == "jax":
        return request.getfixturevalue("jax_trainer_image")
    return request.getfixturevalue("images").trainer


@dataclass
class Training:
    backend: str
    exit_code: int
    logs: str
    termination_message: str
    pvc: Path
    job: dict[str, Any]


@pytest.fixture(scope="module")
def trained(backend: str, trainer_image: str) -> Iterator[Training]:
    doc = resource("examples/digits.yaml", backend)
    if backend == "jax":
        # Also the SavedModel, whose graph shows which backend the trainer's Keras ran on.
        doc["spec"]["output"]["formats"] = ["keras", "savedmodel"]
    spec = parse(doc).spec
    job = build_job(doc, spec, trainer_image)
    with workdir("keras-trainer-image-") as work:
        pvc = host_dir(work / "pvc" / "models", writable=True)
        args, termination_log = podman_run_args(
            job["spec"]["template"]["spec"],
            image=trainer_image,
            work=work,
            annotations=job["spec"]["template"]["metadata"]["annotations"],
            claims={"models": pvc},
        )
        assert termination_log is not None
        progress(f"training examples/digits.yaml in the {backend} trainer image")
        run = podman("run", "--rm", "--name", f"keras-train-{uuid.uuid4().hex[:8]}", *args, check=False, timeout=600)
        progress(f"training exited with {run.returncode}")
        yield Training(backend, run.returncode, run.stdout + run.stderr, termination_log.read_text(), pvc, job)


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
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["KERAS_BACKEND"] == trained.backend
    if trained.backend == "jax":
        graph = (trained.pvc / "digits" / run / "savedmodel" / "saved_model.pb").read_bytes()
        assert JAX_EXPORT_OP in graph, "the SavedModel was not exported from JAX: the training ran on another backend"


@pytest.mark.timeout(1800)
def test_trainer_image_serves_the_trained_model_as_the_deployment_runs_it(
    backend: str, trainer_image: str, trained: Training
) -> None:
    assert trained.exit_code == 0, "the training failed (see the test above)"
    doc = resource("examples/digits-service.yaml", backend)
    spec = parse(doc).spec
    model_uri = json.loads(trained.termination_message)["modelUri"]  # the run's model, as the operator passes it
    deployment = build_deployment(doc, spec, model_uri, trainer_image)
    pod_spec = deployment["spec"]["template"]["spec"]
    server_args = pod_spec["containers"][0]["args"]
    assert server_args[server_args.index("--backend") + 1] == backend
    port = free_port()
    with workdir("keras-server-image-") as work:
        args, _ = podman_run_args(
            pod_spec, image=trainer_image, work=work, claims={"models": trained.pvc}, ports={8080: port}
        )
        name = f"keras-serve-{uuid.uuid4().hex[:8]}"
        progress(f"serving the trained model from the {backend} trainer image")
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
            hook = pre_stop(pod_spec["containers"][0])
            if hook is not None:  # as the kubelet before SIGTERM: the command must exist in the image and succeed
                paused = podman("exec", name, *hook, check=False)
                assert paused.returncode == 0, paused.stderr
        finally:
            stop = podman("stop", "--time", "30", name, check=False)
            logs = podman("logs", name, check=False)
            exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False).stdout.strip()
            podman("rm", "--force", name, check=False)
    assert stop.returncode == 0, stop.stderr
    assert exit_code == "0", logs.stdout[-3000:] + logs.stderr[-3000:]  # SIGTERM drains, then exits cleanly


@pytest.mark.timeout(1800)
def test_trainer_image_holds_no_build_tools_and_the_storage_drivers(backend: str, trainer_image: str) -> None:
    wanted = ["tensorflow", "keras", "s3fs", "gcsfs", "keras_trainer"] + (["jax", "jaxlib"] if backend == "jax" else [])
    code = (
        "import importlib.util as u, sys; "
        "gone = [m for m in ('pip', 'setuptools', 'wheel') if u.find_spec(m)]; "
        f"missing = [m for m in {wanted!r} if not u.find_spec(m)]; "
        "(gone or missing) and sys.exit(f'present: {gone}, missing: {missing}'); "
        # The drivers load with everything they import (botocore, google-auth...), as fsspec will use them.
        "import fsspec; fsspec.filesystem('s3', anon=True); fsspec.filesystem('gs', token='anon'); "
        # The backend as the trainer chooses it (before Keras loads), and what Keras then runs on.
        f"from keras_trainer import backend; backend.prepare({backend!r}); import keras; "
        "print('keras backend:', keras.backend.backend())"
    )
    result = podman("run", "--rm", "--read-only", "--entrypoint", "python", trainer_image, "-c", code, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"keras backend: {backend}" in result.stdout.splitlines(), result.stdout + result.stderr
    config = json.loads(podman("image", "inspect", trainer_image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"


@pytest.mark.timeout(1800)
def test_trainer_image_installs_code_requirements_with_the_pip_wheel_it_keeps(images) -> None:
    """The image has no pip to install with (the test above), but spec.code.requirements opts into an
    install: with the pip wheel it keeps aside, into the read-only pod's /tmp."""
    from helpers.wheels import tiny_wheel

    with workdir("keras-wheels-") as wheels:
        wheel = tiny_wheel(wheels, "tinypkg_image", "in-image")
        wheel.chmod(0o644)
        code = (
            "import importlib, sys; from keras_trainer import usercode; "
            f"target = usercode.install(['/wheels/{wheel.name}'], 'spec.code.requirements'); "
            "sys.path.insert(0, str(target)); print('value:', importlib.import_module('tinypkg_image').VALUE)"
        )
        result = podman(
            "run", "--rm", "--read-only", "--network", "none", "-v", f"{wheels}:/wheels:ro",
            "--entrypoint", "python", images.trainer, "-c", code, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "value: in-image" in result.stdout.splitlines(), result.stdout + result.stderr
