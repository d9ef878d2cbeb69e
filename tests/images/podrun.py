"""Run a pod's container with podman as a kubelet would: the image tests start what the operator builds.

`podman_run_args` turns the pod spec of a Job or Deployment (from keras_operator.builders) into
`podman run` arguments: command and args, env, working directory, user and groups, read-only root,
dropped capabilities, no privilege escalation, memory and CPU limits, ConfigMap volumes (files in a
folder, read-only), PVCs (host folders), emptyDirs (tmpfs), the termination message file and
container ports (published on 127.0.0.1). Anything else in the spec is an error, so a builder change
that this translation would silently drop fails the image tests instead.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "hack" / "containers.conf"
UID = 1000  # the images' user, and the pods' runAsUser

HANDLED_POD_KEYS = {
    "restartPolicy",
    "automountServiceAccountToken",
    "securityContext",
    "containers",
    "volumes",
    "terminationGracePeriodSeconds",
    "serviceAccountName",  # its token is not mounted: the tests point the operator at the API by URL
}
HANDLED_CONTAINER_KEYS = {
    "name",
    "image",
    "command",
    "args",
    "env",
    "volumeMounts",
    "workingDir",
    "ports",
    "resources",
    "securityContext",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "readinessProbe",
    "livenessProbe",
    "imagePullPolicy",
    "lifecycle",  # podman has no preStop: pre_stop() gives its command, which the tests run before stopping
}


def pre_stop(container: dict[str, Any]) -> list[str] | None:
    """The container's preStop exec command (the kubelet runs it inside the container before SIGTERM)."""
    hook = ((container.get("lifecycle") or {}).get("preStop") or {}).get("exec")
    assert hook is not None or "lifecycle" not in container, f"a lifecycle the image tests do not run: {container}"
    return list(hook["command"]) if hook else None


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(*args: str, check: bool = True, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


PYTEST_CONFIG: Any = None  # set by conftest.py: progress lines get past pytest's output capture


def progress(message: str) -> None:
    """A line on stderr even while pytest captures output (image builds and runs take minutes)."""
    capture = PYTEST_CONFIG.pluginmanager.getplugin("capturemanager") if PYTEST_CONFIG else None
    with capture.global_and_fixture_disabled() if capture else nullcontext():
        sys.stderr.write(f"\n[images {time.strftime('%H:%M:%S')}] {message}")
        sys.stderr.flush()


def host_dir(path: Path, *, writable: bool) -> Path:
    """A folder the container's user can read (and write, for a writable PVC: the pod's fsGroup)."""
    path.mkdir(parents=True, exist_ok=True)
    if writable:
        if os.geteuid() == 0:
            os.chown(path, UID, UID)
        else:
            path.chmod(0o777)
    else:
        path.chmod(0o755)
    return path


def _cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


def _memory(quantity: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g", "Ti": "t"}
    for suffix, short in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + short
    return quantity


def podman_run_args(
    pod_spec: dict[str, Any],
    *,
    image: str,
    work: Path,
    config_maps: dict[str, dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    secrets: dict[str, dict[str, Any]] | None = None,
    claims: dict[str, Path] | None = None,
    ports: dict[int, int] | None = None,
    fields: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    host_network: bool = False,
) -> tuple[list[str], Path | None]:
    """(`podman run` options, image and args; the host file that receives the termination message).

    config_maps, secrets: those objects by name; annotations: the pod's, for downward API volumes;
    claims: PVC name -> host folder; ports: containerPort -> host port on 127.0.0.1;
    fields: values of the downward API's fieldRefs (metadata.name...);
    env: variables set on top of the container's; host_network: share the host's network (no ports
    published). `image` replaces the container's image (a locally built tag).
    """
    unknown = set(pod_spec) - HANDLED_POD_KEYS
    assert not unknown, f"pod spec fields the image tests do not translate: {unknown}"
    (container,) = pod_spec["containers"]
    unknown = set(container) - HANDLED_CONTAINER_KEYS
    assert not unknown, f"container fields the image tests do not translate: {unknown}"
    pod_security = pod_spec.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    opts: list[str] = []

    user = security.get("runAsUser")
    if user is not None:
        opts += ["--user", f"{user}:{security.get('runAsGroup', user)}"]
    if pod_security.get("fsGroup") is not None:
        opts += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        opts += ["--read-only", "--read-only-tmpfs=false"]  # only what the pod mounts is writable
    for cap in security.get("capabilities", {}).get("drop", []):
        opts += ["--cap-drop", cap.lower()]
    if security.get("allowPrivilegeEscalation") is False:
        opts += ["--security-opt", "no-new-privileges"]

    if "terminationGracePeriodSeconds" in pod_spec:  # SIGTERM, then SIGKILL this much later
        opts += ["--stop-timeout", str(pod_spec["terminationGracePeriodSeconds"])]
    for var in container.get("env", []):
        if "valueFrom" in var:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            value = (fields or {})[path]
        else:
            value = var["value"]
        if var["name"] not in (env or {}):
            opts += ["--env", f"{var['name']}={value}"]
    for name, value in (env or {}).items():
        opts += ["--env", f"{name}={value}"]
    if container.get("workingDir"):
        opts += ["--workdir", container["workingDir"]]
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        opts += ["--memory", _memory(limits["memory"])]
    if "cpu" in limits:
        opts += ["--cpus", _cpus(limits["cpu"])]
    if host_network:
        opts += ["--network", "host"]
    else:
        for port in container.get("ports", []):
            host_port = (ports or {})[port["containerPort"]]
            opts += ["--publish", f"127.0.0.1:{host_port}:{port['containerPort']}"]

    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        if "configMap" in volume:
            data = (config_maps or {})[volume["configMap"]["name"]]["data"]
            folder = host_dir(work / "configmaps" / mount["name"], writable=False)
            for key, text in data.items():
                (folder / key).write_text(text)
                (folder / key).chmod(0o644)
            opts += ["--volume", f"{folder}:{target}:ro"]
        elif "secret" in volume:
            data = (secrets or {})[volume["secret"]["secretName"]]["data"]
            folder = host_dir(work / "secrets" / mount["name"], writable=False)
            for key, encoded in data.items():
                (folder / key).write_bytes(base64.b64decode(encoded))
                (folder / key).chmod(0o644)
            opts += ["--volume", f"{folder}:{target}:ro"]
        elif "downwardAPI" in volume:
            folder = host_dir(work / "downward" / mount["name"], writable=False)
            for item in volume["downwardAPI"]["items"]:
                path = item["fieldRef"]["fieldPath"]
                match = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path)
                assert match is not None, f"downward API field {path} is not translated"
                (folder / item["path"]).write_text((annotations or {})[match.group(1)])
                (folder / item["path"]).chmod(0o644)
            opts += ["--volume", f"{folder}:{target}:ro"]
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            read_only = mount.get("readOnly", False) or claim.get("readOnly", False)
            folder = (claims or {})[claim["claimName"]]
            opts += ["--volume", f"{folder}:{target}:{'ro' if read_only else 'rw'}"]
        elif "emptyDir" in volume:
            opts += ["--tmpfs", f"{target}:rw,exec,mode=1777"]
        else:
            raise AssertionError(f"volume {volume} is not translated")

    termination_log = None
    if container.get("terminationMessagePath"):
        termination_log = work / "termination-log"
        termination_log.write_text("")
        termination_log.chmod(0o666)
        opts += ["--volume", f"{termination_log}:{container['terminationMessagePath']}:rw"]

    if container.get("command"):
        opts += ["--entrypoint", json.dumps(container["command"])]
    return [*opts, image, *container.get("args", [])], termination_log


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A scratch folder outside pytest's 0700 tmp tree (the container's user must reach bind mounts)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, *, alive: Sequence[str] = ()) -> None:
    """Until GET url answers 200; `alive` names a container that must keep running meanwhile."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        for name in alive:
            state = podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
            if state != "true":
                logs = podman("logs", name, check=False)
                raise AssertionError(f"{name} stopped before {url} answered:\n{logs.stdout}\n{logs.stderr}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout} s")
        time.sleep(0.5)
