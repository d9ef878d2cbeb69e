"""Checks for generated manifests: real Kubernetes schemas, and our own CRD schemas."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import cel
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


class CelDisagreement(AssertionError):
    """The two CEL implementations judged a rule differently: neither can be trusted to stand for the API server."""


@functools.cache
def compile_rule(rule: str) -> cel.Program:
    """The rule compiled as strictly as the API server's Go CEL parses it (ValueError if it would refuse it):
    `common-expression-language` refuses what Go refuses (an undefined escape like `\\.` in '...')."""
    return cel.compile(rule)


@functools.cache
def _lenient(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def rule_holds(rule: str, bindings: dict[str, Any]) -> bool:
    """Whether the rule holds with `self` (and `oldSelf`) bound to JSON values, as the API server judges it: an
    evaluation error or a result other than true refuses the object.

    Evaluated by the strict implementation, which parses like Go's CEL, and cross-checked with cel-python,
    which parses leniently and which these tests evaluated with before: neither is the API server's own CEL,
    so where they disagree the test fails (CelDisagreement) rather than trust either."""
    program = compile_rule(rule)  # a rule Go's CEL would refuse never reaches evaluation
    try:
        strict = program.execute(bindings) is True
    except Exception:  # any evaluation error refuses, as on the API server (a missing key raises KeyError here)
        strict = False
    try:
        lenient = _lenient(rule).evaluate({k: celpy.json_to_cel(v) for k, v in bindings.items()})
        lenient_holds = isinstance(lenient, celpy.celtypes.BoolType) and bool(lenient)
    except celpy.CELEvalError:
        lenient_holds = False
    if strict != lenient_holds:
        raise CelDisagreement(f"{rule!r} with {bindings!r}: strict CEL says {strict}, cel-python {lenient_holds}")
    return strict


def cel_errors(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Evaluate every x-kubernetes-validations rule of the schema on obj, as the API server would on create."""
    errors: list[str] = []
    if obj is None:
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            compile_rule(rule["rule"])  # the API server compiles it with the CRD, though it runs on updates only
            continue
        if not rule_holds(rule["rule"], {"self": obj}):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(obj, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in obj:
                errors += cel_errors(obj[key], sub, f"{path}.{key}")
        if isinstance(schema.get("additionalProperties"), dict):
            for key, value in obj.items():
                errors += cel_errors(value, schema["additionalProperties"], f"{path}[{key!r}]")
    if isinstance(obj, list) and "items" in schema:
        for index, item in enumerate(obj):
            errors += cel_errors(item, schema["items"], f"{path}[{index}]")
    return errors
