from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.harness import Cluster
from helpers.manifests import ROOT
from helpers.server import OPERATOR_METRICS_PORT


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A fresh emulated cluster; the operator (started by each test) talks to it without credentials."""
    c = Cluster(pvc_root=tmp_path / "pvc", workdir=ROOT).start()
    monkeypatch.setenv("KERAS_OPERATOR_API_SERVER", c.url)
    monkeypatch.setenv("KERAS_OPERATOR_LOG_FORMAT", "json")
    monkeypatch.setenv("KERAS_OPERATOR_METRICS_PORT", str(OPERATOR_METRICS_PORT))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def progress_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """The operator serves the progress endpoint on a free port and its trainers push there; the pod log is
    never read instead (the fallback waits an hour)."""
    from cluster.kubelet import free_port

    port = free_port()
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_PORT", str(port))
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "3600")
    return f"http://127.0.0.1:{port}"
