"""Turns user YAML (or an object from the API) into typed resources, with errors that name the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from keras_operator.api import catalogue
from keras_operator.api.base import describe_errors
from keras_operator.api.common import API_VERSION
from keras_operator.api.limits import MAX_DEPTH, MAX_DOCUMENT_BYTES, TooLarge, check_tree, json_size, load_yaml
from keras_operator.api.model_service import KIND as SERVING_KIND
from keras_operator.api.model_service import KerasModelService, KerasModelServiceSpec
from keras_operator.api.training_job import KIND as TRAINING_KIND
from keras_operator.api.training_job import KerasTrainingJob, KerasTrainingJobSpec

Resource = KerasTrainingJob | KerasModelService
KINDS: Mapping[str, type[KerasTrainingJob] | type[KerasModelService]] = MappingProxyType(
    {TRAINING_KIND: KerasTrainingJob, SERVING_KIND: KerasModelService}
)


M = TypeVar("M", bound=BaseModel)


class InvalidResource(Exception):
    """The resource breaks the API; str() names each offending field."""


def read_documents(path: str | Path) -> list[dict[str, Any]]:
    """The mappings in a YAML or JSON file, each within the bounds of api/limits.py; InvalidResource
    (one line, naming the document and the field, or the line and column) for anything else."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise InvalidResource(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidResource(f"{path}: larger than {MAX_DOCUMENT_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidResource(f"{path}: not UTF-8 text (byte {exc.start}); is it a binary file?") from exc
    docs: list[Any] | None = None
    # A JSON document (what the operator writes for the trainer) is read as JSON: PyYAML's YAML 1.1
    # would take numbers like 1e-05 for strings.
    if text.lstrip().startswith("{"):
        try:
            docs = [json.loads(text)]
        except RecursionError as exc:
            raise InvalidResource(f"{path}: nested more than {MAX_DEPTH} levels deep") from exc
        except ValueError:
            pass  # a YAML flow mapping, not JSON
    if docs is None:
        try:
            docs = [d for d in load_yaml(text) if d is not None]
        except TooLarge as exc:
            raise InvalidResource(f"{path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise InvalidResource(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    for index, doc in enumerate(docs):
        name = f"{path}: document {index + 1}" if len(docs) > 1 else str(path)
        if not isinstance(doc, dict):
            raise InvalidResource(f"{name}: each document must be a mapping, got {type(doc).__name__}")
        try:
            check_tree(doc)
        except TooLarge as exc:
            raise InvalidResource(f"{name}: {exc}") from exc
        if json_size(doc) > MAX_DOCUMENT_BYTES:
            raise InvalidResource(
                f"{name}: larger than {MAX_DOCUMENT_BYTES // 1024} KiB once its YAML aliases are expanded"
            )
    return docs


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line error as one line: where, then what."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"character {exc.position + 1}: {exc.reason} ({exc.character!r})"
    return " ".join(str(exc).split())


def parse(obj: dict[str, Any]) -> Resource:
    kind = obj.get("kind")
    if obj.get("apiVersion") != API_VERSION:
        raise InvalidResource(f"apiVersion: expected {API_VERSION}, got {obj.get('apiVersion')!r}")
    cls = KINDS.get(str(kind))
    if cls is None:
        raise InvalidResource(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return _validate(cls, obj, "")


def parse_training_spec(spec: Any) -> KerasTrainingJobSpec:
    return _validate(KerasTrainingJobSpec, spec, "spec")


def parse_serving_spec(spec: Any) -> KerasModelServiceSpec:
    return _validate(KerasModelServiceSpec, spec, "spec")


def _validate(cls: type[M], obj: Any, prefix: str) -> M:
    """`cls` from `obj`, or InvalidResource, whatever is wrong with obj: the reconcile loop turns
    InvalidResource into InvalidSpec, any other exception would have kopf retry the object forever."""
    try:
        check_tree(obj, (prefix,) if prefix else ())
        return _checked(cls.model_validate(obj))
    except TooLarge as exc:
        raise InvalidResource(str(exc)) from exc
    except ValidationError as exc:
        raise InvalidResource(describe_errors(exc, prefix=prefix, model=cls)) from exc
    except InvalidResource:
        raise
    except Exception as exc:  # a bug of ours, still reported on the object, never a crash
        raise InvalidResource(f"{prefix or '<root>'}: cannot be read ({type(exc).__name__}: {exc})") from exc


def _checked(resource: Any) -> Any:
    """Layer types and arguments, optimizer, loss, metrics: what the trainer's Keras would refuse."""
    if problems := catalogue.problems(resource):
        raise InvalidResource("; ".join(problems))
    return resource
