"""What the validating admission webhook answers: the reconcile's own validation, at `kubectl apply` time.

A resource the operator would mark `Valid=False` (InvalidSpec) is refused with the same message, naming
the field, before it is stored. Everything else is admitted: the webhook only brings the refusal forward,
it never decides anything the reconcile would not. An unexpected error in the check admits the resource
with a warning (the reconcile still judges it), so a bug here can never block a user's apply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from keras_operator.api.common import GROUP
from keras_operator.api.model_service import KIND as SERVICE_KIND
from keras_operator.api.parse import InvalidResource
from keras_operator.api.training_job import KIND as TRAINING_KIND
from keras_operator.controllers import serving_reconciler, training_reconciler

log = structlog.get_logger("keras_operator.admission")

VALIDATORS: Mapping[str, Callable[[dict[str, Any]], object]] = MappingProxyType(
    {TRAINING_KIND: training_reconciler.validate, SERVICE_KIND: serving_reconciler.validate}
)
CHECKED_OPERATIONS = frozenset({"CREATE", "UPDATE"})


class BadReview(ValueError):
    """The request is not an AdmissionReview v1 (answered 400: only a misconfigured caller sends one)."""


def review(document: Any) -> dict[str, Any]:
    """The AdmissionReview (admission.k8s.io/v1) answering `document`, the one the API server sent."""
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise BadReview("the body must be an AdmissionReview")
    request = document.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid: required")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    problem, warning = judge(request)
    if problem is not None:
        response["allowed"] = False
        response["status"] = {"code": 422, "reason": "Invalid", "message": problem}
    if warning is not None:
        response["warnings"] = [warning]
    version = document.get("apiVersion") or "admission.k8s.io/v1"
    return {"apiVersion": version, "kind": "AdmissionReview", "response": response}


def judge(request: dict[str, Any]) -> tuple[str | None, str | None]:
    """-> (why the resource is refused, or None; a warning for the user, or None)."""
    kind = request.get("kind") or {}
    validator = VALIDATORS.get(kind.get("kind")) if kind.get("group") == GROUP else None
    obj = request.get("object")
    if validator is None or request.get("operation") not in CHECKED_OPERATIONS or not isinstance(obj, dict):
        return None, None  # not ours to judge (a configuration wider than ours, a DELETE)
    old = request.get("oldObject")
    if request.get("operation") == "UPDATE" and isinstance(old, dict) and old.get("spec") == obj.get("spec"):
        # Labels, annotations, finalizers: never blocked, even on a resource admitted before the webhook was.
        return None, None
    body = copy.deepcopy(obj)
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return "metadata: required", None
    # On a create the API server has given the name (generateName) but not yet the uid.
    meta.setdefault("namespace", request.get("namespace"))
    meta.setdefault("uid", request["uid"])
    try:
        validator(body)
    except InvalidResource as exc:
        return str(exc), None
    except Exception as exc:  # admitted: the reconcile judges it and reports; this must never block an apply
        log.exception("admission_check_failed", kind=kind.get("kind"), name=meta.get("name"))
        return None, f"the operator could not check this resource ({type(exc).__name__}); its status will say"
    return None, None
