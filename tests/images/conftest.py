"""The images, built once per session by hack/build-images.sh and removed at its end (disk is shared).

TEST_OPERATOR_IMAGE and TEST_TRAINER_IMAGE name images built beforehand, to use instead (kept);
TEST_TRAINER_JAX_IMAGE the same for the jax trainer (BACKEND=jax), which is otherwise built only when a
test asks for it, on the layers the default trainer's build left in the cache.
Without podman the image tests skip, except under CI (the CI variable set), where they fail: CI must
build and run the images. `pytest -m "not images"` leaves them out on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import podrun
import pytest
from podrun import ROOT, podman, podman_env, progress


def pytest_configure(config: pytest.Config) -> None:
    podrun.PYTEST_CONFIG = config


BUILD_TIMEOUT = 1200  # seconds: the trainer alone takes 2-5 minutes on 2 cores (each build's limit)
# Every image test allows 1800 s (@pytest.mark.timeout): the first one to run also waits for the build.


TEST_REPOSITORIES = (
    "localhost/keras-operator-test",
    "localhost/keras-trainer-test",
    "localhost/keras-python-base-test",
)


@dataclass(frozen=True)
class Images:
    operator: str
    trainer: str
    env: dict[str, str]
    """The environment hack/build-images.sh ran with (image names, base, CONTAINERS_CONF)."""


def _require_podman() -> None:
    missing = [tool for tool in ("podman",) if shutil.which(tool) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/setup.sh installs it where apt-get works)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must build and run the images: {message}")
        pytest.skip(message)


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    _require_podman()
    if os.environ.get("TEST_OPERATOR_IMAGE") and os.environ.get("TEST_TRAINER_IMAGE"):
        # Images built beforehand (hack/build-images.sh): used as they are, and kept.
        yield Images(os.environ["TEST_OPERATOR_IMAGE"], os.environ["TEST_TRAINER_IMAGE"], podman_env())
        return
    _remove_stale_test_images()
    token = uuid.uuid4().hex[:8]
    env = podman_env()
    env.update(
        OPERATOR_IMAGE=f"{TEST_REPOSITORIES[0]}:{token}",
        TRAINER_IMAGE=f"{TEST_REPOSITORIES[1]}:{token}",
        LOCAL_BASE_IMAGE=f"{TEST_REPOSITORIES[2]}:{token}",
        # Layers cached (the jax trainer builds on the trainer's), and no cache left behind: the clean-up
        # removes the images, then every layer nothing else uses (podman image prune).
        BUILD_FLAGS="--layers=true",
    )
    script = str(ROOT / "hack" / "build-images.sh")
    started = time.monotonic()
    progress("building the base, operator and trainer images (2.5-4 minutes on 2 cores; hack/build-images.sh)")
    try:
        _run_build(script, env)
        progress(f"images built in {time.monotonic() - started:.0f} s")
        yield Images(operator=env["OPERATOR_IMAGE"], trainer=env["TRAINER_IMAGE"], env=env)
    finally:
        progress("removing the test images")
        subprocess.run(["bash", script, "clean"], env=env, capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def jax_trainer_image(images: Images) -> Iterator[str]:
    """The trainer built with BACKEND=jax by the same script, on the session's base and cached layers."""
    if os.environ.get("TEST_TRAINER_JAX_IMAGE"):
        yield os.environ["TEST_TRAINER_JAX_IMAGE"]
        return
    image = f"{TEST_REPOSITORIES[1]}:{uuid.uuid4().hex[:8]}-jax"
    env = {**images.env, "BACKEND": "jax", "TRAINER_IMAGE": image}
    started = time.monotonic()
    progress(
        "building the jax trainer image on the trainer's cached layers (about 1.5 minutes on 2 cores; "
        "BACKEND=jax hack/build-images.sh trainer)"
    )
    try:
        _run_build(str(ROOT / "hack" / "build-images.sh"), env, "trainer")
        progress(f"jax trainer image built in {time.monotonic() - started:.0f} s")
        yield image
    finally:
        podman("rmi", "--force", image, check=False)  # its layers go with the session's clean-up (prune)


STALE_AFTER = 3 * 3600  # seconds: no session lives this long; its images were left by a killed run


def _remove_stale_test_images() -> None:
    """Test images of sessions that were killed before their clean-up (never those of a running one)."""
    listing = podman("images", "--format", "json", check=False)
    if listing.returncode != 0:
        return
    for image in json.loads(listing.stdout or "[]"):
        names = [n for n in image.get("Names") or [] if n.split(":")[0] in TEST_REPOSITORIES]
        if names and time.time() - image.get("Created", time.time()) > STALE_AFTER:
            progress(f"removing stale test images {names}")
            podman("rmi", "--force", *names, check=False)


def _run_build(script: str, env: dict[str, str], *steps: str) -> None:
    """Runs the build, echoing its own progress lines (not podman's) to the terminal."""
    log: list[str] = []
    with subprocess.Popen(
        ["bash", script, *steps], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        deadline = time.monotonic() + BUILD_TIMEOUT
        for line in proc.stdout:
            log.append(line)
            if line.startswith("[build-images"):
                progress(line.rstrip().split("] ", 1)[-1])
            if time.monotonic() > deadline:
                proc.kill()
                break
        code = proc.wait()
    if code != 0:
        pytest.fail(f"hack/build-images.sh failed ({code}):\n{''.join(log[-60:])}", pytrace=False)


@pytest.fixture
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A world-readable scratch folder (bind mounts must be reachable by the containers' uid 1000)."""
    from podrun import workdir

    with workdir("keras-images-") as path:
        yield path
