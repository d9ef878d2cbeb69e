"""The CRDs are generated from the API types; examples validate against them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster.crdcheck import rules
from helpers.manifests import ROOT, CelDisagreement, cel_errors, compile_rule, crd, crd_schema, rule_holds, validate_k8s
from keras_operator import crdgen
from keras_operator.api.parse import InvalidResource, parse

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
PLURALS = {"KerasTrainingJob": "kerastrainingjobs", "KerasModelService": "kerasmodelservices"}


def create_schema(plural: str) -> dict[str, Any]:
    """The schema as the API server applies it on create: without the transition rules (`oldSelf`),
    which it evaluates on updates only (tests/operator/api/test_immutable_spec.py evaluates those)."""

    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: strip(v) for k, v in node.items() if k != "x-kubernetes-validations"}
        rules = [r for r in node.get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]
        return {**out, "x-kubernetes-validations": rules} if rules else out

    return strip(crd_schema(plural))


def validate_on_create(obj: dict[str, Any], plural: str) -> None:
    jsonschema.Draft4Validator(create_schema(plural)).validate(obj)
    errors = cel_errors(obj, create_schema(plural))
    assert not errors, errors


def test_committed_crds_match_the_types() -> None:
    generated = crdgen.all_crds()
    committed = {p.name for p in (ROOT / "crds").glob("*.yaml")}
    assert committed == set(generated), "run: python -m keras_operator.crdgen"
    for name, obj in generated.items():
        assert (ROOT / "crds" / name).read_text() == crdgen.render(obj), (
            f"crds/{name} is out of date with operator/keras_operator/api: run python -m keras_operator.crdgen"
        )


CRD_FILES = sorted((ROOT / "crds").glob("*.yaml")) + sorted(
    (ROOT / "charts" / "keras-operator" / "crds").glob("*.yaml")
)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_rule_compiles_as_the_api_server_compiles_it(path: Path) -> None:
    """Go's CEL refuses a rule cel-python takes (a `\\.` in a single-quoted string), and with it the whole
    CRD: every rule of both copies must pass the strict parser."""
    found = list(rules(yaml.safe_load(path.read_text())))
    assert len(found) >= 10, "the CRD has lost its rules"
    for where, rule in found:
        try:
            compile_rule(rule["rule"])
        except ValueError as exc:
            pytest.fail(f"{path.name} {where}: {rule['rule']!r} would refuse the CRD: {exc}")


def test_strict_cel_refuses_what_the_api_server_refused() -> None:
    """The rule a real kube-apiserver refused (`Syntax error: token recognition error at: ''^pvc://...(\\.'`):
    the strict parser refuses it too, and takes the same regex written as a raw string."""
    bad = r"self.matches('^pvc://[a-z0-9]+(\.[a-z0-9]+)*$')"
    with pytest.raises(ValueError, match="token recognition error"):
        compile_rule(bad)
    good = r"self.matches(r'^pvc://[a-z0-9]+(\.[a-z0-9]+)*$')"
    compile_rule(good)
    assert not cel_errors("pvc://a.b", {"x-kubernetes-validations": [{"rule": good, "message": "m"}]})
    assert cel_errors("pvc://a..b", {"x-kubernetes-validations": [{"rule": good, "message": "m"}]}) == ["<root>: m"]
    with pytest.raises(ValueError, match="Syntax error"):
        cel_errors("pvc://a.b", {"x-kubernetes-validations": [{"rule": bad, "message": "m"}]})


@pytest.mark.parametrize("plural", sorted(PLURALS.values()))
def test_the_name_rule_names_its_field(plural: str) -> None:
    """Without fieldPath a real API server answers `<nil>: Invalid value: "object": metadata.name must be …`;
    the path must lead into the schema (it checks), so metadata declares name."""
    schema = crd_schema(plural)
    (rule,) = schema["x-kubernetes-validations"]
    assert rule["fieldPath"] == ".metadata.name"
    assert rule["reason"] == "FieldValueInvalid"
    assert schema["properties"]["metadata"] == {"type": "object", "properties": {"name": {"type": "string"}}}
    name = "n" * 54
    assert cel_errors({"metadata": {"name": name}, "spec": {}}, {"x-kubernetes-validations": [rule]}) == [
        "<root>: metadata.name must be at most 53 characters"
    ]
    assert cel_errors({"metadata": {"name": name[:53]}}, {"x-kubernetes-validations": [rule]}) == []


def test_crd_is_valid_kubernetes() -> None:
    validate_k8s(crd("kerastrainingjobs"))
    validate_k8s(crd("kerasmodelservices"))


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}")
    if "items" in schema:
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("plural", sorted(PLURALS.values()))
def test_schema_is_structural_and_documented(plural: str) -> None:
    for path, node in _walk(crd_schema(plural)["properties"]["spec"], "spec"):
        has_type = (
            "type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        )
        assert has_type, f"{path} has no type (not a structural schema)"
        assert "$ref" not in node, path
        assert "title" not in node, path
        if not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description for kubectl explain"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_crd_and_types(example: Path) -> None:
    for doc in yaml.safe_load_all(example.read_text()):
        if doc["kind"] not in PLURALS:  # a ConfigMap of code beside the resources
            validate_k8s(doc)
            continue
        validate_on_create(doc, PLURALS[doc["kind"]])
        parse(doc)  # and the operator's own types accept it


def _digits() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["model"].update(uri="s3://b/m.keras"), "model"),
        (lambda d: d["spec"]["model"].pop("inputShape"), "model"),
        (lambda d: d["spec"]["data"]["train"].update(synthetic={"inputShape": [4]}), "data.train"),
        (lambda d: d["spec"]["data"].update(validationSplit=0.1), "data"),
        (lambda d: d["spec"]["training"].update(epochs=0), "training.epochs"),
        (lambda d: d["spec"]["training"].update(batchSize="big"), "training.batchSize"),
        (lambda d: d["spec"].update(backend="theano"), "backend"),
        (lambda d: d["spec"]["resources"].update(memory="lots"), "resources.memory"),
        (lambda d: d["spec"]["output"].update(formats=["onnx"]), "output.formats"),
        (lambda d: d["spec"]["model"]["layers"][0].pop("type"), "model.layers[0].type"),
    ],
)
def test_bad_specs_are_rejected_by_schema_and_types(mutate: Any, field: str) -> None:
    doc = _digits()
    mutate(doc)
    schema = create_schema("kerastrainingjobs")
    schema_errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc)) + cel_errors(doc, schema)
    assert schema_errors, "the CRD schema accepted an invalid spec"
    with pytest.raises(InvalidResource, match=re.escape(f"spec.{field}")):
        parse(doc)


def test_cel_rules_agree_with_python_rules() -> None:
    """Each CEL rule and its Python twin say the same about the same objects."""
    schema = create_schema("kerastrainingjobs")["properties"]["spec"]["properties"]["model"]
    for model in (
        {"uri": "a"},
        {"uri": "a", "callable": "m:f"},
        {},
        {"layers": [{"type": "Dense", "units": 2}]},
        {"layers": [{"type": "Dense", "units": 2}], "inputShape": [3]},
    ):
        cel_ok = not cel_errors(model, schema)
        doc = _digits()
        doc["spec"]["model"] = model
        try:
            parse(doc)
            py_ok = True
        except InvalidResource:
            py_ok = False
        assert cel_ok == py_ok, model


def _service() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "digits-service.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["model"].update(uri="s3://b/m.keras"), "model"),
        (lambda d: d["spec"]["autoscaling"].update(minReplicas=5, maxReplicas=2), "autoscaling"),
        (lambda d: d["spec"]["server"].update(port=80), "server.port"),
        (lambda d: d["spec"]["server"]["batching"].update(maxBatchSize=0), "server.batching.maxBatchSize"),
        (lambda d: d["spec"].update(replicas=-1), "replicas"),
        (lambda d: d["spec"].update(modelName="no spaces"), "modelName"),
        (lambda d: d["spec"]["server"].update(handler="text_handler"), "server.handler"),
        (lambda d: d["spec"]["server"].update(handler="text handler:Tokens"), "server.handler"),
        (lambda d: d["spec"]["server"].update(handler="text_handler:Tokens.pre"), "server.handler"),
    ],
)
def test_bad_service_specs_are_rejected_by_schema_and_types(mutate: Any, field: str) -> None:
    doc = _service()
    mutate(doc)
    schema = create_schema("kerasmodelservices")
    assert list(jsonschema.Draft4Validator(schema).iter_errors(doc)) + cel_errors(doc, schema)
    with pytest.raises(InvalidResource, match=re.escape(f"spec.{field}")):
        parse(doc)


def test_scale_subresource() -> None:
    version = crd("kerasmodelservices")["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


@pytest.mark.parametrize("plural", sorted(PLURALS.values()))
def test_printer_columns_are_distinct(plural: str) -> None:
    names = [c["name"] for c in crd(plural)["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert len(names) == len(set(names)), names


def test_workers_columns_show_a_multi_worker_training() -> None:
    columns = {c["name"]: c for c in crd("kerastrainingjobs")["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Workers"]["jsonPath"] == ".status.workers.total"
    assert columns["Ready Workers"]["jsonPath"] == ".status.workers.ready"
    status = crd_schema("kerastrainingjobs")["properties"]["status"]["properties"]["workers"]
    assert set(status["properties"]) == {"ready", "total", "lastFailure"}
    assert set(status["properties"]["lastFailure"]["properties"]) == {"index", "pod", "reason", "message"}


SERVICE_SPECS: list[dict[str, Any]] = [
    {"model": {"uri": "base", "versionPolicy": {"latest": 2}}},
    {"model": {"uri": "base", "versionPolicy": {"latest": 2, "all": True}}},
    {"model": {"uri": "base", "versionPolicy": {"specific": [1, 2]}, "versionLabels": {"stable": 1}}},
    {"model": {"uri": "base", "versionPolicy": {"specific": [1, 2]}, "versionLabels": {"canary": 3}}},
    {"model": {"uri": "base", "versionLabels": {"Stable": 1}}},
    {"model": {"uri": "base", "versionLabels": {"a-b_c": 1}}},
    {"model": {"trainingJobRef": {"name": "t"}, "versionPolicy": {"all": True}}},
    {"model": {"trainingJobRef": {"name": "t"}, "versionLabels": {"stable": 1}}},
    {"model": {"uri": "m"}, "server": {"batching": {"maxBatchSize": 16, "allowedBatchSizes": [4, 16]}}},
    {"model": {"uri": "m"}, "server": {"batching": {"maxBatchSize": 16, "allowedBatchSizes": [16, 4]}}},
    {"model": {"uri": "m"}, "server": {"batching": {"maxBatchSize": 16, "allowedBatchSizes": [4, 8]}}},
    {"model": {"uri": "m"}, "server": {"batching": {"maxBatchSize": 16, "allowedBatchSizes": [4, 4, 16]}}},
    {"model": {"uri": "m"}, "server": {"batching": {"allowedBatchSizes": [8, 32]}}},
    {"model": {"uri": "m"}, "server": {"batching": {"maxBatchSize": 16, "allowedBatchSizes": [4, 32]}}},
    {"model": {"uri": "m"}, "canary": {"model": {"version": 2}}},
    {"model": {"trainingJobRef": {"name": "t"}}, "canary": {"model": {"version": 2}}},
    {"model": {"uri": "m"}, "canary": {"model": {"uri": "c", "version": 2}}},
    {"model": {"uri": "m"}, "canary": {"model": {"trainingJobRef": {"name": "t"}}, "trafficPercent": 30}},
]


@pytest.mark.parametrize("spec", SERVICE_SPECS)
def test_cel_rules_agree_with_python_rules_for_services(spec: dict[str, Any]) -> None:
    """The versions, batching and canary rules say the same in CEL (the API server) and in Python."""
    schema = create_schema("kerasmodelservices")["properties"]["spec"]
    cel_ok = not cel_errors(spec, schema)
    doc = {"apiVersion": "kerasoperator.dev/v1alpha1", "kind": "KerasModelService", "metadata": {"name": "s"}}
    try:
        parse({**doc, "spec": spec})
        py_ok = True
    except InvalidResource:
        py_ok = False
    assert cel_ok == py_ok, spec


def test_generator_refuses_transition_rules_inside_sets() -> None:
    """The API server pairs old and new items for CEL only in map lists: oldSelf below a set refuses the CRD."""
    items = {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}]}
    in_set = {"type": "array", "x-kubernetes-list-type": "set", "items": items}
    with pytest.raises(ValueError, match=re.escape("spec.tags[]: transition rule inside a list")):
        crdgen.check_transition_rules({"type": "object", "properties": {"tags": in_set}}, "spec")


def test_regexes_go_into_rules_as_raw_strings() -> None:
    from keras_operator.api.base import cel_raw_string
    from keras_operator.api.common import PVC_URI

    compile_rule(f"self.matches({cel_raw_string(PVC_URI)})")
    with pytest.raises(ValueError, match="raw string"):
        cel_raw_string("it's")  # a raw string cannot hold its own quote: refused rather than a broken rule


@pytest.mark.parametrize(
    ("rule", "value"),
    [
        # Go's CEL has no double + int: an error, so refused; cel-python adds them.
        ("self + 1 == 2", 1.0),
        # Go's CEL counts a string's code points (1); the strict library counts UTF-8 bytes (2). No rule of
        # ours takes the size of a string that may hold non-ASCII (metadata.name cannot).
        ("self.size() == 1", "é"),
    ],
)
def test_where_the_two_cel_implementations_disagree_the_test_fails(rule: str, value: Any) -> None:
    with pytest.raises(CelDisagreement):
        rule_holds(rule, {"self": value})


def test_crdgen_answers_help_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` was taken for a folder: it wrote the CRDs into ./--help."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        crdgen.main(["--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m keras_operator.crdgen")
    assert list(tmp_path.iterdir()) == []


def test_crdgen_writes_to_the_folders_given(tmp_path: Path) -> None:
    assert crdgen.main([str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(crdgen.all_crds())
