"""The processes as a user starts them: `--help`, a wrong argument, no credentials, a port taken, and one
log format from the first line to the last."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from cluster.harness import Cluster
from helpers.manifests import ROOT
from keras_operator.runtime.settings import ENV, Settings

BIN = Path(sys.executable).parent
SCRIPTS = sorted(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
KERASOP_COMMANDS = ("run", "serve", "render")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def test_every_settings_field_has_an_environment_variable() -> None:
    assert set(ENV) == {f.name for f in dataclasses.fields(Settings)}
    described = Settings.described()
    assert [name for name, _, _ in described] == [f"KERAS_OPERATOR_{ENV[f.name]}" for f in dataclasses.fields(Settings)]
    assert all(doc for _, doc, _ in described), [name for name, doc, _ in described if not doc]


@pytest.mark.slow
def test_keras_operator_help_prints_usage_and_the_environment_it_reads() -> None:
    """`--help` started the operator: it prints what it is and every setting, and starts nothing."""
    result = run("keras-operator", "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: keras-operator")
    assert "Keras Operator" in result.stdout
    for name, _doc, _ in Settings.described():
        assert name in result.stdout
    assert "debug, info, warning or error. (default: info)" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
def test_keras_operator_refuses_an_unknown_argument() -> None:
    result = run("keras-operator", "--frobnicate", timeout=60)
    assert result.returncode == 2
    assert "usage: keras-operator" in result.stderr
    assert "unrecognized arguments: --frobnicate" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [(s,) for s in SCRIPTS] + [("kerasop", c) for c in KERASOP_COMMANDS], ids=" ".join)
def test_every_console_script_answers_help(command: tuple[str, ...]) -> None:
    assert {"keras-operator", "keras-server", "keras-trainer", "kerasop"} <= set(SCRIPTS)  # read, not empty
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {' '.join(command)}"), result.stdout[:300]


def _without_credentials(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "KUBECONFIG", "KERAS_OPERATOR_"))}
    return {**env, "HOME": str(home), "KERAS_OPERATOR_METRICS_PORT": "0", "KERAS_OPERATOR_PROGRESS_PORT": "0"}


@pytest.mark.slow
def test_without_credentials_the_operator_stops_with_one_line(tmp_path: Path) -> None:
    """It retried the login every 60 s for ever, a traceback in each log line."""
    started = time.monotonic()
    result = run("keras-operator", env=_without_credentials(tmp_path), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: no Kubernetes credentials: not in a cluster, no kubeconfig (KUBECONFIG / ~/.kube/config), "
        "and KERAS_OPERATOR_API_SERVER unset"
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_a_kubeconfig_counts_as_credentials(tmp_path: Path) -> None:
    """The check refuses only when there is nothing: a kubeconfig gets past it (the operator then runs, and
    is stopped here once it has logged that it started)."""
    from helpers.server import free_port

    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = {**_without_credentials(tmp_path), "KERAS_OPERATOR_LIVENESS_PORT": str(free_port())}
    proc = subprocess.Popen(
        [str(BIN / "keras-operator")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "no Kubernetes credentials" not in line
        assert proc.poll() is None or proc.returncode != 1, line
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_every_line_of_the_operator_is_json(tmp_path: Path) -> None:
    """The first line came in the console format and the rest as JSON: logging is set up before anything logs,
    kopf's own records included."""
    from helpers.server import free_port

    cluster = Cluster(pvc_root=tmp_path / "pvc", workdir=ROOT).start()
    try:
        env = {
            **_without_credentials(tmp_path),
            "KERAS_OPERATOR_API_SERVER": cluster.url,
            "KERAS_OPERATOR_LOG_FORMAT": "json",
            "KERAS_OPERATOR_LIVENESS_PORT": str(free_port()),
            "KERAS_OPERATOR_LEADER_ELECTION": "true",  # the Elector logs before kopf runs
            "KERAS_OPERATOR_LEASE_SECONDS": "5",
        }
        proc = subprocess.Popen(
            [str(BIN / "keras-operator")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "operator_started" in line:
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rest, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rest, _ = proc.communicate()
            lines += rest.splitlines()
    finally:
        cluster.stop()
    lines = [line for line in lines if line.strip()]
    assert any("operator_started" in line for line in lines), lines[-20:]
    assert len(lines) > 2
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:10]


@pytest.mark.slow
def test_the_model_server_on_a_port_in_use_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run("keras-server", "--model-uri", "x", "--model-name", "m", "--port", str(port))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"error: port {port} is in use on 0.0.0.0" in result.stderr
