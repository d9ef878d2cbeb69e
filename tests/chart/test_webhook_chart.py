"""The chart's side of the validating admission webhook: the configuration the API server follows (which
kinds, operations, path, failure policy), the Service it calls, the certificate the operator serves and the CA
the API server trusts (made by Helm and kept across upgrades, or by cert-manager), and the operator's settings."""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cryptography import x509

from helpers.chart import CHART, HELM, render
from helpers.manifests import validate_k8s

pytestmark = pytest.mark.slow  # every test renders the chart with helm

NAMESPACE = "keras-system"
SERVICE = "ko-keras-operator-webhook"
SECRET = "ko-keras-operator-webhook-tls"
NAMES = [SERVICE, f"{SERVICE}.{NAMESPACE}", f"{SERVICE}.{NAMESPACE}.svc", f"{SERVICE}.{NAMESPACE}.svc.cluster.local"]
CERT_DIR = "/etc/keras-operator/webhook-tls"


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]


def configuration(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (config,) = by_kind(objects, "ValidatingWebhookConfiguration")
    return config


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (operator,) = deployment["spec"]["template"]["spec"]["containers"]
    return operator


def refused(*sets: str) -> str:
    """helm's error for values the chart refuses (by its schema, or a template's fail)."""
    args = [str(HELM), "template", "ko", str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode != 0, f"helm accepted {sets}"
    return result.stderr


def certificate(data: dict[str, str], key: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(data[key]))


def test_helm_certificate_names_the_service_and_its_ca_is_the_bundle() -> None:
    objects = render()
    (secret,) = named(objects, "Secret", SECRET)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    # The CA the API server trusts is the one that signed the certificate the operator serves.
    assert configuration(objects)["webhooks"][0]["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    cert, ca = certificate(secret["data"], "tls.crt"), certificate(secret["data"], "ca.crt")
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(NAMES)  # the API server calls NAME.NS.svc
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3000)
    # A second render (no cluster: lookup finds nothing) makes another CA: nothing is hard-coded in the chart.
    (again,) = named(render(), "Secret", SECRET)
    assert again["data"]["ca.crt"] != secret["data"]["ca.crt"]


def test_the_service_sends_to_the_operator_pods_webhook_port() -> None:
    objects = render()
    (service,) = named(objects, "Service", SERVICE)
    validate_k8s(service)
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "webhook"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook"}]
    (deployment,) = by_kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {"name": "webhook", "containerPort": 9443} in container(objects)["ports"]


def test_the_configuration_sends_creates_and_updates_of_both_kinds_to_the_service() -> None:
    objects = render()
    config = configuration(objects)
    validate_k8s(config)
    assert config["metadata"]["name"] == "ko-keras-operator-keras-system"
    assert "namespace" not in config["metadata"]  # cluster-scoped
    (webhook,) = config["webhooks"]
    assert webhook["name"] == "validate.kerasoperator.dev"
    assert webhook["rules"] == [
        {
            "apiGroups": ["kerasoperator.dev"],
            "apiVersions": ["v1alpha1"],
            # Not kerastrainingjobs/status: the operator's own status writes never wait for its webhook.
            "resources": ["kerastrainingjobs", "kerasmodelservices"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    service = {"namespace": NAMESPACE, "name": SERVICE, "path": "/validate", "port": 443}
    assert {k: v for k, v in webhook["clientConfig"].items() if k != "caBundle"} == {"service": service}
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"
    assert webhook["matchPolicy"] == "Equivalent"
    assert webhook["failurePolicy"] == "Ignore"  # fails open by default
    assert webhook["timeoutSeconds"] == 5
    assert "namespaceSelector" not in webhook  # the operator watches every namespace by default
    # The plurals are the CRDs' own.
    crds = [yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))]
    assert sorted(webhook["rules"][0]["resources"]) == sorted(c["spec"]["names"]["plural"] for c in crds)
    assert {c["spec"]["group"] for c in crds} == {"kerasoperator.dev"}
    assert {v["name"] for c in crds for v in c["spec"]["versions"] if v["served"]} == {"v1alpha1"}
    # Cluster-scoped, so one per release: a release in another namespace has its own.
    args = ["template", "ko", str(CHART), "--namespace", "other"]
    other = [d for d in yaml.safe_load_all(subprocess.run([str(HELM), *args], capture_output=True, text=True).stdout)]
    assert configuration([d for d in other if d])["metadata"]["name"] == "ko-keras-operator-other"


def test_failure_policy_and_timeout_are_settings() -> None:
    objects = render("webhook.failurePolicy=Fail", "webhook.timeoutSeconds=12")
    (webhook,) = configuration(objects)["webhooks"]
    validate_k8s(configuration(objects))
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 12)
    assert "failurePolicy" in refused("webhook.failurePolicy=Never")
    assert "timeoutSeconds" in refused("webhook.timeoutSeconds=31")  # the API server's limit is 30
    assert "certificates" in refused("webhook.certificates=vault")
    assert "enable" in refused("webhook.enable=false")  # a typo
    assert "port" in refused("webhook.port=0")


def test_the_webhook_port_may_not_be_another_ports() -> None:
    assert "metrics.port" in refused("webhook.port=9090")
    assert "progress.port" in refused("webhook.port=8443")
    assert "health" in refused("webhook.port=8080")
    moved = render("webhook.port=9090", "metrics.port=9091")
    assert {"name": "webhook", "containerPort": 9090} in container(moved)["ports"]


def test_disabled_renders_nothing_of_the_webhook() -> None:
    objects = render("webhook.enabled=false", "networkPolicy.enabled=true")
    assert not by_kind(objects, "ValidatingWebhookConfiguration")
    assert not named(objects, "Service", SERVICE)
    assert not named(objects, "Secret", SECRET)
    operator = container(objects)
    assert not [e for e in operator["env"] if e["name"].startswith("KERAS_OPERATOR_WEBHOOK")]
    assert "webhook" not in {p["name"] for p in operator["ports"]}
    assert CERT_DIR not in {m["mountPath"] for m in operator["volumeMounts"]}
    (deployment,) = by_kind(objects, "Deployment")
    assert "webhook-tls" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (policy,) = by_kind(objects, "NetworkPolicy")
    assert not [r for r in policy["spec"]["ingress"] if {"port": "webhook"} in r.get("ports", [])]
    # And enabled (the default), each of those is there.
    default = render()
    assert by_kind(default, "ValidatingWebhookConfiguration")
    assert named(default, "Service", SERVICE)
    assert named(default, "Secret", SECRET)


def test_watched_namespaces_only() -> None:
    objects = render("watchNamespaces={ml,team-b}", "webhook.failurePolicy=Fail")
    config = configuration(objects)
    validate_k8s(config)
    (webhook,) = config["webhooks"]
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml", "team-b"]}]
    }


def test_cert_manager_makes_the_certificate_and_injects_its_ca() -> None:
    objects = render("webhook.certificates=cert-manager")
    assert not named(objects, "Secret", SECRET)  # cert-manager writes it
    (issuer,) = by_kind(objects, "Issuer")
    assert issuer["apiVersion"] == "cert-manager.io/v1"
    assert issuer["metadata"]["namespace"] == NAMESPACE
    assert issuer["spec"] == {"selfSigned": {}}
    (cert,) = by_kind(objects, "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["metadata"]["namespace"] == NAMESPACE
    assert cert["spec"] == {
        "secretName": SECRET,
        "commonName": f"{SERVICE}.{NAMESPACE}.svc",
        "dnsNames": NAMES,
        "usages": ["server auth", "digital signature", "key encipherment"],
        "privateKey": {"rotationPolicy": "Always"},
        "issuerRef": {"name": issuer["metadata"]["name"], "kind": "Issuer", "group": "cert-manager.io"},
    }
    config = configuration(objects)
    validate_k8s(config)
    annotation = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{NAMESPACE}/{cert['metadata']['name']}"
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]  # cert-manager's CA injector sets it
    # The operator serves what cert-manager writes.
    (deployment,) = by_kind(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["webhook-tls"]["secret"]["secretName"] == cert["spec"]["secretName"]
    assert not by_kind(render(), "Certificate")  # helm mode by default


def test_cert_manager_with_an_issuer_of_the_users() -> None:
    objects = render(
        "webhook.certificates=cert-manager",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
        "webhook.certManager.issuerRef.name=my-ca",
    )
    assert not by_kind(objects, "Issuer")
    (cert,) = by_kind(objects, "Certificate")
    assert cert["spec"]["issuerRef"] == {"name": "my-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert "issuerRef" in refused("webhook.certificates=cert-manager", "webhook.certManager.issuerRef.kind=Issuer")
    assert "issuerRef" in refused("webhook.certManager.issuerRef.nmae=my-ca")


def test_the_operator_serves_the_webhook_with_the_secret() -> None:
    objects = render("webhook.port=9444")
    operator = container(objects)
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["KERAS_OPERATOR_WEBHOOK_PORT"] == "9444"
    assert env["KERAS_OPERATOR_WEBHOOK_CERT_DIR"] == CERT_DIR
    assert {"name": "webhook", "containerPort": 9444} in operator["ports"]
    (mount,) = [m for m in operator["volumeMounts"] if m["mountPath"] == CERT_DIR]
    assert mount["readOnly"] is True
    assert "subPath" not in mount  # a renewed certificate must reach the running pod
    (deployment,) = by_kind(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == SECRET
    assert named(objects, "Secret", SECRET)


# --- what an upgrade renders: `lookup` against an API server that holds the previous release's Secret ---

DISCOVERY = {  # group/version -> (plural, kind, namespaced): every kind the chart renders by default
    "v1": [("secrets", "Secret", True), ("services", "Service", True), ("serviceaccounts", "ServiceAccount", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "admissionregistration.k8s.io/v1": [("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", False)],
}


class FakeAPI(BaseHTTPRequestHandler):
    """Discovery, and GET of the Secrets in `secrets` (path -> object); anything else is not found."""

    secrets: ClassVar[dict[str, dict[str, Any]]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        groups = sorted({gv.split("/")[0] for gv in DISCOVERY if "/" in gv})
        versions = {f"/api/{gv}" if gv == "v1" else f"/apis/{gv}": gv for gv in DISCOVERY}
        if path == "/version":
            self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0"})
        elif path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            self._send(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": g,
                            "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                            "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                        }
                        for g in groups
                    ],
                },
            )
        elif path in versions:
            gv = versions[path]
            resources = [
                {"name": p, "singularName": k.lower(), "namespaced": n, "kind": k, "verbs": ["get", "list", "create"]}
                for p, k, n in DISCOVERY[gv]
            ]
            self._send(200, {"kind": "APIResourceList", "groupVersion": gv, "resources": resources})
        elif path in self.secrets:
            self._send(200, self.secrets[path])
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound"})


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[dict[str, dict[str, Any]], Path]]:
    """A fake API server and a kubeconfig for it; put Secrets in the dict to make them exist."""
    secrets: ClassVar[dict[str, dict[str, Any]]] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("API", (FakeAPI,), {"secrets": secrets}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    try:
        yield secrets, kubeconfig
    finally:
        server.shutdown()
        server.server_close()


def render_with_lookup(kubeconfig: Path) -> list[dict[str, Any]]:
    """helm rendering with lookup on (a server dry run), as `helm upgrade` renders against a cluster."""
    args = [str(HELM), "template", "ko", str(CHART), "--namespace", NAMESPACE, "--dry-run=server"]
    home = kubeconfig.parent
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run([*args, "--disable-openapi-validation"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def previous_secret(data: dict[str, str]) -> dict[str, Any]:
    """The webhook Secret as an earlier install of release ko left it (Helm's ownership marks included)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": SECRET,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "ko", "meta.helm.sh/release-namespace": NAMESPACE},
        },
        "data": data,
    }


def test_an_upgrade_keeps_the_certificate_and_its_ca_stays_the_bundle(cluster) -> None:
    secrets, kubeconfig = cluster
    (first,) = named(render(), "Secret", SECRET)
    secrets[f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"] = previous_secret(first["data"])
    objects = render_with_lookup(kubeconfig)
    (kept,) = named(objects, "Secret", SECRET)
    assert kept["data"] == first["data"]
    assert configuration(objects)["webhooks"][0]["clientConfig"]["caBundle"] == first["data"]["ca.crt"]


def test_an_incomplete_secret_is_replaced_by_a_consistent_one(cluster) -> None:
    secrets, kubeconfig = cluster
    (first,) = named(render(), "Secret", SECRET)
    partial = {k: v for k, v in first["data"].items() if k != "ca.crt"}
    secrets[f"/api/v1/namespaces/{NAMESPACE}/secrets/{SECRET}"] = previous_secret(partial)
    objects = render_with_lookup(kubeconfig)
    (made,) = named(objects, "Secret", SECRET)
    assert made["data"]["tls.crt"] != first["data"]["tls.crt"]
    assert configuration(objects)["webhooks"][0]["clientConfig"]["caBundle"] == made["data"]["ca.crt"]
    certificate(made["data"], "tls.crt").verify_directly_issued_by(certificate(made["data"], "ca.crt"))
