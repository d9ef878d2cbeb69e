"""Generates the CRDs in crds/ from the API types (python -m keras_operator.crdgen).

pydantic writes JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. This module
inlines references, drops nulls and titles, and translates the few constructs that differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from keras_operator.api import model_service, training_job
from keras_operator.api.common import GROUP, VERSION

ROOT = Path(__file__).resolve().parents[2]  # operator/keras_operator/crdgen.py -> the repository
# The chart ships byte-identical copies: `helm install` creates the CRDs, `kubectl apply -f crds/` too.
CRD_DIRS = (ROOT / "crds", ROOT / "charts" / "keras-operator" / "crds")


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn a pydantic JSON schema into a Kubernetes structural schema."""
    defs = schema.get("$defs", {})

    def convert(node: dict[str, Any]) -> dict[str, Any]:
        node = dict(node)
        if "$ref" in node:
            target = defs[node.pop("$ref").split("/")[-1]]
            merged = convert(target)
            if "description" in node:  # the field's own text beats the type's
                merged["description"] = node["description"]
            extra = {k: v for k, v in node.items() if k not in ("description", "default")}
            merged.update(convert(extra) if extra else {})
            return merged
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
            if len(branches) == 1:
                base = convert(branches[0])
                base.update(convert(node))
                return base
            node["anyOf"] = branches
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "$defs"):
                continue
            if key == "default" and value is None:
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "exclusiveMinimum":
                out["minimum"], out["exclusiveMinimum"] = value, True
            elif key == "exclusiveMaximum":
                out["maximum"], out["exclusiveMaximum"] = value, True
            elif key == "properties":
                out["properties"] = {name: convert(sub) for name, sub in value.items()}
            elif key == "description":
                out[key] = " ".join(value.split())
            elif key == "items":
                out["items"] = convert(value)
            elif key == "additionalProperties":
                if value is True:
                    out["x-kubernetes-preserve-unknown-fields"] = True
                elif isinstance(value, dict):
                    out["additionalProperties"] = convert(value)
            elif key == "anyOf":
                out["anyOf"] = [convert(b) for b in value]
            else:
                out[key] = value
        if out.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        elif "anyOf" in out and out.get("x-kubernetes-preserve-unknown-fields"):
            out.pop("anyOf")  # open values: pydantic checks the branches, the schema cannot
        if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
            out["x-kubernetes-preserve-unknown-fields"] = True
        return _ordered(out)

    return convert(schema)


