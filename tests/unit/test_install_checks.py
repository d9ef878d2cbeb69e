"""Installing the CRDs, as `helm install` and `kubectl apply -f crds/` do, into the emulated API server, which
checks them as a real one does (cluster/crdcheck.py): ours are accepted, and a CRD a real kube-apiserver
refused (a rule with `\\.` in a single-quoted CEL string) is refused 422 here too.

The chart's other objects (RBAC, Deployment, webhook) are validated against the Kubernetes schemas in
tests/unit/test_chart.py (helpers.manifests.validate_k8s); this file is about what only an API server checks.
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
from helpers.manifests import ROOT

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
