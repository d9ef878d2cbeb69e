"""The operator image: uid 1000, no TensorFlow, and, run as the chart's Deployment, it creates the Job
for a KerasTrainingJob.

The API server is the tests' emulated cluster (bench/emulated_api.py) in a process of its own; the
operator container shares the host network to reach it, as it would reach a real API server.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
import yaml
from podrun import ROOT, free_port, podman, podman_run_args, progress, wait_http, workdir

pytestmark = [pytest.mark.images]

KTJ_PATH = "/apis/kerasoperator.dev/v1alpha1/namespaces/default/kerastrainingjobs"
JOB_PATH = "/apis/batch/v1/namespaces/default/jobs"


def request(url: str, method: str = "GET", body: Any = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@pytest.mark.timeout(1800)
def test_operator_image_runs_as_uid_1000_without_tensorflow(images) -> None:
    code = (
        "import importlib.util as u, os, sys; "
        "banned = ('tensorflow', 'keras', 'jax', 'torch', 'pip', 'setuptools', 'wheel'); "
        "present = [m for m in banned if u.find_spec(m)]; "
        "missing = [m for m in ('kopf', 'kubernetes', 'keras_operator') if not u.find_spec(m)]; "
        "print(os.getuid(), os.getgid()); "
        "sys.exit(f'present: {present}, missing: {missing}' if present or missing else 0)"
    )
    result = podman("run", "--rm", "--entrypoint", "python", images.operator, "-c", code, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["1000", "1000"]


def chart_pod_spec(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """The operator's pod, as the chart renders it with its default values, the Secrets it mounts, and the
    CA its ValidatingWebhookConfiguration trusts (PEM; one render, so it is the mounted Secret's)."""
    helm = shutil.which("helm") or str(ROOT / ".cache" / "bin" / "helm")
    rendered = subprocess.run(
        [helm, "template", name, str(ROOT / "charts" / "keras-operator"), "--namespace", "default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (config,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    bundle = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    return deployment["spec"]["template"]["spec"], secrets, bundle


def admission_review(doc: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """What the API server sends the webhook for creating `doc` with `spec` changed."""
    obj = {**doc, "spec": {**doc["spec"], **spec}}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "kerasoperator.dev", "version": "v1alpha1", "kind": doc["kind"]},
            "operation": "CREATE",
            "namespace": "default",
            "name": doc["metadata"]["name"],
            "object": obj,
        },
    }


@pytest.mark.timeout(1800)
def test_operator_image_runs_the_charts_deployment_and_creates_the_job(images) -> None:
    """The chart's pod (env, uid, read-only root, leader election on a Lease) against the emulated API."""
    api = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "emulated_api.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    name = f"keras-operator-{uuid.uuid4().hex[:8]}"
    try:
        assert api.stdout is not None
        line = api.stdout.readline()
        assert line.startswith("url="), line
        url = line.strip().removeprefix("url=")
        progress(f"operator image, as the chart's Deployment, against the emulated API at {url}")
        health, metrics, progress_port, webhook = free_port(), free_port(), free_port(), free_port()
        pod_spec, secrets, bundle = chart_pod_spec("ko")
        with workdir("keras-operator-image-") as work:
            args, _ = podman_run_args(
                pod_spec,
                image=images.operator,
                work=work,
                secrets=secrets,
                fields={"metadata.namespace": "default", "metadata.name": name},
                # The host's network, to reach the emulated API; free ports instead of 8080 and 9090 there.
                env={
                    "KERAS_OPERATOR_API_SERVER": url,
                    "KERAS_OPERATOR_LIVENESS_PORT": str(health),
                    "KERAS_OPERATOR_METRICS_PORT": str(metrics),
                    "KERAS_OPERATOR_PROGRESS_PORT": str(progress_port),
                    "KERAS_OPERATOR_WEBHOOK_PORT": str(webhook),
                },
                host_network=True,
            )
            podman("run", "--detach", "--name", name, *args)
            wait_http(f"http://127.0.0.1:{health}/healthz", 60, alive=[name])
            doc = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
            doc["metadata"]["namespace"] = "default"
            code, _ = request(url + KTJ_PATH, "POST", doc)
            assert code in (200, 201), code
            deadline = time.monotonic() + 120
            while True:
                code, job = request(f"{url}{JOB_PATH}/digits-train")
                if code == 200:
                    break
                state = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
                assert state == "true", podman("logs", name, check=False).stdout[-3000:]
                assert time.monotonic() < deadline, "no Job within 120 s:\n" + podman("logs", name).stdout[-3000:]
                time.sleep(0.5)
            container = job["spec"]["template"]["spec"]["containers"][0]
            assert container["image"] == "ghcr.io/keras-operator/keras-trainer:0.1.0"  # the chart's default
            assert container["args"] == ["train", "--config", "/etc/keras-operator/job.yaml"]
            assert job["metadata"]["ownerReferences"][0]["name"] == "digits"
            # Trainers are told where to push (the chart's Service, over TLS) and which CA to trust; the
            # endpoint serves that certificate and refuses a push without a token.
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["KERAS_OPERATOR_PROGRESS_URL"].startswith("https://ko-keras-operator-progress.default.svc:")
            ca = env["KERAS_OPERATOR_PROGRESS_CA"]
            assert ca.startswith("-----BEGIN CERTIFICATE-----")
            tls = ssl.create_default_context(cadata=ca)
            tls.check_hostname = False  # the certificate names the Service; the test reaches it on 127.0.0.1
            push = urllib.request.Request(
                f"https://127.0.0.1:{progress_port}/v1/namespaces/default/kerastrainingjobs/digits/progress",
                data=b"{}",
                method="POST",
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(push, timeout=10, context=tls)
            assert refused.value.code == 401
            assert "error" in json.loads(refused.value.read())
            # The admission webhook answers with the chart's certificate (its configuration's caBundle).
            review = admission_review(doc, model={"inputShape": [64], "layers": [{"type": "SuperDense"}]})
            tls = ssl.create_default_context(cadata=bundle)
            tls.check_hostname = False  # the certificate names the webhook's Service; reached on 127.0.0.1
            answer = urllib.request.Request(
                f"https://127.0.0.1:{webhook}/validate",
                data=json.dumps(review).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(answer, timeout=10, context=tls) as resp:
                response = json.loads(resp.read())["response"]
            assert response["allowed"] is False, response
            assert "SuperDense" in response["status"]["message"]
            code, lease = request(f"{url}/apis/coordination.k8s.io/v1/namespaces/default/leases/ko-keras-operator")
            assert code == 200
            assert lease["spec"]["holderIdentity"] == name
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as resp:
                assert b"keras_operator" in resp.read()
            logs = podman("logs", name).stdout
            events = [json.loads(line).get("event") for line in logs.splitlines() if line.startswith("{")]
            assert events, logs[-3000:]  # JSON logs, one object a line
            inspect = json.loads(podman("inspect", name).stdout)[0]
            assert inspect["HostConfig"]["ReadonlyRootfs"] is True
            assert inspect["Config"]["User"] == "1000:1000"
    finally:
        podman("rm", "--force", "--time", "5", name, check=False)
        api.terminate()
        api.wait(timeout=30)
