"""Wheels made on the spot, so that installing one needs no package index."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pip


def tiny_wheel(folder: Path, name: str = "tinypkg", value: str = "42") -> Path:
    """A pure-Python wheel holding module `name` with VALUE = `value`."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def pip_wheel(folder: Path) -> Path:
    """This environment's pip as a wheel-shaped archive: what an image keeps to run pip from."""
    source = Path(pip.__file__).parent
    path = folder / f"pip-{pip.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for file in source.rglob("*"):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, f"pip/{file.relative_to(source)}")
    return path
