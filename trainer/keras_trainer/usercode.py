"""The user's Python (spec.code): found or fetched, its requirements installed, its modules imported
(so their keras.saving.register_keras_serializable classes are known), and recorded beside a run's model
where a server serving the run finds it."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keras_operator.api.common import CODE_DIR, CODE_DIR_ENV, CodeSpec
from keras_operator.api.jobfile import CODE_FOLDER, CODE_RECORD
from keras_trainer import storage
from keras_trainer.errors import SpecError, TransientError, first_line

ARCHIVES = (".tar.gz", ".tgz", ".zip")
PIP_SECONDS = 900
# The images install nothing into their environment (pip is uninstalled) but keep pip's wheel here, run
# only for spec.code.requirements, which a user opts into. Not a name Python can import: the image's
# working folder is /opt/keras-operator, where a folder named pip would be found as a namespace package.
PIP_WHEELS = Path("/opt/keras-operator/pip-wheel")


@dataclass(frozen=True)
class Code:
    folder: Path
    """What goes first on the Python path."""
    imports: list[str]
    packages: Path | None = None
    """Where spec.code.requirements were installed (next on the path), if any."""
    source: dict[str, Any] = field(default_factory=dict)


def prepare(spec: CodeSpec | None, field_name: str = "spec.code") -> Code | None:
    """The code of a spec, ready to import: found, fetched and unpacked, its requirements installed."""
    if spec is None:
        return None
    if spec.config_map:
        folder = Path(os.environ.get(CODE_DIR_ENV) or CODE_DIR)
        where = f"{field_name}.configMap"
    elif spec.path:
        folder, where = Path(spec.path), f"{field_name}.path"
    else:
        assert spec.uri is not None  # the API rule: exactly one source
        folder, where = _fetch(spec.uri, f"{field_name}.uri"), f"{field_name}.uri"
    if not folder.is_dir():
        raise SpecError(where, f"no folder of code at {folder}")
    packages = install(spec.requirements, f"{field_name}.requirements") if spec.requirements else None
    imports = list(spec.imports) if spec.imports is not None else top_level_modules(folder)
    return Code(folder, imports, packages, spec.dump())


def _fetch(uri: str, field_name: str) -> Path:
    try:
        path = storage.fetch(uri)
    except storage.StorageError as exc:
        raise SpecError(field_name, str(exc)) from exc
    except TransientError as exc:
        raise TransientError(f"{field_name}: {exc}") from exc
    if path.is_dir():
        return path
    if not path.name.endswith(ARCHIVES):
        raise SpecError(field_name, f"{uri} is neither a folder nor a {', '.join(ARCHIVES)} archive")
    target = Path(tempfile.mkdtemp(prefix="keras-code-"))
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                _check_members(archive.namelist(), uri)
                archive.extractall(target)
        else:
            with tarfile.open(path) as archive:
                archive.extractall(target, filter="data")  # refuses links and paths out of the folder
    except (tarfile.TarError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise SpecError(field_name, f"cannot unpack {uri}: {first_line(exc)}") from exc
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    # An archive of one folder (tar czf code.tar.gz code/) means that folder's contents.
    return (
        entries[0]
        if len(entries) == 1 and entries[0].is_dir() and not (entries[0] / "__init__.py").exists()
        else target
    )


def _check_members(names: list[str], uri: str) -> None:
    for name in names:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"{name!r} would land outside the code folder")


def pip_command(wheels: Path) -> list[str] | None:
    """How to run pip here: the environment's, else the pip wheel in `wheels` (run from the wheel itself,
    as pip supports); None when there is neither."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    found = sorted(wheels.glob("pip-*.whl"))
    return [sys.executable, str(found[-1] / "pip")] if found else None


def install(requirements: list[str], field_name: str, wheels: Path = PIP_WHEELS) -> Path:
    """pip install into a scratch folder (the root filesystem is read-only), which then goes on the path."""
    pip = pip_command(wheels)
    if pip is None:
        raise SpecError(
            field_name,
            "this image has no pip to install them with: build an image FROM it with the packages "
            "installed, and give it as spec.image (docs/custom-code.md)",
        )
    target = Path(tempfile.mkdtemp(prefix="keras-code-packages-"))
    command = [*pip, "install", "--quiet", "--no-input", "--disable-pip-version-check"]
    command += ["--no-warn-script-location", "--target", str(target), "--", *requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_SECONDS, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"{field_name}: pip install took more than {PIP_SECONDS} s") from exc
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise SpecError(field_name, f"pip install failed: {lines[-1].strip() if lines else done.returncode}")
    return target


