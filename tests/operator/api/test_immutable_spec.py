"""A KerasTrainingJob's spec is immutable once created, except spec.runPolicy.suspend.

The API server enforces it with CEL transition rules (`oldSelf`) in the generated CRD; the Python
twins (keras_operator.api.base.transition_errors) answer the same question on parsed specs. Here
both judge the same (old, new) updates: each rule is evaluated with `self` and `oldSelf` bound, after
the CRD's defaults are filled in on both sides, as the API server does (helpers.manifests.rule_holds:
the strict CEL that parses like Go's, cross-checked with cel-python).

What neither CEL here can show: Kubernetes compares objects with preserved unknown fields one way only
(k8s.io/apiserver/pkg/cel/common/values.go, unstructuredMap.Equal skips an unknown key the other
side lacks), so renaming a layer argument while keeping the count of arguments (units -> filters) gets
past the API server. The operator still reports that edit as SpecApplied=False and leaves the Job.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from helpers.manifests import ROOT, crd_schema, rule_holds
from keras_operator import crdgen
from keras_operator.api.base import transition_errors
from keras_operator.api.training_job import MUTABLE_SPEC_FIELDS, KerasTrainingJobSpec, RunPolicy

Spec = dict[str, Any]

IMMUTABLE_PATHS = {
    ".backend",
    ".image",
    ".model",
    ".data",
    ".training",
    ".resources",
    ".distribution",
    ".output",
    ".code",
    ".podTemplate",
    ".runPolicy.backoffLimit",
    ".runPolicy.activeDeadlineSeconds",
    ".runPolicy.ttlSecondsAfterFinished",
    ".runPolicy.queueName",
    ".runPolicy.priorityClassName",
    ".runPolicy.workloadPriorityClass",
}


def _spec_schema() -> dict[str, Any]:
    return crd_schema("kerastrainingjobs")["properties"]["spec"]


def _transition_rules(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in schema.get("x-kubernetes-validations", []) if "oldSelf" in r["rule"]]


def _digits() -> Spec:
    return yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())["spec"]


def with_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """obj with the schema's defaults filled in, as the API server stores (and reads back) objects."""
    if isinstance(obj, dict):
        out = dict(obj)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = with_defaults(out[key], sub)
        if isinstance(schema.get("additionalProperties"), dict):
            out = {k: with_defaults(v, schema["additionalProperties"]) for k, v in out.items()}
        return out
    if isinstance(obj, list) and "items" in schema:
        return [with_defaults(item, schema["items"]) for item in obj]
    return obj