_FIRST = ("type", "description", "required", "properties")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Readable YAML: what a field is before its details."""
    keys = [k for k in _FIRST if k in node] + sorted(k for k in node if k not in _FIRST)
    return {k: node[k] for k in keys}


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def check_transition_rules(schema: dict[str, Any], path: str = "", in_atomic_list: bool = False) -> None:
    """Refuse a rule with oldSelf inside a list the API server cannot pair old and new items of (any
    list but x-kubernetes-list-type map: CEL does not pair the items of a set either): it would reject
    the CRD, so fail when generating it."""
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and in_atomic_list:
            raise ValueError(f"{path or '<root>'}: transition rule inside a list without x-kubernetes-list-type map")
    for key, sub in (schema.get("properties") or {}).items():
        check_transition_rules(sub, f"{path}.{key}", in_atomic_list)
    if isinstance(schema.get("additionalProperties"), dict):
        check_transition_rules(schema["additionalProperties"], f"{path}{{}}", in_atomic_list)
    if "items" in schema:
        atomic = schema.get("x-kubernetes-list-type") != "map"
        check_transition_rules(schema["items"], f"{path}[]", in_atomic_list or atomic)


def object_schema(spec: type[BaseModel], status: type[BaseModel], description: str) -> dict[str, Any]:
    spec_schema = structural(spec.model_json_schema(by_alias=True, mode="validation"))
    check_transition_rules(spec_schema, "spec")
    status_schema = structural(status.model_json_schema(by_alias=True, mode="serialization"))
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            # Declared so the rule below may name .metadata.name as its fieldPath: the API server checks a
            # fieldPath against the schema. At the root, metadata may declare name and generateName only.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec_schema,
            "status": status_schema,
        },
        # Jobs, Deployments, Services and their pods derive their names and labels from this one.
        # fieldPath and reason make the API server name the field (`metadata.name: Invalid value`) instead
        # of `<nil>: Invalid value: "object"`. A rule at the root may read metadata.name and generateName only.
        "x-kubernetes-validations": [
            {
                "rule": "self.metadata.name.size() <= 53",
                "message": "metadata.name must be at most 53 characters",
                "fieldPath": ".metadata.name",
                "reason": "FieldValueInvalid",
            }
        ],
    }


def training_job_crd() -> dict[str, Any]:
    schema = object_schema(
        training_job.KerasTrainingJobSpec,
        training_job.KerasTrainingJobStatus,
        "KerasTrainingJob trains a Keras model in a batch/v1 Job running the generic Keras trainer.",
    )
    return crd(
        kind=training_job.KIND,
        plural=training_job.PLURAL,
        short_names=["ktj"],
        schema=schema,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Epoch", "type": "integer", "jsonPath": ".status.progress.epoch"},
            {"name": "Epochs", "type": "integer", "jsonPath": ".status.progress.epochs", "priority": 1},
            {"name": "Percent", "type": "integer", "jsonPath": ".status.progress.percent"},
            {"name": "Remaining", "type": "integer", "jsonPath": ".status.progress.secondsRemaining", "priority": 1},
            # A training on several workers: how many run now, of how many (empty for one pod).
            {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.total", "priority": 1},
            {"name": "Ready Workers", "type": "integer", "jsonPath": ".status.workers.ready", "priority": 1},
            {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss"},
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.metrics.accuracy"},
            {"name": "Model", "type": "string", "jsonPath": ".status.modelUri", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def model_service_crd() -> dict[str, Any]:
    schema = object_schema(
        model_service.KerasModelServiceSpec,
        model_service.KerasModelServiceStatus,
        "KerasModelService serves a saved Keras model over TF Serving REST and the Open Inference Protocol.",
    )
    return crd(
        kind=model_service.KIND,
        plural=model_service.PLURAL,
        short_names=["kms"],
        schema=schema,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas", "priority": 1},
            {"name": "URL", "type": "string", "jsonPath": ".status.url"},
            {"name": "Canary", "type": "string", "jsonPath": ".status.canary.state"},
            {"name": "Canary %", "type": "integer", "jsonPath": ".status.canary.canary.trafficPercent"},
            {"name": "Canary Errors", "type": "number", "jsonPath": ".status.canary.canary.errorRate", "priority": 1},
            {"name": "Stable Errors", "type": "number", "jsonPath": ".status.canary.stable.errorRate", "priority": 1},
            {"name": "Model", "type": "string", "jsonPath": ".status.modelUri", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        # kubectl scale, HPAs and KEDA work through /scale.
        scale={
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    )


def crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    schema: dict[str, Any],
    columns: list[dict[str, Any]],
    scale: dict[str, str] | None = None,
) -> dict[str, Any]:
    subresources: dict[str, Any] = {"status": {}}
    if scale:
        subresources["scale"] = scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "keras-operator", "app.kubernetes.io/part-of": "keras-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["keras"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for everything this project defines."""
    crds = [training_job_crd(), model_service_crd()]
    return {f"{c['metadata']['name']}.yaml": c for c in crds}


def render(obj: dict[str, Any]) -> str:
    header = "# Generated from operator/keras_operator/api by `python -m keras_operator.crdgen`; do not edit.\n"
    return header + yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_operator.crdgen",
        description="Write the CRDs generated from the API types (default: crds/ and the chart's crds/).",
    )
    parser.add_argument("folders", nargs="*", type=Path, help="folders to write the CRDs to")
    dirs = parser.parse_args(argv).folders or list(CRD_DIRS)
    for out in dirs:
        out.mkdir(parents=True, exist_ok=True)
        for name, obj in all_crds().items():
            (out / name).write_text(render(obj))
            print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