def top_level_modules(folder: Path) -> list[str]:
    """The modules and packages directly in `folder`: what is imported when spec.code.imports is not given."""
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file() and entry.suffix == ".py" and entry.stem.isidentifier():
            names.append(entry.stem)
        elif entry.is_dir() and entry.name.isidentifier() and (entry / "__init__.py").exists():
            names.append(entry.name)
    return names


def activate(code: Code, field_name: str = "spec.code") -> None:
    """Put the code first on the Python path and import its modules."""
    for folder in (code.packages, code.folder):
        if folder is not None and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    for module in code.imports:
        _forget_others(module, code.folder)
        try:
            importlib.import_module(module)
        except Exception as exc:  # the user's module may raise anything at import
            raise SpecError(
                field_name, f"importing {module!r} failed: {type(exc).__name__}: {first_line(exc)}"
            ) from exc


def _forget_others(module: str, folder: Path) -> None:
    """Drop a module of the same name imported from elsewhere (an earlier training or model in this
    process: `kerasop`, tests), with its submodules, so that this code's is the one imported."""
    top = module.split(".")[0]
    loaded = sys.modules.get(top)
    filename = getattr(loaded, "__file__", None)
    if loaded is None or (filename and Path(filename).resolve().is_relative_to(folder.resolve())):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def of_module(name: str) -> Code | None:
    """The code of a model.callable module that came with no spec.code (on the image's path): its file,
    or its package's folder, copied, unless it is an installed package (there for any server too)."""
    module = sys.modules.get(name.split(".")[0])
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    path = Path(filename).resolve()
    if any(part in ("site-packages", "dist-packages") for part in path.parts):
        return None
    copy = Path(tempfile.mkdtemp(prefix="keras-code-"))
    if path.name == "__init__.py":
        shutil.copytree(path.parent, copy / path.parent.name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
    else:
        shutil.copy2(path, copy / path.name)
    return Code(copy, [name.split(".")[0]], source={"module": name})


def _files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, path) of the code's files. Hidden entries are left out: a ConfigMap volume holds
    its files twice, as ..data/NAME and as NAME linking there."""
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            path = Path(root) / name
            yield path.relative_to(folder).as_posix(), path


def record(code: Code, run_folder: Path) -> str:
    """Copy the code into RUN/code and write RUN/code.json; -> the code's content hash."""
    target = run_folder / CODE_FOLDER
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = {}
    for name, path in _files(code.folder):
        content = path.read_bytes()
        files[name] = hashlib.sha256(content).hexdigest()
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes(content)
    overall = hashlib.sha256("".join(f"{n}\0{h}\n" for n, h in sorted(files.items())).encode()).hexdigest()
    text = {"hash": overall, "imports": code.imports, "files": files, "source": code.source}
    (run_folder / CODE_RECORD).write_text(json.dumps(text, indent=1, sort_keys=True))
    return overall


def recorded(model_uri: str) -> Code | None:
    """The code recorded beside a model (a run's model.keras or savedmodel/), fetched; None when the
    model's folder has none (a model not trained here, or trained without custom code)."""
    folder = model_uri.rstrip("/").rsplit("/", 1)[0] if "/" in model_uri.rstrip("/") else "."
    text = storage.read_text(storage.join(folder, CODE_RECORD))
    if text is None:
        return None
    try:
        record_ = json.loads(text)
        imports = [str(m) for m in record_.get("imports", [])]
    except (ValueError, AttributeError, TypeError) as exc:
        raise storage.StorageError(f"{storage.join(folder, CODE_RECORD)} is not a code record: {exc}") from exc
    local = storage.fetch(storage.join(folder, CODE_FOLDER))
    return Code(local, imports, source={"recorded": str(record_.get("hash", ""))})
