"""The Helm chart, rendered by the real helm binary and checked against Kubernetes' schemas."""

from __future__ import annotations

import subprocess

import pytest

from helpers.chart import CHART, HELM, helm, render
from helpers.manifests import ROOT, validate_k8s


@pytest.mark.slow
def test_lint_strict() -> None:
    helm("lint", "--strict", str(CHART))


def test_chart_crds_are_the_generated_ones() -> None:
    for crd in (ROOT / "crds").glob("*.yaml"):
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes(), crd.name
    assert {p.name for p in (CHART / "crds").glob("*.yaml")} == {p.name for p in (ROOT / "crds").glob("*.yaml")}


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("watchNamespaces={ml,team-b}", "logLevel=debug", "logFormat=console", "syncInterval=2"),
        (
            "serviceAccount.create=false",
            "serviceAccount.name=existing",
            "image.tag=dev",
            "image.pullPolicy=Always",
            "imagePullSecrets[0].name=regcred",
            "nodeSelector.pool=system",
            "tolerations[0].operator=Exists",
            "podLabels.team=ml",
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prom",
            "podAnnotations.a=b",
            "trainerImage=registry.local/trainer:1",
            "replicas=3",
        ),
        ("webhook.certificates=cert-manager", "networkPolicy.enabled=true"),
        ("webhook.certificates=cert-manager", "webhook.certManager.issuerRef.name=my-ca"),
        ("webhook.enabled=false", "networkPolicy.enabled=true"),
        ("webhook.failurePolicy=Fail", "webhook.timeoutSeconds=10", "watchNamespaces={ml,team-b}", "webhook.port=9444"),
    ],
    ids=["defaults", "namespaced", "options", "webhook-cert-manager", "webhook-issuer", "webhook-off", "webhook-fail"],
)
@pytest.mark.slow
def test_rendered_objects_are_valid_kubernetes(sets: tuple[str, ...]) -> None:
    objects = render(*sets)
    assert objects
    # CRD kinds Kubernetes' schemas do not know, checked field by field where they are rendered:
    # prometheus-operator's ServiceMonitor (below), cert-manager's Issuer and Certificate (test_webhook_chart).
    others = {"monitoring.coreos.com/v1", "cert-manager.io/v1"}
    for obj in objects:
        if obj["apiVersion"] not in others:
            validate_k8s(obj)
    assert any(o["apiVersion"] not in others for o in objects)


@pytest.mark.slow
def test_operator_pod_is_restricted_and_probed() -> None:
    deployment = next(o for o in render() if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KERAS_OPERATOR_LEADER_ELECTION"] == "true"  # so replicas > 1 is safe
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KERAS_OPERATOR_NAMESPACES"] == ""


@pytest.mark.slow
def test_rbac_is_cluster_wide_by_default_and_per_namespace_when_asked() -> None:
    kinds = [(o["kind"], o["metadata"].get("namespace")) for o in render()]
    assert ("ClusterRole", None) in kinds
    assert [ns for k, ns in kinds if k == "Role"] == ["keras-system"]  # only the leader Lease
    scoped = render("watchNamespaces={ml,team-b}")
    roles = {o["metadata"]["namespace"] for o in scoped if o["kind"] == "Role"}
    assert roles == {"ml", "team-b", "keras-system"}
    cluster_roles = [o for o in scoped if o["kind"] == "ClusterRole"]
    # Only discovery and TokenReview (cluster-scoped by nature) stay cluster-wide.
    assert [r["resources"] for o in cluster_roles for r in o["rules"]] == [
        ["customresourcedefinitions"],
        ["tokenreviews"],
    ]
    deployment = next(o for o in scoped if o["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KERAS_OPERATOR_NAMESPACES"] == "ml,team-b"


@pytest.mark.slow
def test_values_schema_rejects_typos() -> None:
    result = subprocess.run(
        [str(HELM), "template", "ko", str(CHART), "--set", "logLevl=debug"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "logLevl" in result.stderr


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith(("#", " ")) and ":" in line:
            assert lines[index - 1].startswith("# --") or line.endswith(":"), f"undocumented value: {line}"


@pytest.mark.slow
def test_metrics_service_and_service_monitor() -> None:
    default = render()
    service = next(o for o in default if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics"))
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics"}]
    assert not any(o["kind"] == "ServiceMonitor" for o in default)  # off by default
    monitored = render("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom")
    monitor = next(o for o in monitored if o["kind"] == "ServiceMonitor")
    labels = next(o for o in monitored if o["kind"] == "Service" and "metrics" in o["metadata"]["name"])["metadata"][
        "labels"
    ]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert not any(o["kind"] == "Service" and "metrics" in o["metadata"]["name"] for o in render("metrics.port=0"))
