"""The validating admission webhook end to end: the chart's ValidatingWebhookConfiguration and certificate,
the real `keras-operator` process serving them, and the emulated API server calling it on every create
and update (cluster/admission.py), as a cluster does for `kubectl apply`."""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cluster.admission import WEBHOOKS
from cluster.harness import JOBS, KTJ, LEASES, Cluster
from helpers.chart import render
from helpers.jobs import tiny_job
from helpers.server import free_port, get_json

pytestmark = pytest.mark.e2e

SUPER_DENSE = {"inputShape": [8], "layers": [{"type": "SuperDense", "units": 3}]}


def chart_webhook(cluster: Cluster, tmp_path: Path, *sets: str) -> tuple[dict[str, Any], Path]:
    """The chart's configuration stored in the cluster, and its Secret's files as the pod would mount them."""
    objects = render(*sets)
    (configuration,) = [o for o in objects if o["kind"] == "ValidatingWebhookConfiguration"]
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-webhook-tls")]
    folder = tmp_path / "webhook-tls"
    folder.mkdir()
    for name, value in secret["data"].items():
        (folder / name).write_bytes(base64.b64decode(value))
    cluster.create_cluster_object(WEBHOOKS, configuration)
    return configuration, folder


@contextmanager
def operator_process(cluster: Cluster, configuration: dict[str, Any], cert_dir: Path, **env: str) -> Iterator[int]:
    """The real entry point with the chart's webhook settings; its Service reaches this process."""
    port, health = free_port(), free_port()
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    assert cluster.emulator is not None
    cluster.emulator.admission.hosts[f"{service['name']}.{service['namespace']}.svc:{service['port']}"] = (
        f"127.0.0.1:{port}"
    )
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "keras-operator")],
        env={
            **os.environ,
            "KERAS_OPERATOR_WEBHOOK_PORT": str(port),
            "KERAS_OPERATOR_WEBHOOK_CERT_DIR": str(cert_dir),
            "KERAS_OPERATOR_LIVENESS_PORT": str(health),
            "KERAS_OPERATOR_METRICS_PORT": "0",
            "KERAS_OPERATOR_PROGRESS_PORT": "0",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def healthy() -> bool:
            try:
                return get_json(f"http://127.0.0.1:{health}/healthz")[0] == 200
            except OSError:
                return False

        cluster.wait_for(healthy, 60, "the operator process")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def refusal(cluster: Cluster, doc: dict[str, Any]) -> str:
    """The API server's error for creating `doc` (the test fails if it is stored)."""
    with pytest.raises(RuntimeError) as caught:
        cluster.create(KTJ, doc)
    return str(caught.value)


def test_an_invalid_resource_is_refused_at_apply_and_a_valid_one_runs(cluster: Cluster, tmp_path: Path) -> None:
    configuration, certs = chart_webhook(cluster, tmp_path)
    assert cluster.emulator is not None
    with operator_process(cluster, configuration, certs):
        bad = tiny_job("typo", output={"uri": "pvc://models/typo"}, model=SUPER_DENSE)
        message = refusal(cluster, bad)
        assert "422" in message
        assert 'admission webhook "validate.kerasoperator.dev" denied the request' in message
        assert "spec.model.layers[0]" in message
        assert "did you mean" in message.lower()
        assert cluster.get(KTJ, "typo") is None  # never stored: nothing to clean up, nothing reconciled
        calls = cluster.emulator.admission.calls

        good = tiny_job("fine", output={"uri": "pvc://models/fine"})
        cluster.create(KTJ, good)
        cluster.wait_for(lambda: cluster.get(JOBS, "fine-train"), 60, "the Job of the admitted training")
        # A spec edit is judged like a create; a label on the stored resource is never blocked.
        with pytest.raises(RuntimeError, match=r"spec\.training\.epochs"):
            cluster.patch(KTJ, "fine", {"spec": {"training": {"epochs": 0}}})
        cluster.patch(KTJ, "fine", {"metadata": {"labels": {"team": "vision"}}})
        assert cluster.ktj("fine")["metadata"]["labels"] == {"team": "vision"}
        assert cluster.emulator.admission.calls == calls + 3


def test_a_standby_replica_answers_as_well_as_the_leader(cluster: Cluster, tmp_path: Path) -> None:
    """Every replica serves the webhook: the Service sends the API server to any of them."""
    held = {"holderIdentity": "someone", "leaseDurationSeconds": 600}
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "ko"}, "spec": held}
    cluster.create(LEASES, lease, namespace="keras-system")
    configuration, certs = chart_webhook(cluster, tmp_path)
    standby = {
        "KERAS_OPERATOR_LEADER_ELECTION": "true",
        "KERAS_OPERATOR_LEASE_NAME": "ko",
        "KERAS_OPERATOR_POD_NAMESPACE": "keras-system",
        "KERAS_OPERATOR_POD_NAME": "standby",
    }
    with operator_process(cluster, configuration, certs, **standby):
        message = refusal(cluster, tiny_job("typo", output={"uri": "pvc://models/typo"}, model=SUPER_DENSE))
        assert "did you mean" in message.lower()
        assert cluster.get(LEASES, "ko", "keras-system")["spec"]["holderIdentity"] == "someone"


@pytest.mark.parametrize("policy", ["Ignore", "Fail"])
def test_with_no_replica_answering_the_failure_policy_decides(cluster: Cluster, tmp_path: Path, policy: str) -> None:
    """Ignore (the default) fails open: the resource is stored and the reconcile reports it as before.
    Fail fails closed: nothing of the kind is stored until a replica answers."""
    configuration, _ = chart_webhook(cluster, tmp_path, f"webhook.failurePolicy={policy}")
    assert configuration["webhooks"][0]["failurePolicy"] == policy
    service = configuration["webhooks"][0]["clientConfig"]["service"]
    assert cluster.emulator is not None
    cluster.emulator.admission.hosts[f"{service['name']}.{service['namespace']}.svc:{service['port']}"] = (
        f"127.0.0.1:{free_port()}"  # nobody listens
    )
    doc = tiny_job("unchecked", output={"uri": "pvc://models/unchecked"}, model=copy.deepcopy(SUPER_DENSE))
    if policy == "Ignore":
        cluster.create(KTJ, doc)
        assert cluster.get(KTJ, "unchecked") is not None
    else:
        message = refusal(cluster, doc)
        assert "500" in message
        assert 'failed calling webhook "validate.kerasoperator.dev"' in message
        assert cluster.get(KTJ, "unchecked") is None
