"""The chart grants exactly the API calls the operator made in the end-to-end tests: no less, no more.

Named to run after the other end-to-end tests of the session, whose calls the emulator recorded.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from cluster.emulator import OPERATOR_CALLS
from helpers.manifests import ROOT

CHART = ROOT / "charts" / "keras-operator"
HELM = ROOT / ".cache" / "bin" / "helm"


def granted(*sets: str) -> set[tuple[str, str, str]]:
    args = [str(HELM), "template", "ko", str(CHART)]
    for s in sets:
        args += ["--set", s]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    out: set[tuple[str, str, str]] = set()
    for doc in yaml.safe_load_all(rendered):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def test_chart_rbac_is_exactly_what_the_operator_uses() -> None:
    used = {call for call in OPERATOR_CALLS if call[1] != "events" or call[2] == "create"}
    if not any(r.startswith("kerasmodelservices") for _, r, _ in used) or not any(
        r.startswith("kerastrainingjobs") for _, r, _ in used
    ):
        pytest.skip("needs the end-to-end tests of both kinds in the same session (run the whole suite)")
    grants = granted()
    missing = used - grants
    unused = grants - used
    assert not missing, f"the operator calls these, the chart does not grant them: {sorted(missing)}"
    assert not unused, f"the chart grants these, the operator never used them: {sorted(unused)}"
    assert granted("watchNamespaces={ml}") == grants  # the same rights, split into Role + discovery ClusterRole
