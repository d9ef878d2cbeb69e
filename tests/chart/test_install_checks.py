"""Installing the CRDs, as `helm install` and `kubectl apply -f crds/` do, into the emulated API server, which
checks them as a real one does (cluster/crdcheck.py): ours are accepted, and a CRD a real kube-apiserver
refused (a rule with `\\.` in a single-quoted CEL string) is refused 422 here too.

Then the whole chart, as `helm install` sends it: every object is accepted, stored with the server's defaults
and canonical quantities (which must still validate against the official schemas) and owned by helm's field
manager. The rendered objects themselves are validated in tests/chart/test_chart.py.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
import yaml

from cluster.emulator import CRDS, Emulator, declare_resources
from helpers.chart import CHART, helm
from helpers.manifests import ROOT, validate_k8s

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CREATED = (200, 201)  # the API server answers a create 201; kmock, which stores it, 200
# The rule as generated before the fix: what kube-apiserver v1.32 answered with
# `Syntax error: token recognition error at: ''^pvc://...(\.'`.
OLD_PVC_RULE = (
    r"!self.matches('^[pP][vV][cC]:') || "
    r"self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/.*)?$')"
)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    emulator = Emulator()
    declare_resources(emulator)
    async with emulator, kmock.Server(emulator):
        yield emulator


async def _send(emulator: Emulator, method: str, path: str, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    async with emulator.request(method, path, json=body, headers=headers or None) as resp:
        return resp.status, await resp.json(content_type=None)


def chart_crds() -> list[dict[str, Any]]:
    """The CRDs `helm install` creates: what the real helm renders from the chart with --include-crds."""
    rendered = yaml.safe_load_all(helm("template", "ko", str(CHART), "--namespace", "keras-system", "--include-crds"))
    return [d for d in rendered if d and d.get("kind") == "CustomResourceDefinition"]


def repo_crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]


def _with_old_rule(crd: dict[str, Any]) -> dict[str, Any]:
    broken = copy.deepcopy(crd)
    uri = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    uri["properties"]["uri"]["x-kubernetes-validations"][0]["rule"] = OLD_PVC_RULE
    return broken


@pytest.mark.parametrize("source", [chart_crds, repo_crds], ids=["helm install", "kubectl apply -f crds/"])
@pytest.mark.slow
async def test_the_crds_are_accepted(emulator: Emulator, source: Any) -> None:
    crds = source()
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "kerasmodelservices.kerasoperator.dev",
        "kerastrainingjobs.kerasoperator.dev",
    ]
    for crd in crds:
        status, body = await _send(emulator, "POST", CRD_PATH, crd)
        assert status in CREATED, body
    assert {c["metadata"]["name"] for c in emulator.live(CRDS)} == {c["metadata"]["name"] for c in crds}


async def test_a_crd_with_an_invalid_cel_escape_is_refused(emulator: Emulator) -> None:
    crd = _with_old_rule(next(c for c in repo_crds() if c["spec"]["names"]["plural"] == "kerastrainingjobs"))
    status, body = await _send(emulator, "POST", CRD_PATH, crd)
    assert status == 422, body
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('CustomResourceDefinition.apiextensions.k8s.io "kerastrainingjobs.')
    assert "properties[model].properties[uri].x-kubernetes-validations[0].rule" in body["message"]
    assert "compilation failed: ERROR: <input>:1:49: Syntax error: token recognition error at:" in body["message"]
    assert emulator.live(CRDS) == [], "a refused CRD is not stored"


async def test_an_update_that_breaks_a_crd_is_refused_and_changes_nothing(emulator: Emulator) -> None:
    crd = next(c for c in repo_crds() if c["spec"]["names"]["plural"] == "kerastrainingjobs")
    status, body = await _send(emulator, "POST", CRD_PATH, crd)
    assert status in CREATED, body
    name = crd["metadata"]["name"]
    patch = {"spec": {"versions": _with_old_rule(crd)["spec"]["versions"]}}
    status, body = await _send(
        emulator, "PATCH", f"{CRD_PATH}/{name}", patch, **{"Content-Type": "application/merge-patch+json"}
    )
    assert status == 422, body
    (stored,) = emulator.live(CRDS)
    assert stored["spec"]["versions"] == crd["spec"]["versions"]
    # A harmless edit still goes through.
    status, body = await _send(
        emulator,
        "PATCH",
        f"{CRD_PATH}/{name}",
        {"metadata": {"labels": {"team": "ml"}}},
        **{"Content-Type": "application/merge-patch+json"},
    )
    assert status == 200, body


async def test_a_server_side_apply_is_checked_too(emulator: Emulator) -> None:
    """Helm 4 and `kubectl apply --server-side` create CRDs by apply: the same check, the same refusal."""
    crd = next(c for c in repo_crds() if c["spec"]["names"]["plural"] == "kerastrainingjobs")
    path = f"{CRD_PATH}/{crd['metadata']['name']}?fieldManager=helm"
    apply = {"Content-Type": "application/apply-patch+yaml"}
    status, body = await _send(emulator, "PATCH", path, _with_old_rule(crd), **apply)
    assert status == 422, body
    assert emulator.live(CRDS) == []
    status, body = await _send(emulator, "PATCH", path, crd, **apply)
    assert status in CREATED, body
    status, body = await _send(emulator, "PATCH", path, _with_old_rule(crd), **apply)
    assert status == 422, body


# Kinds the chart installs beside what the operator's tests declare: (apiVersion, kind) -> (plural, namespaced).
CHART_KINDS = {
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Secret"): ("secrets", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
}
INSTALL_NAMESPACE = "keras-system"


def _path(obj: dict[str, Any], plural: str, namespaced: bool) -> str:
    api_version = obj["apiVersion"]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{INSTALL_NAMESPACE}/{plural}" if namespaced else f"{base}/{plural}"


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={ml,team-b}",)], ids=["cluster-wide", "namespaced"])
@pytest.mark.slow
async def test_the_whole_chart_installs_and_is_stored_as_a_real_server_stores_it(
    emulator: Emulator, sets: tuple[str, ...]
) -> None:
    """`helm install` against the emulated API server: CRDs first, then every object, each created under
    helm's field manager; what is stored (with the server's defaults and canonical quantities filled in)
    still validates strictly against the official schemas, so the defaults the emulator adds are real
    fields with real values, and every object records helm as its manager."""
    for (api_version, kind), (plural, namespaced) in CHART_KINDS.items():
        emulator.resources[f"{api_version}/{plural}"] = {
            "verbs": {"list", "watch", "get", "create", "patch", "delete"},
            "kind": kind,
            "singular": kind.lower(),
            "namespaced": namespaced,
        }
    args = ["template", "ko", str(CHART), "--namespace", INSTALL_NAMESPACE, "--include-crds"]
    for value in sets:
        args += ["--set", value]
    rendered = [d for d in yaml.safe_load_all(helm(*args)) if d]
    crds = [d for d in rendered if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 2
    for crd in crds:
        status, body = await _send(emulator, "POST", f"{CRD_PATH}?fieldManager=helm", crd)
        assert status in CREATED, body
    known = {
        ("v1", "Service"): ("services", True),
        ("apps/v1", "Deployment"): ("deployments", True),
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): (
            "validatingwebhookconfigurations",
            False,
        ),
        **CHART_KINDS,
    }
    installed = 0
    for obj in rendered:
        if obj["kind"] == "CustomResourceDefinition":
            continue
        plural, namespaced = known[(obj["apiVersion"], obj["kind"])]
        obj = copy.deepcopy(obj)
        if namespaced:
            obj["metadata"].setdefault("namespace", INSTALL_NAMESPACE)
            if obj["metadata"]["namespace"] != INSTALL_NAMESPACE:
                continue  # a Role in a watched namespace: same schema, another path
        status, body = await _send(emulator, "POST", _path(obj, plural, namespaced) + "?fieldManager=helm", obj)
        assert status in CREATED, (obj["kind"], body)
        stored = copy.deepcopy(body)
        managers = {entry["manager"] for entry in stored["metadata"].get("managedFields") or []}
        assert managers <= {"helm"}, (obj["kind"], managers)
        for field in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation"):
            stored["metadata"].pop(field, None)
        stored.pop("status", None)
        validate_k8s(stored)
        installed += 1
    assert installed >= 8
    deployment = next(d for d in emulator.live(kmock.resource("apps", "v1", "deployments")))
    # Filled in as a real API server fills them: what the operator's drift check must not mistake for drift.
    assert deployment["spec"]["revisionHistoryLimit"] == 10
    assert deployment["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
