"""What the chart grants the operator, read the way the API server reads RBAC: the chart rendered by the
real helm, the rules of the roles bound to the operator's ServiceAccount, and our kinds' plurals."""

from __future__ import annotations

from typing import Any

import yaml

from helpers.chart import render
from helpers.manifests import ROOT

Call = tuple[str, str, str]  # (API group, resource[/subresource], verb), as RBAC rules name them

RELEASE_NAMESPACE = "keras-system"  # the operator's own namespace: its ServiceAccount and its Lease


def render_chart(*sets: str) -> list[dict[str, Any]]:
    return render(*sets)  # release "ko" in RELEASE_NAMESPACE


def granted(objects: list[dict[str, Any]], namespaces: set[str]) -> set[Call]:
    """What the operator's ServiceAccount may do in `namespaces`: the rules of the roles bound to it. A Role
    counts only in its own namespace, and only a binding that names the operator's account counts."""
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    roles = {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o for o in objects}
    out: set[Call] = set()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        scope = binding["metadata"].get("namespace")
        if scope is not None and scope not in namespaces:
            continue
        subjects = {(s["kind"], s["name"], s.get("namespace")) for s in binding["subjects"]}
        if ("ServiceAccount", account, RELEASE_NAMESPACE) not in subjects:
            continue
        ref = binding["roleRef"]
        role = roles[(ref["kind"], ref["name"], scope if ref["kind"] == "Role" else None)]
        for rule in role["rules"]:
            # Least privilege: a wildcard would cover any call and make every check on the grants vacuous.
            assert "*" not in [*rule["apiGroups"], *rule["resources"], *rule["verbs"]], f"wildcard in {rule}"
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def crd_plurals() -> dict[tuple[str, str], str]:
    """(group, kind) -> plural of the operator's own kinds, from the CRDs the chart installs."""
    out: dict[tuple[str, str], str] = {}
    for path in (ROOT / "crds").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())["spec"]
        out[(spec["group"], spec["names"]["kind"])] = spec["names"]["plural"]
    return out
