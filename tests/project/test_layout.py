"""The repository layout: folder names are import names, and nothing at the root shadows the stdlib."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.manifests import ROOT

FOLDERS = {"common": "keras_common", "operator": "keras_operator", "trainer": "keras_trainer", "server": "keras_server"}
FOLDERS["cli"] = "kerasop"
PACKAGES = {package: ROOT / folder / package for folder, package in FOLDERS.items()}


@pytest.mark.parametrize("how", ["-c", "-"])
@pytest.mark.slow
def test_stdlib_operator_is_not_shadowed_from_the_root(how: str) -> None:
    code = "import operator; from operator import eq; print(operator.__file__)"
    cmd = [sys.executable, "-c", code] if how == "-c" else [sys.executable, "-"]
    result = subprocess.run(cmd, input=code if how == "-" else None, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert not Path(result.stdout.strip()).is_relative_to(ROOT), result.stdout


@pytest.mark.slow
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
    for folder, package in FOLDERS.items():
        assert not (ROOT / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow or mislead imports"
        assert sorted(p.name for p in (ROOT / folder).iterdir() if p.name != "__pycache__") == [package]


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
    files = [p for folder in (*FOLDERS, "tests", "bench", "scripts") for p in (ROOT / folder).rglob("*.py")]
    missing = []
    for path in files:
        for name in _first_party_imports(path):
            # `from pkg.mod import name` names a module or an attribute of one: either the module or its parent.
            if not (_resolves_to_a_path(name) or _resolves_to_a_path(name.rsplit(".", 1)[0])):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, missing


# The operator's layers; which imports which is import-linter's contract (pyproject.toml), checked below.
LAYERS = ("api", "builders", "status", "controllers", "handlers", "endpoints", "runtime")
KINDS = ("training", "serving")


def _layer_imports() -> list[tuple[str, Path, list[str]]]:
    return [
        (layer, path, [n.split(".") for n in _first_party_imports(path)])  # type: ignore[misc]
        for layer in LAYERS
        for path in (PACKAGES["keras_operator"] / layer).rglob("*.py")
    ]


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def test_the_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    """The products import downward only (kerasop > server > trainer > operator api > common), and the
    operator's layers one way: import-linter reads the contracts in pyproject.toml (in this process, so the
    fast tier runs it)."""
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "0 broken" in out


@pytest.mark.slow
def test_an_upward_import_breaks_a_contract(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the packages where the trainer imports the operator's runtime."""
    import shutil

    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    planted = tmp_path / "trainer" / "keras_trainer" / "planted.py"
    planted.write_text("from keras_operator.runtime import settings  # noqa: F401\n")
    env_path = os.pathsep.join(str(tmp_path / folder) for folder in FOLDERS)
    result = _lint_imports(tmp_path, {**os.environ, "PYTHONPATH": env_path})
    assert result.returncode != 0
    assert "keras_trainer.planted -> keras_operator.runtime.settings" in result.stdout, result.stdout[-2000:]


def _kind(module: str) -> str | None:
    """The kind a module is about, from its name (training_reconciler, serving_manifests, ...)."""
    return next((kind for kind in KINDS if module.startswith(f"{kind}_")), None)


def test_one_kind_never_imports_the_other_kinds_modules() -> None:
    """What both kinds share lives in a shared module (controllers/outcome.py, handlers/watched_objects.py, ...)."""
    wrong = []
    for layer, path, imports in _layer_imports():
        kind = _kind(path.stem)
        if kind is None:
            continue
        for parts in imports:
            other = any(_kind(part) not in (None, kind) for part in parts[2:])
            if len(parts) > 2 and parts[1] in LAYERS and parts[1] != "api" and other:
                wrong.append(f"{layer}/{path.name} imports {'.'.join(parts)}")
    assert not wrong, wrong


def test_no_two_modules_of_the_operator_share_a_name() -> None:
    """A module's name says what it holds and its layer: imports need no aliases to tell them apart."""
    stems: dict[str, list[str]] = {}
    for path in PACKAGES["keras_operator"].rglob("*.py"):
        if path.stem != "__init__":
            stems.setdefault(path.stem, []).append(str(path.relative_to(PACKAGES["keras_operator"])))
    assert {stem: paths for stem, paths in stems.items() if len(paths) > 1} == {}
