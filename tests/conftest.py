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

# Folders whose every test starts processes (the operator, trainers, servers, podman, helm, kubectl, moto):
# marked slow here. Elsewhere (the folders that mirror the code, tests/security) each module marks its own.
SLOW_FOLDERS = ("e2e", "images", "integration")
HEAVY_MODULES = ("tensorflow", "keras", "jax", "torch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(ROOT / "tests").parts if item.path.is_relative_to(ROOT / "tests") else ()
        if parts and parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


def _fast_tier(config: pytest.Config) -> bool:
    return "not slow" in (config.option.markexpr or "")


class SlowInFastTier(Exception):
    """A test of the fast tier started a process or imported a heavy library. Not an ImportError: code that
    falls back when a library is missing must not quietly take another path."""


class _Guard:
    """In a `-m "not slow"` run, from the end of collection on: starting a process (subprocess, asyncio's
    subprocesses, multiprocessing, os.fork) or importing HEAVY_MODULES raises SlowInFastTier, and is
    remembered for the test running (its fixtures of any scope included), which fails even if the code
    under test caught the error. Installed for the whole run, not around each test: a module-scoped fixture
    would import TensorFlow before a per-test guard began, and every later test would use it unseen."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.undo: list[tuple[Any, str, Any]] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in HEAVY_MODULES:
            self._refuse(f"imports {name}")

    def _refuse(self, what: str) -> None:
        self.seen.append(what)
        raise SlowInFastTier(f"mark this test slow (@pytest.mark.slow): it {what}")

    def _refusing(self, what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            self._refuse(f"starts a process ({what})")

        return refused

    def install(self) -> None:
        import multiprocessing.process
        import subprocess

        for owner, name, what in (
            (subprocess.Popen, "__init__", "subprocess.Popen"),
            (multiprocessing.process.BaseProcess, "start", "multiprocessing"),
            (os, "fork", "os.fork"),
            (os, "posix_spawn", "os.posix_spawn"),
        ):
            self.undo.append((owner, name, getattr(owner, name)))
            setattr(owner, name, self._refusing(what))
        sys.meta_path.insert(0, self)  # type: ignore[arg-type]

    def uninstall(self) -> None:
        for owner, name, original in reversed(self.undo):
            setattr(owner, name, original)
        self.undo.clear()
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # type: ignore[arg-type]


GUARD = _Guard()


def pytest_collection_finish(session: pytest.Session) -> None:
    if not _fast_tier(session.config) or not session.items:
        return
    # A heavy library imported while collecting costs every run, whatever it selects.
    heavy = [name for name in HEAVY_MODULES if name in sys.modules]
    if heavy:
        raise pytest.UsageError(
            f"{', '.join(heavy)} imported while collecting the fast tier: import it inside the (slow) tests that "
            "use it (or through helpers.lazy), not at a test module's top level"
        )
    GUARD.install()


def pytest_sessionfinish(session: pytest.Session) -> None:
    GUARD.uninstall()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    GUARD.seen.clear()  # before any fixture of the test is set up, whatever its scope


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if GUARD.undo and GUARD.seen and report.when == "call" and report.passed:
        what = ", ".join(dict.fromkeys(GUARD.seen))
        report.outcome = "failed"
        report.longrepr = f"mark this test slow (@pytest.mark.slow): it {what} (and caught the error)"


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
def local_pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pvc:// URIs resolve under tmp_path/pvc, and relative paths under tmp_path (a local run's outputs)."""
    monkeypatch.setenv("KERAS_OPERATOR_PVC_ROOT", str(tmp_path / "pvc"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def blackhole() -> Iterator[Any]:
    """An API server behind a half-open link: it accepts connections and never answers."""
    from helpers.blackhole import Blackhole

    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()
