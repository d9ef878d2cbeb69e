"""The NetworkPolicies: the chart's for the operator pod, and deploy/networkpolicy's for the training and model
server pods. Valid objects whose selectors pick the pods the builders make, by the labels the builders put
on them; a policy that selects nothing would leave the pods open without anyone noticing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT, validate_k8s
from helpers.rbac import render_chart
from keras_operator.api.parse import parse, read_documents
from keras_operator.builders.serving_manifests import DeploymentModel, build_deployment, stable_side
from keras_operator.builders.training_manifests import ProgressEndpoint, build_job

POLICIES = ROOT / "deploy" / "networkpolicy"


def _owner(resource: Any) -> dict[str, Any]:
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {"name": resource.metadata.name, "namespace": "ml", "uid": "u-1"},
    }


def _resource(example: str) -> Any:
    (doc,) = read_documents(ROOT / "examples" / example)
    return parse(doc)


def trainer_pods() -> list[dict[str, Any]]:
    """Pod templates of a one-pod and a multi-worker training, pushing progress as under the chart."""
    endpoint = ProgressEndpoint("https://ko-keras-operator-progress.keras-system.svc:8443")
    out = []
    for example in ("digits.yaml", "multi-node-jax.yaml"):
        job = _resource(example)
        out.append(build_job(_owner(job), job.spec, "img", endpoint)["spec"]["template"])
    return out


def server_pods() -> list[dict[str, Any]]:
    """Pod templates of both sides of a canary rollout."""
    service = _resource("digits-canary.yaml")
    spec = service.spec
    stable = build_deployment(_owner(service), spec, stable_side(spec, spec.model.uri), "img")
    canary = build_deployment(_owner(service), spec, DeploymentModel(spec.model.uri, "specific:2", canary=True), "img")
    return [stable["spec"]["template"], canary["spec"]["template"]]


def selects(selector: dict[str, Any], pod: dict[str, Any]) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions: teach this test to read them"
    return selector.get("matchLabels", {}).items() <= pod["metadata"]["labels"].items()


def policy(name: str) -> dict[str, Any]:
    return yaml.safe_load((POLICIES / name).read_text())


def same_namespace_peers(rules: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [
        p["podSelector"] for r in rules for p in r.get(key, []) if "podSelector" in p and "namespaceSelector" not in p
    ]


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_each_policy_is_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["kind"] == "NetworkPolicy"
    validate_k8s(doc)


def test_every_policy_is_for_trainers_or_servers() -> None:
    pods = {"trainer": trainer_pods(), "server": server_pods()}
    expected = {"training-pods.yaml": "trainer", "training-ingress.yaml": "trainer", "model-servers.yaml": "server"}
    assert {p.name for p in POLICIES.glob("*.yaml")} == set(expected)
    for name, kind in expected.items():
        selector = policy(name)["spec"]["podSelector"]
        other = "server" if kind == "trainer" else "trainer"
        assert all(selects(selector, pod) for pod in pods[kind]), f"{name} misses some {kind} pods"
        assert not any(selects(selector, pod) for pod in pods[other]), f"{name} selects {other} pods"


def test_training_workers_may_reach_each_other() -> None:
    """JAX's coordination service (worker 0) and then its collectives' own ports, which are not fixed: trainer
    pods accept any port from trainer pods, and may send to them."""
    pods = trainer_pods()
    ingress = policy("training-ingress.yaml")["spec"]
    assert ingress["policyTypes"] == ["Ingress"]
    (rule,) = ingress["ingress"]
    assert "ports" not in rule
    (peer,) = same_namespace_peers(ingress["ingress"], "from")
    assert all(selects(peer, pod) for pod in pods)
    egress = policy("training-pods.yaml")["spec"]
    assert all(selects(peer, pod) for peer in same_namespace_peers(egress["egress"], "to") for pod in pods)
    assert same_namespace_peers(egress["egress"], "to")


def test_model_servers_accept_their_http_port_only() -> None:
    spec = policy("model-servers.yaml")["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ports = [port for rule in spec["ingress"] for port in rule["ports"]]
    for pod in server_pods():
        (container,) = pod["spec"]["containers"]
        named = {p["name"] for p in container["ports"]}
        assert {p["port"] for p in ports} <= named, "the policy names a port the server does not have"
        # The probes and the operator's /metrics reads (through the API server's pod proxy) use that port.
        assert container["readinessProbe"]["httpGet"]["port"] in named
    egress_ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
    assert {53, 443} <= egress_ports


@pytest.mark.slow  # helm
def test_the_chart_policy_selects_the_operator_and_lets_trainers_push() -> None:
    assert not [o for o in render_chart() if o["kind"] == "NetworkPolicy"]  # off by default
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    objects = render_chart(
        "networkPolicy.enabled=true",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
    )
    (netpol,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    validate_k8s(netpol)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert selects(netpol["spec"]["podSelector"], deployment["spec"]["template"])
    progress, metrics, webhook = netpol["spec"]["ingress"]
    assert progress["ports"] == [{"port": "progress"}]
    (source,) = progress["from"]
    assert all(selects(source["podSelector"], pod) for pod in trainer_pods())
    assert not any(selects(source["podSelector"], pod) for pod in server_pods())
    assert metrics == {"ports": [{"port": "metrics"}], "from": [peer]}
    # The API server's calls come from the control plane's addresses, which no pod selector names.
    assert webhook == {"ports": [{"port": "webhook"}]}
    named = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"progress", "metrics", "webhook"} <= named
    # Without the webhook, its port is closed again.
    (closed,) = [
        o for o in render_chart("networkPolicy.enabled=true", "webhook.enabled=false") if o["kind"] == "NetworkPolicy"
    ]
    assert [r["ports"] for r in closed["spec"]["ingress"]] == [[{"port": "progress"}], [{"port": "metrics"}]]
    # Without metricsFrom the metrics port is open to any scraper.
    (default,) = [o for o in render_chart("networkPolicy.enabled=true") if o["kind"] == "NetworkPolicy"]
    assert "from" not in default["spec"]["ingress"][1]
