"""What the images rely on: lint-clean Dockerfiles, and an operator that never imports TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.manifests import ROOT


@pytest.mark.parametrize("dockerfile", ["Dockerfile.operator", "Dockerfile.trainer"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_install_with_the_pinned_constraints() -> None:
    for name in ("Dockerfile.operator", "Dockerfile.trainer"):
        text = (ROOT / name).read_text()
        assert "-c constraints.txt" in text
        assert "USER 1000:1000" in text


def test_operator_imports_no_tensorflow() -> None:
    code = (
        "import sys, keras_operator.runtime.main, keras_operator.cli; "
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_json_logs_for_libraries_too(capfd: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    import structlog

    from keras_operator.runtime import logs

    logs.configure("json", "info", stdlib=True)
    try:
        structlog.get_logger("x").info("ours", key=1)
        logging.getLogger("kopf.test").warning("theirs %s", "too")
        lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    finally:
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler]
    assert {"event": "ours", "key": 1}.items() <= lines[0].items()
    assert lines[1]["event"] == "theirs too"
    assert lines[1]["level"] == "warning"


def test_constraints_pin_every_dependency_the_images_install() -> None:
    """Both Dockerfiles install with -c constraints.txt: every requirement of the extras they use must be
    pinned there, to a version its specifier accepts (CI installs with the same file)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["operator"],
        *project["optional-dependencies"]["trainer"],
    ]
    for text in wanted:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, needs {req}"
