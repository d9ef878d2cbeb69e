"""cluster/crdcheck.py: what the API server checks when a CRD is created. Our CRDs pass; each check is shown
refusing a CRD broken in exactly the way it looks for, so none of them can pass by checking nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from cluster.crdcheck import crd_problems, field_path_problem, rules
from helpers.manifests import ROOT, crd

CRD = dict[str, Any]


def _root(c: CRD) -> dict[str, Any]:
    return c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _spec(c: CRD) -> dict[str, Any]:
    return _root(c)["properties"]["spec"]


def _training(c: CRD) -> dict[str, Any]:
    return _spec(c)["properties"]["training"]


def _add_rule(node: dict[str, Any], **rule: Any) -> None:
    node.setdefault("x-kubernetes-validations", []).append({"message": "m", **rule})


def _set(node_of: Callable[[CRD], dict[str, Any]], **values: Any) -> Callable[[CRD], None]:
    return lambda c: node_of(c).update(values)


def _prop(c: CRD, **schema: Any) -> dict[str, Any]:
    """A new property of spec.training with this schema."""
    _training(c)["properties"]["extra"] = schema
    return _training(c)["properties"]["extra"]


BROKEN: list[tuple[str, Callable[[CRD], None], str]] = [
    # CEL: the defect a real server found (Go's CEL refuses `\.` in a single-quoted string).
    (
        "single-quoted regex escape",
        lambda c: _add_rule(_training(c), rule=r"self.optimizer.name.matches('^a\.b$')"),
        "compilation failed",
    ),
    ("rule that does not parse", lambda c: _add_rule(_training(c), rule="self.epochs >"), "compilation failed"),
    ("empty rule", lambda c: _add_rule(_training(c), rule="  "), "rule is not specified"),
    ("unknown reason", lambda c: _add_rule(_training(c), rule="true", reason="Bad"), "reason: 'Bad' is not one of"),
    (
        "fieldPath to no field",
        lambda c: _add_rule(_training(c), rule="true", fieldPath=".nope"),
        "must be a valid path",
    ),
    (
        "fieldPath without its leading dot",
        lambda c: _add_rule(_training(c), rule="true", fieldPath="epochs"),
        "must be a valid path",
    ),
    (
        "root fieldPath into undeclared metadata",
        lambda c: _root(c)["properties"].update(metadata={"type": "object"}),
        "'.metadata.name' must be a valid path",
    ),
    ("empty message", lambda c: _add_rule(_training(c), rule="true", message=" "), "must be non-empty"),
    (
        "multi-line rule without message",
        lambda c: _training(c).setdefault("x-kubernetes-validations", []).append({"rule": "true ||\nfalse"}),
        "must be specified if rule contains line breaks",
    ),
    (
        "selection of an undefined field (a typo)",
        lambda c: _add_rule(_training(c), rule="self.epoch > 0"),
        "undefined field 'epoch'",
    ),
    (
        "root rule reading metadata.labels",
        lambda c: _add_rule(_root(c), rule="size(self.metadata.labels) < 3"),
        "metadata.name and generateName only",
    ),
    (
        "oldSelf inside an atomic list",
        lambda c: (
            _add_rule(
                _prop(c, type="array", items={"type": "object", "properties": {"a": {"type": "string"}}}),
                rule="true",
            )
            or _add_rule(_training(c)["properties"]["extra"]["items"], rule="self == oldSelf")
        ),
        "oldSelf cannot be used on the uncorrelatable portion",
    ),
    (
        "oldSelf inside a set",
        lambda c: _add_rule(
            _prop(c, type="array", **{"x-kubernetes-list-type": "set"}, items={"type": "string"})["items"],
            rule="self == oldSelf",
        ),
        "oldSelf cannot be used on the uncorrelatable portion",
    ),
    # Structural schema.
    ("a field without a type", lambda c: _prop(c, description="no type"), "must not be empty for specified object"),
    ("items without a type", lambda c: _prop(c, type="array", items={}), "must not be empty for specified array items"),
    ("array without items", lambda c: _prop(c, type="array"), "items: must be specified"),
    ("type null", lambda c: _prop(c, type="null"), "'null' is not one of"),
    (
        "properties with additionalProperties",
        lambda c: _prop(
            c, type="object", properties={"a": {"type": "string"}}, additionalProperties={"type": "string"}
        ),
        "mutual exclusive",
    ),
    ("additionalProperties at the root", _set(_root, additionalProperties={"type": "string"}), "at the root"),
    ("root not an object", _set(_root, type="array", items={"type": "string"}), "must be object at the root"),
    ("$ref", lambda c: _prop(c, type="object", **{"$ref": "#/x"}), "$ref is not supported"),
    ("uniqueItems", lambda c: _prop(c, type="array", items={"type": "string"}, uniqueItems=True), "uniqueItems"),
    (
        "preserve-unknown-fields false",
        lambda c: _prop(c, type="object", **{"x-kubernetes-preserve-unknown-fields": False}),
        "must be true or undefined",
    ),
    (
        "int-or-string with preserve-unknown-fields",
        lambda c: _prop(c, **{"x-kubernetes-int-or-string": True, "x-kubernetes-preserve-unknown-fields": True}),
        "must be false if x-kubernetes-int-or-string",
    ),
    (
        "a type under anyOf",
        lambda c: _prop(c, type="string", anyOf=[{"type": "string"}, {"pattern": "a"}]),
        "anyOf[0].type: must be undefined",
    ),
    (
        "a junctor naming a field the schema lacks",
        lambda c: _prop(c, type="object", properties={"a": {"type": "string"}}, oneOf=[{"properties": {"b": {}}}]),
        "corresponding property",
    ),
    ("a pattern that does not compile", lambda c: _prop(c, type="string", pattern="(a"), "valid regular expression"),
    # metadata at the root may restrict name and generateName only.
    (
        "root metadata restricting labels",
        lambda c: _root(c)["properties"]["metadata"]["properties"].update(labels={"type": "object"}),
        "must not specify anything other than name and generateName",
    ),
    (
        "root metadata with a description",
        lambda c: _root(c)["properties"]["metadata"].update(description="the metadata"),
        "must not specify anything other than name and generateName",
    ),
    (
        "kind not a string",
        lambda c: _root(c)["properties"]["kind"].update(type="integer"),
        "kind].type: must be string",
    ),
    # List and map types.
    (
        "unknown list type",
        lambda c: _prop(c, type="array", items={"type": "string"}, **{"x-kubernetes-list-type": "bag"}),
        "'bag' must be atomic, set or map",
    ),
    (
        "list type on an object",
        lambda c: _prop(
            c, type="object", **{"x-kubernetes-list-type": "set", "x-kubernetes-preserve-unknown-fields": True}
        ),
        "must be array if x-kubernetes-list-type",
    ),
    (
        "unknown map type",
        lambda c: _prop(
            c, type="object", **{"x-kubernetes-map-type": "deep", "x-kubernetes-preserve-unknown-fields": True}
        ),
        "'deep' must be granular or atomic",
    ),
    (
        "list-map keys without list type map",
        lambda c: _prop(
            c,
            type="array",
            items={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}},
            **{"x-kubernetes-list-map-keys": ["name"]},
        ),
        "must be map if x-kubernetes-list-map-keys",
    ),
    (
        "list map without keys",
        lambda c: _prop(
            c,
            type="array",
            items={"type": "object", "properties": {"name": {"type": "string"}}},
            **{"x-kubernetes-list-type": "map"},
        ),
        "must not be empty if x-kubernetes-list-type is map",
    ),
    (
        "list-map key neither required nor defaulted",
        lambda c: _prop(
            c,
            type="array",
            items={"type": "object", "properties": {"name": {"type": "string"}}},
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
        "must have a default or be required",
    ),
    (
        "list-map key not a scalar",
        lambda c: _prop(
            c,
            type="array",
            items={
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            },
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
        "a list-map key must be a scalar",
    ),
    (
        "list-map key not a property",
        lambda c: _prop(
            c,
            type="array",
            items={"type": "object", "properties": {"name": {"type": "string"}}},
            **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]},
        ),
        "'id' is not a property of the items",
    ),
    (
        "set of granular objects",
        lambda c: _prop(
            c,
            type="array",
            items={"type": "object", "properties": {"a": {"type": "string"}}},
            **{"x-kubernetes-list-type": "set"},
        ),
        "must be atomic as item of a set",
    ),
    # Defaults.
    ("a default of the wrong type", lambda c: _prop(c, type="integer", default="three"), "is not of type 'integer'"),
    (
        "a default with a field pruning would drop",
        lambda c: _prop(c, type="object", properties={"a": {"type": "string"}}, default={"a": "x", "b": "y"}),
        "must not have unknown fields (.b",
    ),
    (
        "a default breaking its own rule",
        lambda c: _add_rule(_prop(c, type="integer", default=5), rule="self < 3"),
        "breaks its own rule",
    ),
    (
        "a default in top-level metadata",
        lambda c: _root(c)["properties"]["metadata"]["properties"]["name"].update(default="x"),
        "must not be set in top-level metadata",
    ),
    # The CRD itself.
    (
        "name not plural.group",
        lambda c: c["metadata"].update(name="ktj.kerasoperator.dev"),
        "must be spec.names.plural",
    ),
    ("group without a dot", lambda c: c["spec"].update(group="keras"), "at least one dot"),
    ("unknown scope", lambda c: c["spec"].update(scope="Global"), "spec.scope"),
    ("plural not a DNS label", lambda c: c["spec"]["names"].update(plural="Keras_Jobs"), "spec.names.plural"),
    (
        "kind equal to listKind",
        lambda c: c["spec"]["names"].update(listKind=c["spec"]["names"]["kind"]),
        "may not be the same",
    ),
    ("a short name not a DNS label", lambda c: c["spec"]["names"]["shortNames"].append("k.t"), "shortNames[1]"),
    ("no storage version", lambda c: c["spec"]["versions"][0].update(storage=False), "exactly one version"),
    (
        "two storage versions",
        lambda c: c["spec"]["versions"].append({**copy.deepcopy(c["spec"]["versions"][0]), "name": "v1beta1"}),
        "exactly one version",
    ),
    (
        "a version name twice",
        lambda c: c["spec"]["versions"].append({**copy.deepcopy(c["spec"]["versions"][0]), "storage": False}),
        "unique version names",
    ),
    ("no schema", lambda c: c["spec"]["versions"][0].pop("schema"), "openAPIV3Schema: Required"),
    ("preserveUnknownFields", lambda c: c["spec"].update(preserveUnknownFields=True), "spec.preserveUnknownFields"),
    (
        "a root key /status forbids",
        _set(_root, default={}),
        "are allowed at the root with /status",
    ),
    # Printer columns and /scale.
    (
        "column of an unknown type",
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"][0].update(type="text"),
        "additionalPrinterColumns[0].type",
    ),
    (
        "column of an unknown format",
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"][0].update(format="uuid"),
        "additionalPrinterColumns[0].format",
    ),
    (
        "column path without the leading dot",
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"][0].update(jsonPath="status.phase"),
        "simple json path starting with .",
    ),
    (
        "column path with an unclosed filter",
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"][0].update(jsonPath='.status.c[?(@.t=="R")'),
        "unbalanced [",
    ),
    (
        "column without a name",
        lambda c: c["spec"]["versions"][0]["additionalPrinterColumns"][0].pop("name"),
        "additionalPrinterColumns[0].name: Required",
    ),
    (
        "scale path outside spec",
        lambda c: c["spec"]["versions"][0]["subresources"].update(
            scale={"specReplicasPath": ".status.replicas", "statusReplicasPath": ".status.replicas"}
        ),
        "specReplicasPath",
    ),
]


@pytest.mark.parametrize(
    "path", sorted((ROOT / "crds").glob("*.yaml")) + sorted((ROOT / "charts").glob("*/crds/*.yaml"))
)
def test_our_crds_pass(path: Any) -> None:
    import yaml

    assert crd_problems(yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize(("mutate", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_check_refuses_what_it_looks_for(mutate: Callable[[CRD], None], expected: str) -> None:
    broken = copy.deepcopy(crd("kerastrainingjobs"))
    mutate(broken)
    problems = crd_problems(broken)
    assert any(expected in p for p in problems), problems


def test_only_the_broken_thing_is_named() -> None:
    """A problem names the field it is about, and a valid sibling stays unnamed."""
    broken = copy.deepcopy(crd("kerastrainingjobs"))
    _add_rule(_training(broken), rule="self.epoch > 0")
    (problem,) = crd_problems(broken)
    assert problem.startswith("spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[training]")


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (".spec.training", None),
        (".spec['training'].epochs", None),
        (".spec.podTemplate.spec.nodeSelector.pool", None),  # a map's key
        (".spec.training.nope", "'nope' does not refer to a valid field"),
        (".spec..training", "unexpected end of JSON path"),
        (".spec[training]", "expected single quoted string"),
        ("spec", "expected [ or . but got: spec"),
    ],
)
def test_field_paths_are_looked_up_in_the_schema(path: str, problem: str | None) -> None:
    found = field_path_problem(path, crd("kerastrainingjobs")["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert found == problem if problem is None else problem in (found or "")


def test_rules_lists_every_rule() -> None:
    found = list(rules(crd("kerastrainingjobs")))
    assert len(found) == sum(
        1 for _ in (ROOT / "crds" / "kerastrainingjobs.kerasoperator.dev.yaml").open() if "rule:" in _
    )
    assert any(path.endswith("openAPIV3Schema") and "metadata.name" in r["rule"] for path, r in found)
