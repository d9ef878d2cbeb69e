"""Builds a restricted pod template and merges the user's podTemplate into it."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlparse

from keras_operator.api.common import PodTemplate
from keras_operator.builders.metadata import PVC_ROOT, container_security_context, pod_security_context

SCRATCH_DIR = "/tmp"  # the root filesystem is read-only; Keras, TF and Python caches write here


def pvc_claims(uris: list[str | None], writable: list[str | None]) -> dict[str, bool]:
    """Claim name -> whether it must be mounted read-write, for every pvc:// URI."""
    claims: dict[str, bool] = {}
    for uri in uris:
        if uri and urlparse(uri).scheme == "pvc" and urlparse(uri).netloc:
            claim = urlparse(uri).netloc
            claims[claim] = claims.get(claim, False) or uri in writable
    return claims


def pvc_volumes(claims: dict[str, bool]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes, mounts = [], []
    for index, (claim, writable) in enumerate(sorted(claims.items())):
        name = f"pvc-{index}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": not writable}})
        mounts.append({"name": name, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": not writable})
    return volumes, mounts


def pod_template(
    *,
    container: dict[str, Any],
    labels: dict[str, str],
    volumes: list[dict[str, Any]],
    user: PodTemplate | None,
    restart_policy: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod: our container, volumes and security settings, then the user's podTemplate on top."""
    container = copy.deepcopy(container)
    container.setdefault("securityContext", container_security_context())
    container.setdefault("volumeMounts", []).append({"name": "scratch", "mountPath": SCRATCH_DIR})
    env = container.setdefault("env", [])
    env.extend([{"name": "HOME", "value": SCRATCH_DIR}, {"name": "KERAS_HOME", "value": f"{SCRATCH_DIR}/.keras"}])
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,  # the pods never call the API
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [*volumes, {"name": "scratch", "emptyDir": {}}],
        **(extra or {}),
    }
    metadata: dict[str, Any] = {"labels": dict(labels)}

    if user is not None:
        if user.metadata is not None:
            metadata["labels"] = {**(user.metadata.labels or {}), **labels}  # ours win: selectors rely on them
            if user.metadata.annotations:
                metadata["annotations"] = dict(user.metadata.annotations)
        if user.spec is not None:
            _merge_spec(spec, container, user.spec.dump())
    return {"metadata": metadata, "spec": spec}


def _merge_spec(spec: dict[str, Any], container: dict[str, Any], overrides: dict[str, Any]) -> None:
    overrides = copy.deepcopy(overrides)
    user_env = overrides.pop("env", [])
    if user_env:
        names = {e.get("name") for e in user_env}
        container["env"] = [e for e in container["env"] if e["name"] not in names] + user_env
    if "envFrom" in overrides:
        container["envFrom"] = overrides.pop("envFrom")
    container["volumeMounts"].extend(overrides.pop("volumeMounts", []))
    spec["volumes"].extend(overrides.pop("volumes", []))
    if overrides.get("serviceAccountName"):
        # A named ServiceAccount is how users grant cloud storage access (workload identity).
        spec["automountServiceAccountToken"] = True
    spec.update(overrides)
