from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Read when the operator's handlers are imported: a running training refreshes its status every second.
os.environ["KERAS_OPERATOR_SYNC_INTERVAL"] = "1"
# Unless a test serves the progress endpoint (tests/e2e/test_progress_push.py), epochs reach the status
# from the pod log at once; several operators in one session must not share a port.
os.environ.setdefault("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "0")
os.environ.setdefault("KERAS_OPERATOR_PROGRESS_PORT", "0")

K8S_VERSIONS = ("1.30", "1.33", "1.37")


@pytest.fixture
def root() -> Path:
    return ROOT
