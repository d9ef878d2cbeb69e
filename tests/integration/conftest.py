"""Object storage for the integration tests: a real S3 API server (moto) per module, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers.s3 import Bucket, forget_s3fs_state, moto_server, new_bucket


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    """A fresh bucket, with this process's AWS environment pointing at it."""
    b = new_bucket(s3_endpoint)
    for key, value in b.env.items():
        monkeypatch.setenv(key, value)
    forget_s3fs_state()
    yield b
    forget_s3fs_state()
