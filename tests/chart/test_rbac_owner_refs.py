"""Every owner reference the operator sets with blockOwnerDeletion is one the chart lets it set.

Where the OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, many hardened clusters),
creating an object whose ownerReference has blockOwnerDeletion: true needs `update` on the owner's
`finalizers` subresource; the API server refuses the create otherwise. The emulated cluster does not
enforce it, so this checks it statically: the objects come from the builders through `kerasop render`'s
own function, the grants from `helm template`, in each RBAC mode of the chart.
"""

from __future__ import annotations

from typing import Any

import pytest

from helpers.jobs import tiny_job
from helpers.rbac import Call, crd_plurals, granted, render_chart
from keras_operator.api.parse import parse
from kerasop.cli import render_objects

NAMESPACE = "ml"  # where the resources live; the namespaced mode watches it
MODES: dict[str, tuple[str, ...]] = {"cluster-wide": (), "namespaced": (f"watchNamespaces={{{NAMESPACE}}}",)}


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
@pytest.mark.slow
def test_chart_grants_update_on_the_finalizers_of_every_blocking_owner(mode: str) -> None:
    grants = granted(render_chart(*MODES[mode]), {NAMESPACE})
    missing = {call: needed_by for call, needed_by in required_grants(operator_objects()).items() if call not in grants}
    assert not missing, f"{mode}: the chart does not grant what these owner references need: {missing}"
