"""What both controllers share: status patches, ownership, metadata checks, rejections, phase Events."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from keras_operator.api.base import describe_errors
from keras_operator.api.parse import InvalidResource
from keras_operator.api.training_job import ObjectMeta
from keras_operator.runtime.kube import Rejected
from keras_operator.status.events import Event


def transition_events(previous: dict[str, Any], status: dict[str, Any]) -> list[Event]:
    """One Event per phase change (a new resource's own "Created" Event says its first phase)."""
    old, new = previous.get("phase"), status.get("phase")
    if old == new or (old is None and new == "Pending"):
        return []
    kind = "Warning" if new == "Failed" else "Normal"
    return [(kind, str(new), str(status.get("message") or new))]


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def merge_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `current` into `desired` for the keys `desired` names:
    nested objects recurse, a key they no longer have becomes null, lists are replaced whole."""
    patch: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            nested = merge_patch(have, want)
            nested.update({k: None for k in have if k not in want})
            if nested:
                patch[key] = nested
        elif have != want:
            patch[key] = want
    return patch


def status_patch(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that makes a status exactly `desired`: a key the new status no longer has (a
    `jobName` of a Job that is gone, a `modelUri` that no longer applies) is removed, not left stale."""
    patch = merge_patch(current, desired)
    patch.update({key: None for key in current if key not in desired})
    return patch


def check_metadata(meta: dict[str, Any]) -> None:
    """InvalidResource naming metadata.name when the Jobs, Services and labels made from it could not exist.
    The CRD's rule refuses such names, but the API server enforces it only through the CRD: an old CRD, or
    one installed without its schema, lets any DNS subdomain through (60 characters, dots)."""
    try:
        ObjectMeta.model_validate({"name": meta.get("name")})
    except ValidationError as exc:
        raise InvalidResource(describe_errors(exc, prefix="metadata")) from exc


def rejection(exc: Rejected, what: str) -> str:
    """Why the API server refused to create `what` (e.g. "Job NAME-train"), for the resource's status."""
    if exc.code == 422:
        return f"spec.podTemplate: the API server rejected the generated object: {exc}"
    cause = "an admission webhook or policy" if exc.code == 400 else "RBAC or a ResourceQuota"
    return (
        f"the API server refused to create {what} ({exc.code}, {cause}): {exc}; "
        "fix the cause, then delete and re-apply the resource"
    )
