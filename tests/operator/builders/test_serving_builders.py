"""Deployment, Service and HPA built for a KerasModelService, validated against Kubernetes' schemas."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT, validate_k8s
from keras_operator.api.parse import parse
from keras_operator.builders.serving_manifests import build_deployment, build_hpa, build_service, url


def owner(**spec: Any) -> tuple[dict[str, Any], Any]:
    doc = yaml.safe_load((ROOT / "examples" / "digits-service.yaml").read_text())
    doc["metadata"].update(namespace="ml", uid="u-1", generation=2)
    doc["spec"].update(spec)
    return doc, parse(doc).spec


def test_deployment_runs_the_server_with_probes_and_settings() -> None:
    doc, spec = owner(
        server={"port": 9000, "batching": {"maxBatchSize": 1, "maxLatencyMs": 0}},
        resources={"gpus": 1, "cpu": "2", "memory": "4Gi"},
        modelName="clf",
    )
    dep = build_deployment(doc, spec, "pvc://models/digits/model.keras", "img:1")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][c["args"].index("--model-name") + 1] == "clf"
    assert c["args"][c["args"].index("--port") + 1] == "9000"
    assert c["args"][c["args"].index("--max-batch-size") + 1] == "1"
    assert c["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert "replicas" not in dep["spec"]  # autoscaling is set in the example: the HPA owns it
    assert url(doc, spec) == "http://digits.ml.svc.cluster.local:9000"


def test_probes_have_explicit_timeouts_and_liveness_is_the_more_patient() -> None:
    doc, spec = owner()
    c = build_deployment(doc, spec, "s3://b/m.keras", "img")["spec"]["template"]["spec"]["containers"][0]
    ready, live = c["readinessProbe"], c["livenessProbe"]
    assert (ready["periodSeconds"], ready["timeoutSeconds"], ready["failureThreshold"]) == (5, 3, 3)
    assert (live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (10, 5, 6)
    for probe in (ready, live):
        assert probe["timeoutSeconds"] < probe["periodSeconds"]  # probes never pile up
    # A slow pod is taken out of the Service long before it is restarted.
    assert ready["periodSeconds"] * ready["failureThreshold"] < live["periodSeconds"] * live["failureThreshold"]


def test_replicas_without_autoscaling_and_no_hpa() -> None:
    doc, spec = owner(autoscaling=None, replicas=3)
    assert build_deployment(doc, spec, "s3://b/m.keras", "img")["spec"]["replicas"] == 3
    assert build_hpa(doc, spec) is None


def test_hash_changes_with_the_spec() -> None:
    doc, spec = owner()
    a = build_deployment(doc, spec, "s3://b/m.keras", "img")
    b = build_deployment(doc, spec, "s3://b/other.keras", "img")
    key = "kerasoperator.dev/spec-hash"
    assert a["metadata"]["annotations"][key] != b["metadata"]["annotations"][key]
    assert build_deployment(doc, spec, "s3://b/m.keras", "img") == a


@pytest.mark.parametrize(
    "overrides", [{}, {"autoscaling": None, "replicas": 0}, {"podTemplate": {"spec": {"nodeSelector": {"a": "b"}}}}]
)
def test_manifests_validate_against_kubernetes(overrides: dict[str, Any]) -> None:
    doc, spec = owner(**overrides)
    for obj in (
        build_deployment(doc, spec, "pvc://models/m.keras", "img"),
        build_service(doc, spec),
        build_hpa(doc, spec),
    ):
        if obj is not None:
            validate_k8s(obj)


@pytest.mark.parametrize(("pre_stop", "drain"), [(None, None), (0, 20), (15, 120)])
def test_the_pause_and_the_drain_fit_the_grace_period(pre_stop: int | None, drain: int | None) -> None:
    server = {k: v for k, v in (("preStopSeconds", pre_stop), ("drainSeconds", drain)) if v is not None}
    doc, spec = owner(server=server)
    pod = build_deployment(doc, spec, "pvc://models/digits/model.keras", "img")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pause = 5 if pre_stop is None else pre_stop
    wait = 20 if drain is None else drain
    if pause:
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pause)]
    else:
        assert "lifecycle" not in container
    assert pod["terminationGracePeriodSeconds"] == pause + wait + 5
    args = container["args"]
    # The server's own default is not repeated (an older server image keeps working with a default spec).
    assert ("--drain-seconds" in args) == (wait != 20)
    if wait != 20:
        assert args[args.index("--drain-seconds") + 1] == str(wait)


def test_server_args_carry_only_what_differs_from_the_servers_defaults() -> None:
    """The server takes its defaults from the same API types: a flag at its default would only repeat it.
    The port and the backend are always stated (the pod's contract, what the image must hold)."""
    from keras_operator.api.model_service import ServerSpec
    from keras_operator.builders.serving_manifests import server_args

    _, spec = owner(server={}, backend="tensorflow")
    assert spec.server == ServerSpec()
    base = ["--model-uri", "m.keras", "--model-name", "digits", "--port", "8080", "--backend", "tensorflow"]
    assert server_args("digits", spec, "m.keras") == base
    _, spec = owner(server={"batching": {"maxBatchSize": 8}, "drainSeconds": 20, "maxQueue": 1024})
    assert server_args("digits", spec, "m.keras") == [*base, "--max-batch-size", "8"]


def test_a_handler_reaches_the_server_of_both_sides() -> None:
    """spec.server.handler is the server's --handler, on the stable Deployment and on the canary's; without
    it no flag (an older server image keeps working)."""
    from keras_operator.builders.serving_manifests import DeploymentModel, server_args

    doc, spec = owner(server={"handler": "text_handler:Tokens"})
    dep = build_deployment(doc, spec, "pvc://models/m.keras", "img")
    validate_k8s(dep)
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--handler") + 1] == "text_handler:Tokens"
    canary = server_args("digits", spec, DeploymentModel("s3://b/canary.keras", canary=True))
    assert canary[canary.index("--handler") + 1] == "text_handler:Tokens"
    _, plain = owner(server={})
    assert "--handler" not in server_args("digits", plain, "m.keras")
