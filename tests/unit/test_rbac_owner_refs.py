"""Every owner reference the operator sets with blockOwnerDeletion is one the chart lets it set.

Where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, many hardened clusters),
creating an object whose ownerReference has blockOwnerDeletion: true needs `update` on the owner's
`finalizers` subresource; the API server refuses the create otherwise. The emulated cluster does not
enforce it, so this checks it statically: the objects come from the builders through `kerasop render`'s
own function, the grants from `helm template`, in each RBAC mode of the chart.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from helpers.jobs import tiny_job
from helpers.manifests import ROOT
from keras_operator.api.parse import parse
from keras_operator.cli import render_objects

Call = tuple[str, str, str]  # (API group, resource[/subresource], verb), as RBAC rules name them

CHART = ROOT / "charts" / "keras-operator"
HELM = ROOT / ".cache" / "bin" / "helm"  # scripts/setup.sh fetches it
RELEASE_NAMESPACE = "keras-system"
NAMESPACE = "ml"  # where the resources live; the namespaced mode watches it
MODES: dict[str, tuple[str, ...]] = {"cluster-wide": (), "namespaced": (f"watchNamespaces={{{NAMESPACE}}}",)}


def render_chart(*sets: str) -> list[dict[str, Any]]:
    assert HELM.exists(), "run scripts/setup.sh (it fetches helm into .cache/bin)"
    args = [str(HELM), "template", "ko", str(CHART), "--namespace", RELEASE_NAMESPACE]
    for s in sets:
        args += ["--set", s]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def granted_in(objects: list[dict[str, Any]], namespace: str) -> set[Call]:
    """What the operator's ServiceAccount may do in `namespace`: rules of the ClusterRoles bound to it by a
    ClusterRoleBinding, and of the Roles bound to it by a RoleBinding of that namespace."""
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    roles = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o for o in objects}
    out: set[Call] = set()
    for binding in objects:
        scope = binding["metadata"].get("namespace")
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding") or scope not in (None, namespace):
            continue
        if ("ServiceAccount", account, RELEASE_NAMESPACE) not in {
            (s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]
        }:
            continue
        ref = binding["roleRef"]
        for rule in roles[(ref["kind"], ref["name"], scope if ref["kind"] == "Role" else None)]["rules"]:
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def crd_plurals() -> dict[tuple[str, str], str]:
    """(group, kind) -> plural, from the CRDs the chart installs."""
    out: dict[tuple[str, str], str] = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())["spec"]
        out[(spec["group"], spec["names"]["kind"])] = spec["names"]["plural"]
    return out


def operator_objects() -> list[dict[str, Any]]:
    """What the operator creates for a training and for an autoscaled service: `kerasop render`'s objects.
    With a uid, as resources read from the API server have (render leaves owner references out without)."""
    job = tiny_job("digits", output={"uri": "pvc://models/digits"})
    served = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"uri": "pvc://models/digits/model.keras"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 60},
        },
    }
    resources = []
    for index, doc in enumerate((job, served)):
        doc["metadata"]["uid"] = f"00000000-0000-0000-0000-00000000000{index}"
        resources.append(parse(doc))
    return [obj for resource in resources for obj in render_objects(resource, resources, NAMESPACE)]


def blocking_refs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("blockOwnerDeletion")]


def required_grants(objects: list[dict[str, Any]]) -> dict[Call, list[str]]:
    """(group, OWNER-PLURAL/finalizers, update) for every blocking owner reference -> the objects needing it."""
    plurals = crd_plurals()
    out: dict[Call, list[str]] = {}
    for obj in objects:
        for ref in blocking_refs(obj):
            group = ref["apiVersion"].rpartition("/")[0]
            plural = plurals[(group, ref["kind"])]  # a KeyError here: an owner kind the chart has no CRD for
            out.setdefault((group, f"{plural}/finalizers", "update"), []).append(
                f"{obj['kind']} {obj['metadata']['name']}"
            )
    return out


def test_every_builder_sets_a_blocking_owner_reference() -> None:
    # Guards the check below against passing on nothing: each builder's object is there and is owned.
    objects = operator_objects()
    assert sorted(o["kind"] for o in objects) == ["Deployment", "HorizontalPodAutoscaler", "Job", "Service"]
    for obj in objects:
        assert blocking_refs(obj), f"{obj['kind']} has no blocking owner reference"
    assert set(required_grants(objects)) == {
        ("kerasoperator.dev", "kerastrainingjobs/finalizers", "update"),
        ("kerasoperator.dev", "kerasmodelservices/finalizers", "update"),
    }


@pytest.mark.parametrize("mode", list(MODES))
def test_chart_grants_update_on_the_finalizers_of_every_blocking_owner(mode: str) -> None:
    grants = granted_in(render_chart(*MODES[mode]), NAMESPACE)
    missing = {call: needed_by for call, needed_by in required_grants(operator_objects()).items() if call not in grants}
    assert not missing, f"{mode}: the chart does not grant what these owner references need: {missing}"
