"""spec.code on both kinds: exactly one source, not beside model.codeConfigMap, and the schema's CEL
rules say what the types say."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
import yaml

from helpers.manifests import ROOT, cel_errors, crd_schema
from keras_operator.api import jobfile
from keras_operator.api.common import CodeSpec
from keras_operator.api.parse import InvalidResource, parse
from keras_operator.api.training_job import KerasTrainingJob

PLURAL = {"KerasTrainingJob": "kerastrainingjobs", "KerasModelService": "kerasmodelservices"}


def _doc(kind: str) -> dict[str, Any]:
    name = "digits.yaml" if kind == "KerasTrainingJob" else "digits-service.yaml"
    return yaml.safe_load((ROOT / "examples" / name).read_text())


def _both_say(doc: dict[str, Any]) -> tuple[bool, bool]:
    """(the CRD accepts it, the types accept it)."""
    schema = crd_schema(PLURAL[doc["kind"]])  # cel_errors leaves out the transition rules, as on create
    schema_ok = not list(jsonschema.Draft4Validator(schema).iter_errors(doc)) and not cel_errors(doc, schema)
    try:
        parse(doc)
        types_ok = True
    except InvalidResource:
        types_ok = False
    return schema_ok, types_ok


GOOD = [
    {"configMap": "my-code"},
    {"uri": "pvc://models/code.tar.gz", "imports": ["layers", "pkg.losses"]},
    {"uri": "s3://bucket/code/"},
    {"path": "/app/code", "requirements": ["einops==0.8.0"]},
]
BAD = [
    ({}, "exactly one of configMap, uri, path"),
    ({"configMap": "my-code", "path": "/app"}, "exactly one of configMap, uri, path"),
    ({"path": "relative/code"}, "spec.code.path"),
    ({"path": "/"}, "spec.code.path"),
    ({"configMap": "Not_A_Name"}, "spec.code.configMap"),
    ({"uri": "pvc://Bad_Claim/x"}, "spec.code.uri"),
    ({"path": "/app", "imports": ["not-a-module"]}, "spec.code.imports[0]"),
    ({"path": "/app", "requirements": [""]}, "spec.code.requirements[0]"),
]


@pytest.mark.parametrize("kind", sorted(PLURAL))
@pytest.mark.parametrize("code", GOOD)
def test_a_code_source_is_accepted_by_schema_and_types(kind: str, code: dict[str, Any]) -> None:
    doc = _doc(kind)
    doc["spec"]["code"] = code
    assert _both_say(doc) == (True, True)


@pytest.mark.parametrize("kind", sorted(PLURAL))
@pytest.mark.parametrize(("code", "message"), BAD)
def test_a_bad_code_source_is_refused_by_schema_and_types(kind: str, code: dict[str, Any], message: str) -> None:
    doc = _doc(kind)
    doc["spec"]["code"] = code
    assert _both_say(doc) == (False, False)
    with pytest.raises(InvalidResource, match=re.escape(message)):
        parse(doc)


def test_code_and_the_short_form_together_are_refused() -> None:
    doc = _doc("KerasTrainingJob")
    doc["spec"]["model"] = {"callable": "models:build", "codeConfigMap": "code-a"}
    doc["spec"]["code"] = {"configMap": "code-b"}
    assert _both_say(doc) == (False, False)
    with pytest.raises(InvalidResource, match=r"code and model\.codeConfigMap"):
        parse(doc)
    del doc["spec"]["code"]
    assert _both_say(doc) == (True, True)


def test_the_short_form_reaches_the_trainer_as_code_config_map() -> None:
    doc = _doc("KerasTrainingJob")
    doc["metadata"]["uid"] = "u1"
    doc["spec"]["model"] = {"callable": "models:build", "codeConfigMap": "code-a"}
    job = parse(doc)
    assert isinstance(job, KerasTrainingJob)
    assert jobfile.from_resource(job).code == CodeSpec(config_map="code-a")
    doc["spec"]["model"] = {"callable": "models:build"}
    doc["spec"]["code"] = {"configMap": "code-a"}
    long_form = parse(doc)
    assert isinstance(long_form, KerasTrainingJob)
    assert jobfile.from_resource(long_form).code == CodeSpec(config_map="code-a")


def test_where_the_code_comes_from_changes_the_spec_hash_but_the_short_form_does_not() -> None:
    def spec_hash(model: dict[str, Any], code: dict[str, Any] | None) -> str:
        doc = _doc("KerasTrainingJob")
        doc["spec"]["model"] = model
        if code is not None:
            doc["spec"]["code"] = code
        job = parse(doc)
        assert isinstance(job, KerasTrainingJob)
        return jobfile.from_resource(job).spec_hash()

    plain = {"callable": "models:build"}
    hashes = {spec_hash(plain, None), spec_hash(plain, {"path": "/app/code"}), spec_hash(plain, {"path": "/app/b"})}
    assert len(hashes) == 3
    short = {"callable": "models:build", "codeConfigMap": "code-a"}
    # The short form hashes as it did before spec.code existed (model.codeConfigMap is in model).
    doc = _doc("KerasTrainingJob")
    doc["spec"]["model"] = short
    job = parse(doc)
    assert isinstance(job, KerasTrainingJob)
    trainer_job = jobfile.from_resource(job)
    assert trainer_job.code is not None
    assert trainer_job.spec_hash() == trainer_job.model_copy(update={"code": None}).spec_hash()
