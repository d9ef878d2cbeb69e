"""A real S3 API for tests: moto's server on 127.0.0.1, one bucket per test.

The server runs as its own process (`moto_server -p PORT`), so trainer and model-server
subprocesses reach it exactly as they would reach S3 or MinIO: through the standard AWS
environment variables (`env`), with AWS_ENDPOINT_URL pointing at it.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.server import free_port

REGION = "us-east-1"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Start moto's S3 server on a free port; yields its endpoint URL."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"moto_server exited: {proc.stderr.read() if proc.stderr else ''}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                break
            if time.monotonic() > deadline:
                raise AssertionError("moto_server did not start")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.kill()
        proc.wait(timeout=10)


def aws_env(endpoint: str) -> dict[str, str]:
    """What a user sets for an S3-compatible store (MinIO, moto): keys, region and the endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
    }


def forget_s3fs_state() -> None:
    """s3fs caches filesystem instances (with the endpoint they were made with) and directory
    listings per process: a new server, or objects written behind its back, need a fresh one."""
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@dataclass
class Bucket:
    endpoint: str
    name: str

    @property
    def env(self) -> dict[str, str]:
        return aws_env(self.endpoint)

    def url(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def client(self) -> Any:
        import boto3

        env = self.env
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, read with boto3 (not through the code under test)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def upload(self, local: Path, key: str) -> str:
        self.client().upload_file(str(local), self.name, key)
        return self.url(key)

    def download(self, key: str, local: Path) -> Path:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.client().download_file(self.name, key, str(local))
        return local


def new_bucket(endpoint: str, prefix: str = "test") -> Bucket:
    bucket = Bucket(endpoint, f"{prefix}-{secrets.token_hex(4)}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket
