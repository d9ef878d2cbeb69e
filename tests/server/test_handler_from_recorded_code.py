"""A service by trainingJobRef has no code of its own: its --handler may live in the code the training
recorded beside the model, which the server then imports (and only then: the path comes first)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from keras_server.handler import HandlerLoadError
from keras_server.server import handler_for

HANDLER = """
class Upper:
    def preprocess(self, inputs):
        return inputs
"""


def recorded_run(tmp_path: Path, module: str) -> Path:
    """A run folder as the trainer leaves it: code/ and code.json beside model.keras (not read here)."""
    run = tmp_path / "runs" / "r1"
    (run / "code").mkdir(parents=True)
    (run / "code" / f"{module}.py").write_text(HANDLER)
    (run / "code.json").write_text(json.dumps({"imports": [module], "hash": "abc", "files": {}}))
    return run


@pytest.fixture(autouse=True)
def clean_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


def test_the_handler_comes_from_the_runs_recorded_code(tmp_path: Path) -> None:
    run = recorded_run(tmp_path, "recorded_pre")
    handler = handler_for("recorded_pre:Upper", str(run / "model.keras"))
    assert handler.ref == "recorded_pre:Upper"
    assert Path(sys.modules["recorded_pre"].__file__).parent.parent == run  # fetched copy or the run's own


def test_without_recorded_code_the_import_error_stands(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"")
    with pytest.raises(HandlerLoadError, match="cannot import 'nowhere_pre'"):
        handler_for("nowhere_pre:Upper", str(tmp_path / "model.keras"))


def test_recorded_code_without_the_class_names_it(tmp_path: Path) -> None:
    run = recorded_run(tmp_path, "recorded_other")
    with pytest.raises(HandlerLoadError, match="has no class 'Lower'"):
        handler_for("recorded_other:Lower", str(run / "model.keras"))
