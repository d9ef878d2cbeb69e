"""The Helm chart rendered by the real helm binary (scripts/setup.sh fetches it into .cache/bin)."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from helpers.manifests import ROOT

CHART = ROOT / "charts" / "keras-operator"
HELM = ROOT / ".cache" / "bin" / "helm"


def helm(*args: str) -> str:
    assert HELM.exists(), "run scripts/setup.sh (it fetches helm into .cache/bin)"
    result = subprocess.run([str(HELM), *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def render(*sets: str) -> list[dict[str, Any]]:
    """The objects of release "ko" in namespace keras-system, with `--set` for each of `sets`."""
    args = ["template", "ko", str(CHART), "--namespace", "keras-system"]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args)) if d]
