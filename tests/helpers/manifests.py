"""Checks for generated manifests: real Kubernetes schemas, and our own CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSIONS = ("1.30", "1.33", kubernetes_validate.latest_version())


def validate_k8s(obj: dict[str, Any]) -> None:
    """Strict: a misspelt field fails instead of being ignored."""
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def crd(plural: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / f"{plural}.kerasoperator.dev.yaml").read_text())


def crd_schema(plural: str) -> dict[str, Any]:
    return crd(plural)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_cr(obj: dict[str, Any], plural: str) -> None:
    """OpenAPI v3.0 schemas use draft-4 semantics (boolean exclusiveMinimum)."""
    jsonschema.Draft4Validator(crd_schema(plural)).validate(obj)
    errors = cel_errors(obj, crd_schema(plural))
    if errors:
        raise jsonschema.ValidationError("; ".join(errors))


def cel_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule of the schema on obj, as the API server would."""
    errors: list[str] = []
    if obj is None:
        return errors
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # a transition rule: the API server evaluates it on updates only
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(obj)}):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                errors += cel_errors(obj[key], sub, f"{path}.{key}")
    if isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], f"{path}[{index}]")
    return errors
