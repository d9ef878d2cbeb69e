"""The GitOps folder renders with the real kubectl (kustomize) into valid objects, and the Argo CD
health checks map every phase."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT, validate_cr, validate_k8s
from keras_operator.api.parse import parse

KUBECTL = ROOT / ".cache" / "bin" / "kubectl"  # scripts/setup.sh fetches it
PLURALS = {"KerasTrainingJob": "kerastrainingjobs", "KerasModelService": "kerasmodelservices"}


@pytest.mark.slow
def test_kustomization_renders_valid_objects() -> None:
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(ROOT / "deploy" / "gitops")], capture_output=True, text=True, check=True
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert sorted(o["kind"] for o in objects) == ["KerasModelService", "KerasTrainingJob", "Namespace"]
    for obj in objects:
        assert obj["metadata"]["labels"]["team"] == "ml"
        if obj["kind"] in PLURALS:
            assert obj["metadata"]["namespace"] == "ml"
            validate_cr(obj, PLURALS[obj["kind"]])
            parse(obj)
        else:
            validate_k8s(obj)


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    script = (ROOT / "deploy" / "argocd" / f"health-{kind.lower()}.lua").read_text()
    lua.globals().obj = lua.table_from(_to_lua(lua, obj))
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    return value


@pytest.mark.parametrize(
    ("kind", "phase", "expected"),
    [
        ("KerasTrainingJob", None, "Progressing"),
        ("KerasTrainingJob", "Running", "Progressing"),
        ("KerasTrainingJob", "Queued", "Suspended"),
        ("KerasTrainingJob", "Succeeded", "Healthy"),
        ("KerasTrainingJob", "Failed", "Degraded"),
        ("KerasModelService", "Loading", "Progressing"),
        ("KerasModelService", "Ready", "Healthy"),
        ("KerasModelService", "Failed", "Degraded"),
        ("KerasModelService", None, "Progressing"),
    ],
)
def test_argocd_health(kind: str, phase: str | None, expected: str) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "x"}}
    if phase:
        obj["status"] = {"phase": phase, "message": f"it is {phase}"}
    result = health(kind, obj)
    assert result["status"] == expected
    if phase:
        assert result["message"] == f"it is {phase}"


def test_docs_carry_the_tested_health_checks() -> None:
    docs = (ROOT / "docs" / "gitops.md").read_text()
    for kind in ("KerasTrainingJob", "KerasModelService"):
        script = (ROOT / "deploy" / "argocd" / f"health-{kind.lower()}.lua").read_text()
        body = [line for line in script.splitlines() if not line.startswith("--")]
        assert "\n".join("    " + line for line in body) in docs, f"docs/gitops.md: {kind} check differs"


@pytest.mark.slow
def test_kind_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "hack" / "e2e-kind.sh")]).returncode == 0


def test_each_kind_scenario_names_emulated_tests_that_exist() -> None:
    """hack/e2e-kind.sh mirrors the emulated tests on a real cluster: a scenario that names a test which
    was renamed or removed has drifted from what the emulated suite checks."""
    script = (ROOT / "hack" / "e2e-kind.sh").read_text()
    named = re.findall(r"^#(?: mirrors:|\s{9}) (tests/\S+)$", script, flags=re.MULTILINE)
    scenarios = re.findall(r"^scenario_(\w+)\(\)", script, flags=re.MULTILINE)
    assert len(scenarios) >= 8
    assert len(named) >= len(scenarios)
    for reference in named:
        path, _, test = reference.partition("::")
        assert (ROOT / path).is_file(), reference
        if test:
            assert re.search(rf"^def {test}\(", (ROOT / path).read_text(), flags=re.MULTILINE), reference
    # Every scenario is run by default, and every default names a scenario.
    default = re.search(r"SCENARIOS:-([a-z_ ]+)\}", script)
    assert default is not None
    assert set(default.group(1).split()) == set(scenarios) - {"install"}
