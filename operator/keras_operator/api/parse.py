"""Turns user YAML (or an object from the API) into typed resources, with errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from keras_operator.api import catalogue
from keras_operator.api.base import describe_errors
from keras_operator.api.common import API_VERSION
from keras_operator.api.serving import KIND as SERVING_KIND
from keras_operator.api.serving import KerasModelService, KerasModelServiceSpec
from keras_operator.api.training import KIND as TRAINING_KIND
from keras_operator.api.training import KerasTrainingJob, KerasTrainingJobSpec

Resource = KerasTrainingJob | KerasModelService
KINDS: dict[str, type[KerasTrainingJob] | type[KerasModelService]] = {
    TRAINING_KIND: KerasTrainingJob,
    SERVING_KIND: KerasModelService,
}


class InvalidResource(Exception):
    """The resource breaks the API; str() names each offending field."""


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
        # A JSON document (what the operator writes for the trainer) is read as JSON: PyYAML's YAML 1.1
        # would take numbers like 1e-05 for strings.
        if text.lstrip().startswith("{"):
            try:
                return _mappings(path, [json.loads(text)])
            except ValueError:
                pass  # a YAML flow mapping, not JSON
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as exc:
        raise InvalidResource(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidResource(f"{path} is not valid YAML: {exc}") from exc
    return _mappings(path, docs)


def _mappings(path: str | Path, docs: list[Any]) -> list[dict[str, Any]]:
    for doc in docs:
        if not isinstance(doc, dict):
            raise InvalidResource(f"{path}: each document must be a mapping, got {type(doc).__name__}")
    return docs


def parse(obj: dict[str, Any]) -> Resource:
    kind = obj.get("kind")
    if obj.get("apiVersion") != API_VERSION:
        raise InvalidResource(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    cls = KINDS.get(str(kind))
    if cls is None:
        raise InvalidResource(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    try:
        return _checked(cls.model_validate(obj))
    except ValidationError as exc:
        raise InvalidResource(describe_errors(exc, prefix="")) from exc


def parse_training_spec(spec: Any) -> KerasTrainingJobSpec:
    try:
        return _checked(KerasTrainingJobSpec.model_validate(spec))
    except ValidationError as exc:
        raise InvalidResource(describe_errors(exc, prefix="spec")) from exc


def parse_serving_spec(spec: Any) -> KerasModelServiceSpec:
    try:
        return KerasModelServiceSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidResource(describe_errors(exc, prefix="spec")) from exc


def _checked(resource: Any) -> Any:
    """Layer types and arguments, optimizer, loss, metrics: what the trainer's Keras would refuse."""
    if problems := catalogue.problems(resource):
        raise InvalidResource("; ".join(problems))
    return resource
