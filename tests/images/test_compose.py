"""compose.yaml with podman-compose: the trainer trains the digits example, then the server serves it.

podman-compose 1.0.x (Debian bookworm's) ignores `depends_on` conditions and starts both services at
once: the server exits for want of a model and `restart: on-failure` brings it back until the
training has saved one. Docker Compose waits for `service_completed_successfully` instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
from podrun import ROOT, free_port, podman, progress, wait_http

from helpers.server import post_json

pytestmark = [pytest.mark.images]


def compose(project: str, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman-compose", "--project-name", project, "--file", str(ROOT / "compose.yaml"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.mark.timeout(1800)
def test_compose_trains_then_serves_digits(images) -> None:
    if shutil.which("podman-compose") is None:
        message = "podman-compose not installed (scripts/setup.sh installs it where apt-get works)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    project = f"kerastest{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**images.env, "TRAINER_IMAGE": images.trainer, "SERVER_PORT": str(port)}
    progress(f"podman-compose up ({project}): train, then serve")
    try:
        up = compose(project, env, "up", "--detach")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        server = f"{project}_serve_1"
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", 300)
        train = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{project}_train_1").stdout
        assert train.split() == ["exited", "0"], podman("logs", f"{project}_train_1").stderr[-3000:]

        data = np.load(ROOT / "examples" / "data" / "digits-test.npz")
        code, body = post_json(
            f"http://127.0.0.1:{port}/v1/models/digits:predict", {"instances": data["x"][:8].tolist()}
        )
        assert code == 200, body
        assert (np.array(body["predictions"]).argmax(axis=1) == data["y"][:8]).mean() >= 0.75
        user = podman("inspect", "--format", "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}", server).stdout
        assert user.split() == ["1000:1000", "true"]
    finally:
        down = compose(project, env, "down", "--volumes")
        podman("network", "rm", "--force", f"{project}_default", check=False)  # 1.0.x leaves it
    assert down.returncode == 0, down.stderr[-3000:]
