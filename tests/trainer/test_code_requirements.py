"""spec.code.requirements: installed at start into a scratch folder, with the environment's pip or, in
the images (which uninstall pip), with the pip wheel they keep aside; without either, one clear error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from helpers.wheels import pip_wheel, tiny_wheel
from keras_trainer import usercode
from keras_trainer.errors import SpecError

pytestmark = pytest.mark.slow  # pip runs as a process
FIELD = "spec.code.requirements"


def imported_value(target: Path, name: str) -> str:
    sys.path.insert(0, str(target))
    try:
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").is_relative_to(target)
        return module.VALUE
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(name, None)


@pytest.fixture
def no_pip_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the images: `import pip` finds nothing."""
    find = importlib.util.find_spec
    monkeypatch.setattr(
        usercode.importlib.util, "find_spec", lambda name, *a: None if name == "pip" else find(name, *a)
    )


def test_requirements_install_with_the_environments_pip(tmp_path: Path) -> None:
    wheel = tiny_wheel(tmp_path, "tinypkg_env", "from-env")
    target = usercode.install([str(wheel)], FIELD, wheels=tmp_path / "none")
    assert imported_value(target, "tinypkg_env") == "from-env"


def test_without_pip_the_kept_wheel_installs_them(tmp_path: Path, no_pip_module: None) -> None:
    wheels = tmp_path / "pip"
    wheels.mkdir()
    pip_wheel(wheels)
    assert usercode.pip_command(wheels)[1].endswith(".whl/pip")
    target = usercode.install([str(tiny_wheel(tmp_path, "tinypkg_wheel", "from-wheel"))], FIELD, wheels=wheels)
    assert imported_value(target, "tinypkg_wheel") == "from-wheel"


def test_with_neither_the_training_fails_naming_the_field(tmp_path: Path, no_pip_module: None) -> None:
    with pytest.raises(SpecError, match=r"spec\.code\.requirements.*no pip"):
        usercode.install(["anything==1.0"], FIELD, wheels=tmp_path)


def test_a_requirement_pip_cannot_install_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec\.code\.requirements.*pip install failed"):
        usercode.install([str(tmp_path / "missing-1.0-py3-none-any.whl")], FIELD, wheels=tmp_path)
