"""spec.code without Keras: archives unpacked, the default imports, the record and its hash, a recorded
run's code found beside its model, and import failures naming the field."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keras_operator.api.common import CodeSpec
from keras_trainer import usercode
from keras_trainer.errors import SpecError

FILES = {"layers.py": "VALUE = 'layers'\n", "models.py": "import layers\nVALUE = layers.VALUE + '+models'\n"}


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tests import modules named layers and models: neither they nor their path entries outlive a test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _folder(path: Path, files: dict[str, str] = FILES) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def test_default_imports_are_the_top_level_modules_and_packages(tmp_path: Path) -> None:
    folder = _folder(
        tmp_path / "code", {**FILES, "pkg/__init__.py": "", "_private.py": "", "notes.txt": "", "data/x.py": ""}
    )
    assert usercode.top_level_modules(folder) == ["layers", "models", "pkg"]
    code = usercode.prepare(CodeSpec(path=str(folder)))
    assert code is not None
    assert code.imports == ["layers", "models", "pkg"]
    assert usercode.prepare(CodeSpec(path=str(folder), imports=["models"])).imports == ["models"]  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_of_one_folder_means_that_folder(tmp_path: Path, kind: str) -> None:
    archive = tmp_path / f"code.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as out:
            for name, text in FILES.items():
                out.writestr(f"code/{name}", text)
    else:
        with tarfile.open(archive, "w:gz") as out:
            for name, text in FILES.items():
                info = tarfile.TarInfo(f"code/{name}")
                info.size = len(text.encode())
                out.addfile(info, io.BytesIO(text.encode()))
    code = usercode.prepare(CodeSpec(uri=str(archive)))
    assert code is not None
    assert {p.name: p.read_text() for p in code.folder.iterdir()} == FILES


def test_an_archive_reaching_out_of_its_folder_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("../outside.py", "x = 1\n")
    with pytest.raises(SpecError, match=r"spec\.code\.uri: cannot unpack .*outside the code folder"):
        usercode.prepare(CodeSpec(uri=str(archive)))
    assert not (tmp_path / "outside.py").exists()


def test_missing_code_names_its_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=r"^spec\.code\.path: no folder of code at /nowhere"):
        usercode.prepare(CodeSpec(path="/nowhere"))
    with pytest.raises(SpecError, match=r"^spec\.code\.uri: not found"):
        usercode.prepare(CodeSpec(uri=str(tmp_path / "nope.tar.gz")))
    (tmp_path / "code.txt").write_text("")
    with pytest.raises(SpecError, match="neither a folder nor"):
        usercode.prepare(CodeSpec(uri=str(tmp_path / "code.txt")))
    monkeypatch.setenv("KERAS_TRAINER_CODE_DIR", str(tmp_path / "unmounted"))
    with pytest.raises(SpecError, match=r"^spec\.code\.configMap: no folder of code"):
        usercode.prepare(CodeSpec(config_map="code"))


@pytest.mark.usefixtures("clean_modules")
def test_a_module_that_fails_to_import_names_itself(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "code", {"broken.py": "raise RuntimeError('no GPU here')\n"})
    code = usercode.prepare(CodeSpec(path=str(folder)))
    assert code is not None
    with pytest.raises(SpecError, match=r"^spec\.code: importing 'broken' failed: RuntimeError: no GPU here$"):
        usercode.activate(code)


@pytest.mark.usefixtures("clean_modules")
def test_a_second_code_of_the_same_module_names_replaces_the_first(tmp_path: Path) -> None:
    first = usercode.prepare(CodeSpec(path=str(_folder(tmp_path / "a"))))
    second = usercode.prepare(
        CodeSpec(path=str(_folder(tmp_path / "b", {**FILES, "layers.py": "VALUE = 'other layers'\n"})))
    )
    assert first is not None
    assert second is not None
    usercode.activate(first)
    assert sys.modules["models"].VALUE == "layers+models"
    usercode.activate(second)
    assert sys.modules["models"].VALUE == "other layers+models"


def test_the_record_holds_each_file_and_one_hash_and_is_found_beside_the_model(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "code", {**FILES, "pkg/__init__.py": "", ".hidden": "x"})
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "layers.cpython-311.pyc").write_bytes(b"\0")
    code = usercode.prepare(CodeSpec(path=str(folder)))
    assert code is not None
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    digest = usercode.record(code, run)
    record = json.loads((run / "code.json").read_text())
    files = {**FILES, "pkg/__init__.py": ""}
    assert record["files"] == {n: hashlib.sha256(t.encode()).hexdigest() for n, t in files.items()}
    assert record["hash"] == digest
    assert sorted(p.relative_to(run / "code").as_posix() for p in (run / "code").rglob("*") if p.is_file()) == sorted(
        files
    )
    # The same files from another place hash the same; one byte more does not.
    again = usercode.prepare(CodeSpec(path=str(run / "code")))
    assert again is not None
    (tmp_path / "copy").mkdir()
    assert usercode.record(again, tmp_path / "copy") == digest
    (folder / "layers.py").write_text(FILES["layers.py"] + "\n")
    assert usercode.record(code, tmp_path / "copy") != digest

    found = usercode.recorded(str(run / "model.keras"))
    assert found is not None
    assert found.imports == ["layers", "models", "pkg"]
    assert (found.folder / "models.py").read_text() == FILES["models.py"]
    assert found.source == {"recorded": digest}
    assert usercode.recorded(str(tmp_path / "elsewhere" / "model.keras")) is None
