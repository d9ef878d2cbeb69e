"""The repository layout: folder names are import names, and nothing at the root shadows the stdlib."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.manifests import ROOT

PACKAGES = {"keras_operator": ROOT / "operator" / "keras_operator", "keras_trainer": ROOT / "trainer" / "keras_trainer"}


@pytest.mark.parametrize("how", ["-c", "-"])
def test_stdlib_operator_is_not_shadowed_from_the_root(how: str) -> None:
    code = "import operator; from operator import eq; print(operator.__file__)"
    cmd = [sys.executable, "-c", code] if how == "-c" else [sys.executable, "-"]
    result = subprocess.run(cmd, input=code if how == "-" else None, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert not Path(result.stdout.strip()).is_relative_to(ROOT), result.stdout


def test_python_m_venv_works_from_the_root(tmp_path: Path) -> None:
    """`python -m` puts the working directory first on sys.path: the step that broke the image builds."""
    result = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_the_top_folders_are_not_packages() -> None:
    for folder in ("operator", "trainer"):
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow or mislead imports"
        assert sorted(p.name for p in (ROOT / folder).iterdir() if p.name != "__pycache__") == [f"keras_{folder}"]


def _first_party_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _resolves_to_a_path(module: str) -> bool:
    top, *rest = module.split(".")
    base = PACKAGES[top].joinpath(*rest)
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def test_every_first_party_import_is_found_at_its_path() -> None:
    """`from keras_operator.x import y` means operator/keras_operator/x.py (or y inside it): a reader or a
    tool that follows paths finds every module."""
    files = [
        p for folder in ("operator", "trainer", "tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py")
    ]
    missing = []
    for path in files:
        for name in _first_party_imports(path):
            # `from pkg.mod import name` names a module or an attribute of one: either the module or its parent.
            if not (_resolves_to_a_path(name) or _resolves_to_a_path(name.rsplit(".", 1)[0])):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


# Imports run one way: a layer imports only the layers listed for it (and the outside world).
LAYERS = {
    "api": {"api"},
    "builders": {"api", "builders"},
    "status": {"api", "status"},
    "controllers": {"api", "builders", "status", "controllers", "runtime"},
    "handlers": {"api", "controllers", "status", "handlers", "runtime"},
    "runtime": {"api", "runtime"},
}
KINDS = ("training", "serving")


def _layer_imports() -> list[tuple[str, Path, list[str]]]:
    return [
        (layer, path, [n.split(".") for n in _first_party_imports(path)])  # type: ignore[misc]
        for layer in LAYERS
        for path in (PACKAGES["keras_operator"] / layer).rglob("*.py")
    ]


def test_operator_layers_import_one_way() -> None:
    wrong = []
    for layer, path, imports in _layer_imports():
        allowed = LAYERS[layer] | ({"handlers"} if (layer, path.name) == ("runtime", "main.py") else set())
        for parts in imports:
            if parts[0] == "keras_trainer" or (len(parts) > 1 and parts[1] in LAYERS and parts[1] not in allowed):
                wrong.append(f"{layer}/{path.name} imports {'.'.join(parts)}")
    assert not wrong, wrong


def test_one_kind_never_imports_the_other_kinds_modules() -> None:
    """What both kinds share lives in a shared module (controllers/outcome.py, handlers/common.py, ...)."""
    wrong = []
    for layer, path, imports in _layer_imports():
        if path.stem not in KINDS:
            continue
        other = next(k for k in KINDS if k != path.stem)
        for parts in imports:
            if len(parts) > 2 and parts[1] in LAYERS and parts[1] != "api" and other in parts[2:]:
                wrong.append(f"{layer}/{path.name} imports {'.'.join(parts)}")
    assert not wrong, wrong
