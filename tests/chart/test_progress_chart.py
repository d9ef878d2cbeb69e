"""The chart's side of progress pushing: the endpoint's Service and certificate, the operator's settings,
TokenReview rights, and NetworkPolicies that select exactly the training pods the operator makes."""

from __future__ import annotations

import base64

import pytest
import yaml
from cryptography import x509

from helpers.chart import render
from helpers.jobs import tiny_job
from helpers.manifests import ROOT, validate_k8s
from keras_operator.api.parse import parse
from keras_operator.builders.training_manifests import build_job

pytestmark = pytest.mark.slow  # every test renders the chart with helm


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def env_of(objects: list[dict]) -> dict[str, str]:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def training_pod_labels() -> dict[str, str]:
    doc = tiny_job("t", output={"uri": "pvc://models/t"})
    doc["metadata"].update(namespace="ml", uid="u")
    return build_job(doc, parse(doc).spec, "img")["spec"]["template"]["metadata"]["labels"]


def test_the_endpoint_has_a_service_and_a_certificate_for_its_name() -> None:
    objects = render()
    env = env_of(objects)
    assert env["KERAS_OPERATOR_PROGRESS_URL"] == "https://ko-keras-operator-progress.keras-system.svc:8443"
    assert env["KERAS_OPERATOR_PROGRESS_CERT_DIR"] == "/etc/keras-operator/progress-tls"
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"] == "ko-keras-operator-progress"]
    assert service["spec"]["ports"][0]["port"] == 8443
    (secret,) = [s for s in by_kind(objects, "Secret") if s["metadata"]["name"] == "ko-keras-operator-progress-tls"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "ko-keras-operator-progress.keras-system.svc" in names
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    assert cert.issuer == ca.subject
    rules = [r for role in by_kind(objects, "ClusterRole") for r in role["rules"]]
    assert {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]} in rules


def test_without_tls_or_without_the_endpoint() -> None:
    plain = render("progress.tls=false")
    assert env_of(plain)["KERAS_OPERATOR_PROGRESS_URL"].startswith("http://")
    assert not [s for s in by_kind(plain, "Secret") if "progress" in s["metadata"]["name"]]
    off = render("progress.port=0")
    assert env_of(off)["KERAS_OPERATOR_PROGRESS_PORT"] == "0"
    assert "KERAS_OPERATOR_PROGRESS_URL" not in env_of(off)
    rules = [r for role in by_kind(off, "ClusterRole") for r in role["rules"]]
    assert not any("tokenreviews" in r["resources"] for r in rules)


def test_network_policies_select_the_training_pods() -> None:
    labels = training_pod_labels()
    (operator_policy,) = by_kind(render("networkPolicy.enabled=true"), "NetworkPolicy")
    validate_k8s(operator_policy)
    sources = operator_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert sources.items() <= labels.items()
    example = yaml.safe_load((ROOT / "deploy" / "networkpolicy" / "training-pods.yaml").read_text())
    validate_k8s(example)
    assert example["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert example["spec"]["egress"][0]["ports"][0]["port"] == 8443
    assert not by_kind(render(), "NetworkPolicy")  # off by default
