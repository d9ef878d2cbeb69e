"""spec.code -> what a pod needs to reach the user's Python: a ConfigMap volume, or nothing (a folder in
the image; a uri the trainer or server fetches itself, whose pvc:// claim the caller mounts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keras_operator.api.common import CODE_DIR, CODE_DIR_ENV, CodeSpec

CODE_VOLUME = "code"


@dataclass(frozen=True)
class CodeMount:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    """For the trainer, which reads the source from its job file but the mount's place from here."""
    location: str | None = None
    """Where the process finds the code: a folder in the container, or a URI it fetches."""


def code_mount(code: CodeSpec | None) -> CodeMount:
    if code is None:
        return CodeMount()
    if code.config_map:
        return CodeMount(
            volumes=[{"name": CODE_VOLUME, "configMap": {"name": code.config_map}}],
            mounts=[{"name": CODE_VOLUME, "mountPath": CODE_DIR, "readOnly": True}],
            env=[{"name": CODE_DIR_ENV, "value": CODE_DIR}],
            location=CODE_DIR,
        )
    return CodeMount(location=code.path or code.uri)


def server_code_args(code: CodeSpec | None) -> list[str]:
    """`keras-server` flags for a KerasModelService's own spec.code (recorded code needs none)."""
    location = code_mount(code).location
    if code is None or location is None:
        return []
    args = ["--code-dir", location]
    for module in code.imports or []:
        args += ["--code-import", module]
    for requirement in code.requirements or []:
        args += ["--code-requirement", requirement]
    return args
