from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Read when the operator's handlers are imported: a running training refreshes its status every second.
os.environ["KERAS_OPERATOR_SYNC_INTERVAL"] = "1"
# Unless a test serves the progress endpoint (tests/e2e/test_progress_endpoint.py), epochs reach the status
# from the pod log at once; several operators in one session must not share a port.
os.environ.setdefault("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "0")
os.environ.setdefault("KERAS_OPERATOR_PROGRESS_PORT", "0")

K8S_VERSIONS = ("1.30", "1.33", "1.37")

# --- the fast tier: `pytest -m "not slow"` ---

# Folders whose every test starts processes (the operator, trainers, servers, podman, helm, kubectl, moto,
# checkov): marked slow here, each test under tests/unit is marked in its own module.
SLOW_FOLDERS = ("e2e", "images", "integration", "security")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts if item.path.is_relative_to(ROOT / "tests") else ()
        if parts and parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that configures logging (`kerasop run` sets warning level on stderr) leaves it as it found
    it: the next test's log assertions must not depend on which tests ran before."""
    import logging

    import structlog

    saved = structlog.get_config()
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    yield
    structlog.configure(**saved)
    root_logger.handlers[:] = handlers
    root_logger.setLevel(level)


@pytest.fixture
def blackhole() -> Iterator[Any]:
    """An API server behind a half-open link: it accepts connections and never answers."""
    from helpers.blackhole import Blackhole

    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()