def cel_transition_errors(old: Any, new: Any, schema: dict[str, Any]) -> list[str]:
    """Messages of the transition rules an update breaks: each rule where both the old and the new
    value exist, with self and oldSelf bound. Lists are not entered: the API server pairs items only
    in map and set lists, and the CRD has no transition rule below a list (crdgen checks)."""
    errors: list[str] = []
    for rule in _transition_rules(schema):
        if not rule_holds(rule["rule"], {"self": new, "oldSelf": old}):
            errors.append(rule["message"])
    if isinstance(old, dict) and isinstance(new, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in old and key in new:
                errors += cel_transition_errors(old[key], new[key], sub)
    return errors


def judge(old: Spec, new: Spec) -> tuple[list[str], list[str]]:
    """(what the API server's CEL says, what the Python twins say) about updating old to new."""
    schema = _spec_schema()
    cel = cel_transition_errors(with_defaults(old, schema), with_defaults(new, schema), schema)
    python = transition_errors(KerasTrainingJobSpec.model_validate(old), KerasTrainingJobSpec.model_validate(new))
    return cel, python


def _message(field: str) -> str:
    return next(r["message"] for r in _transition_rules(_spec_schema()) if r["fieldPath"] == field)


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value

    return mutate


def _pop(path: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        del node[leaf]

    return mutate


def _in_kueue(spec: Spec) -> None:
    spec["runPolicy"] = {"queueName": "team-a", "suspend": True, "activeDeadlineSeconds": 3600}


def _on_jax_workers(workers: int) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        spec.update(backend="jax", distribution={"workers": workers})

    return mutate


REFUSED: list[tuple[str, Callable[[Spec], None] | None, Callable[[Spec], None], str]] = [
    # (id, how the stored spec differs from digits.yaml, the edit, the field the answer must name)
    ("epochs", None, _set("training.epochs", 30), ".training"),
    ("batchSize", None, _set("training.batchSize", 64), ".training"),
    ("optimizer (open value)", None, _set("training.optimizer", {"name": "sgd"}), ".training"),
    ("loss (open value)", None, _set("training.loss", "mse"), ".training"),
    ("metrics", None, _set("training.metrics", ["accuracy", "mae"]), ".training"),
    ("layer units (unknown field)", None, lambda s: s["model"]["layers"][0].update(units=128), ".model"),
    ("layer added", None, lambda s: s["model"]["layers"].append({"type": "Dense", "units": 10}), ".model"),
    ("layers replaced by uri", None, lambda s: s.update(model={"uri": "s3://b/m.keras"}), ".model"),
    ("inputShape", None, _set("model.inputShape", [32]), ".model"),
    ("train data", None, _set("data.train.uri", "examples/data/other.npz"), ".data"),
    (
        "validation to split",
        None,
        lambda s: s.update(data={"train": s["data"]["train"], "validationSplit": 0.1}),
        ".data",
    ),
    ("output.uri", None, _set("output.uri", "pvc://models/other"), ".output"),
    ("output.formats", None, _set("output.formats", ["savedmodel"]), ".output"),
    ("output removed", None, _pop("output"), ".output"),
    ("resources.gpus", None, _set("resources.gpus", 1), ".resources"),
    ("resources.memory", None, _set("resources.memory", "4Gi"), ".resources"),
    ("backend", None, _set("backend", "jax"), ".backend"),
    ("workers", _on_jax_workers(2), _set("distribution.workers", 4), ".distribution"),
    ("workers added", _set("backend", "jax"), _set("distribution", {"workers": 2}), ".distribution"),
    ("backend spelt out", _set("backend", "jax"), _pop("backend"), ".backend"),
    ("image set", None, _set("image", "registry.example/trainer:2"), ".image"),
    ("image changed", _set("image", "t:1"), _set("image", "t:2"), ".image"),
    ("image cleared", _set("image", "t:1"), _pop("image"), ".image"),
    ("podTemplate added", None, _set("podTemplate", {"spec": {"nodeSelector": {"pool": "gpu"}}}), ".podTemplate"),
    (
        "podTemplate env changed",
        _set("podTemplate", {"spec": {"env": [{"name": "A", "value": "1"}]}}),
        _set("podTemplate", {"spec": {"env": [{"name": "A", "value": "2"}]}}),
        ".podTemplate",
    ),
    (
        "backoffLimit",
        _set("runPolicy", {"backoffLimit": 3}),
        _set("runPolicy.backoffLimit", 5),
        ".runPolicy.backoffLimit",
    ),
    # A runPolicy added with suspend must not smuggle in another run setting.
    (
        "backoffLimit with suspend",
        None,
        _set("runPolicy", {"suspend": True, "backoffLimit": 0}),
        ".runPolicy.backoffLimit",
    ),
    ("queueName set", None, _set("runPolicy", {"queueName": "team-a"}), ".runPolicy.queueName"),
    ("queueName changed", _in_kueue, _set("runPolicy.queueName", "team-b"), ".runPolicy.queueName"),
    (
        "activeDeadlineSeconds",
        _in_kueue,
        _set("runPolicy.activeDeadlineSeconds", 60),
        ".runPolicy.activeDeadlineSeconds",
    ),
    (
        "activeDeadlineSeconds cleared",
        _in_kueue,
        _pop("runPolicy.activeDeadlineSeconds"),
        ".runPolicy.activeDeadlineSeconds",
    ),
    ("ttl", None, _set("runPolicy.ttlSecondsAfterFinished", 60), ".runPolicy.ttlSecondsAfterFinished"),
    ("priorityClassName", None, _set("runPolicy.priorityClassName", "high"), ".runPolicy.priorityClassName"),
    (
        "workloadPriorityClass",
        _in_kueue,
        _set("runPolicy.workloadPriorityClass", "urgent"),
        ".runPolicy.workloadPriorityClass",
    ),
]


@pytest.mark.parametrize(("before", "edit", "field"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_immutable_changes_are_refused_naming_the_field(
    before: Callable[[Spec], None] | None, edit: Callable[[Spec], None], field: str
) -> None:
    old = _digits()
    if before:
        before(old)
    new = copy.deepcopy(old)
    edit(new)
    cel, python = judge(old, new)
    assert cel == [_message(field)], "the API server's answer"
    assert python == cel, "the Python twin disagrees with the CEL rule"
    assert cel[0].startswith(f"spec{field} is immutable after creation: delete and re-apply")


def test_several_changes_are_all_named() -> None:
    old = _digits()
    new = copy.deepcopy(old)
    new["training"]["epochs"] = 1
    new["output"]["uri"] = "pvc://models/x"
    new["runPolicy"] = {"suspend": True}
    cel, python = judge(old, new)
    assert cel == python == [_message(".training"), _message(".output")]


ALLOWED: list[tuple[str, Callable[[Spec], None] | None, Callable[[Spec], None]]] = [
    ("nothing changed", None, lambda s: None),
    ("suspend: runPolicy added", None, _set("runPolicy", {"suspend": True})),
    ("suspend flipped", _set("runPolicy", {"suspend": False, "backoffLimit": 5}), _set("runPolicy.suspend", True)),
    ("resumed", _set("runPolicy", {"suspend": True}), _set("runPolicy.suspend", False)),
    ("resumed by removing runPolicy", _set("runPolicy", {"suspend": True}), _pop("runPolicy")),
    ("suspend in a queue", _in_kueue, _set("runPolicy.suspend", False)),
    # A default written out is no change: the API server fills these scalar defaults in on both sides.
    ("backoffLimit default written out", None, _set("runPolicy", {"suspend": True, "backoffLimit": 3})),
    ("backend default written out", None, _set("backend", "tensorflow")),
    ("shuffle default written out", None, _set("data.shuffle", True)),
]


@pytest.mark.parametrize(("before", "edit"), [a[1:] for a in ALLOWED], ids=[a[0] for a in ALLOWED])
def test_suspend_and_resume_are_allowed(before: Callable[[Spec], None] | None, edit: Callable[[Spec], None]) -> None:
    old = _digits()
    if before:
        before(old)
    new = copy.deepcopy(old)
    edit(new)
    assert judge(old, new) == ([], [])


def test_cel_is_stricter_only_where_a_default_the_schema_lacks_is_spelt_out() -> None:
    """pydantic fills defaults the CRD schema does not carry (objects and lists from default factories:
    output, resources, training.metrics, ...); the API server compares what was written. Writing such a
    default out is refused though nothing changed for the operator: delete and re-apply, never a
    silently ignored edit."""
    old = _digits()
    del old["training"]["metrics"]
    new = copy.deepcopy(old)
    new["training"]["metrics"] = ["accuracy"]
    assert judge(old, new) == ([_message(".training")], [])


def test_every_spec_field_is_immutable_except_suspend() -> None:
    rules = _transition_rules(_spec_schema())
    assert {r["fieldPath"] for r in rules} == IMMUTABLE_PATHS
    assert MUTABLE_SPEC_FIELDS == ("runPolicy.suspend",)
    # Each field of the types has a rule or is listed mutable, so a new field cannot be missed.
    top = {f".{i.alias}" for i in KerasTrainingJobSpec.model_fields.values()} - {".runPolicy"}
    run_policy = {f".runPolicy.{i.alias}" for i in RunPolicy.model_fields.values()} - {".runPolicy.suspend"}
    assert top | run_policy == IMMUTABLE_PATHS
    for rule in rules:
        assert rule["message"].startswith(f"spec{rule['fieldPath']} is immutable after creation"), rule
        assert "delete and re-apply" in rule["message"]


def test_no_transition_rule_anywhere_but_spec() -> None:
    """Transition rules on the spec itself: never below a list (the API server refuses those in atomic
    lists), and in the serving CRD none at all."""

    def rules_below(schema: dict[str, Any]) -> list[str]:
        found = []
        for sub in (schema.get("properties") or {}).values():
            found += [r["rule"] for r in _transition_rules(sub)] + rules_below(sub)
        if "items" in schema:
            found += [r["rule"] for r in _transition_rules(schema["items"])] + rules_below(schema["items"])
        return found

    assert rules_below(_spec_schema()) == []
    assert rules_below(crd_schema("kerasmodelservices")) == []
    assert _transition_rules(crd_schema("kerasmodelservices")["properties"]["spec"]) == []


def test_generator_refuses_transition_rules_inside_atomic_lists() -> None:
    rule = {"rule": "self == oldSelf", "message": "immutable"}
    atomic = {"type": "array", "items": {"type": "object", "x-kubernetes-validations": [rule]}}
    with pytest.raises(ValueError, match=re.escape("spec.items[]: transition rule inside a list")):
        crdgen.check_transition_rules({"type": "object", "properties": {"items": atomic}}, "spec")
    keyed = {**atomic, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    crdgen.check_transition_rules({"type": "object", "properties": {"items": keyed}}, "spec")


def test_parsing_never_applies_transition_rules() -> None:
    """pydantic sees one object: a spec that differs in every immutable field still parses."""
    spec = _digits()
    spec.update(backend="jax", image="t:1", runPolicy={"queueName": "q", "backoffLimit": 0})
    assert KerasTrainingJobSpec.model_validate(spec).run_policy.queue_name == "q"


# cel-go's static estimate (checker/cost.go): `==` costs min(size of its operands) x 0.1, has() and
# field selection 1 each. A string without maxLength is sized from the largest request (3 MiB), so
# this bounds every operand by that: well above the real estimate, and still far below the limits
# the API server enforces when the CRD is created (apiextensions validation: per rule and per CRD).
MAX_REQUEST_BYTES = 3 * 1024 * 1024
PER_RULE_LIMIT = 10_000_000
PER_CRD_LIMIT = 100_000_000


def _cost_bound(rule: str) -> int:
    return rule.count("==") * math.ceil(MAX_REQUEST_BYTES * 0.1) + len(rule)


def test_transition_rules_fit_the_cel_cost_budget() -> None:
    rules = _transition_rules(_spec_schema())
    for rule in rules:
        assert _cost_bound(rule["rule"]) < PER_RULE_LIMIT, rule
    # spec is not inside a list: each rule runs once per object.
    assert sum(_cost_bound(r["rule"]) for r in rules) < PER_CRD_LIMIT
