"""The operator's drift check (`drift.covers`) and its quantity parser: what the API server stores for what
the operator applied must count as no drift (canonical quantities, defaults, entries another field
manager added to a list-map), and only a real change to what the operator sets counts as drift."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest

from keras_operator.runtime import quantity
from keras_operator.runtime.drift import covers as _covers


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1", 1),
        (1, 1),
        (0.25, Fraction(1, 4)),
        ("1Ki", 1024),
        ("1.5Gi", 3 * 2**29),
        ("1e3", 1000),
        ("1E-3", Fraction(1, 1000)),
        ("12e+6", 12_000_000),
        ("2k", 2000),
        ("3M", 3_000_000),
        ("1E", 10**18),
        ("100u", Fraction(1, 10_000)),
        ("1n", Fraction(1, 10**9)),
        ("-2Mi", -(2**21)),
        ("0.0000000001", Fraction(1, 10**9)),  # finer than a nano-unit: rounds up, as the server does
        (".000000000001Ki", Fraction(2, 10**9)),
    ],
)
def test_quantities_parse_to_their_exact_amount(written: str | int | float, value: Fraction | int) -> None:
    assert quantity.parse(written) == value


@pytest.mark.parametrize("bad", ["", "m", "1.2.3", "1K", "1mi", "1 Gi", "Gi", "1e", "1ee3", "0x10", "1Ki2"])
def test_malformed_quantities_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.parse(bad)
    assert not quantity.equal(bad, bad)


def deployment(resources: dict[str, Any], env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "server",
        "image": "kerasop/server:1",
        "ports": [{"containerPort": 8080, "name": "http"}],
        "resources": resources,
        "args": ["serve", "--port", "8080"],
    }
    if env is not None:
        container["env"] = env
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [container],
                    "volumes": [{"name": "cache", "emptyDir": {"sizeLimit": "0.5Gi"}}],
                }
            },
        },
    }


WANTED = deployment(
    {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": 2}}, [{"name": "A", "value": "1"}]
)


def stored() -> dict[str, Any]:
    """WANTED as a real API server gives it back: canonical quantities, defaults filled in."""
    obj = copy.deepcopy(WANTED)
    obj["spec"].update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
    pod = obj["spec"]["template"]["spec"]
    pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", terminationGracePeriodSeconds=30)
    pod["volumes"][0]["emptyDir"]["sizeLimit"] = "512Mi"
    container = pod["containers"][0]
    container["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2"}}
    container["ports"][0]["protocol"] = "TCP"
    container.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
    return obj


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


def with_env(obj: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, Any]:
    obj["spec"]["template"]["spec"]["containers"][0]["env"] = env
    return obj


def edited(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    obj = stored()
    node: Any = obj
    for step in path[:-1]:
        node = node[step]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


C = ("spec", "template", "spec", "containers", 0)


@pytest.mark.parametrize(
    ("name", "actual", "drift"),
    [
        ("as stored: canonical quantities and defaults", stored(), False),
        (
            "an env var another manager added (kubectl set env)",
            with_env(stored(), [{"name": "A", "value": "1"}, {"name": "FOO", "value": "bar"}]),
            False,
        ),
        (
            "another manager's env var first",
            with_env(stored(), [{"name": "FOO", "value": "bar"}, {"name": "A", "value": "1"}]),
            False,
        ),
        (
            "an injected sidecar container",
            edited(
                ("spec", "template", "spec", "containers"),
                [*stored()["spec"]["template"]["spec"]["containers"], {"name": "istio-proxy", "image": "proxy"}],
            ),
            False,
        ),
        (
            "a port another manager added",
            edited(
                (*C, "ports"),
                [
                    {"containerPort": 9090, "protocol": "TCP"},
                    {"containerPort": 8080, "name": "http", "protocol": "TCP"},
                ],
            ),
            False,
        ),
        ("a changed env value IS drift", with_env(stored(), [{"name": "A", "value": "2"}]), True),
        ("the operator's env var removed IS drift", with_env(stored(), [{"name": "FOO", "value": "bar"}]), True),
        ("the operator's env list gone IS drift", edited((*C, "env"), KeyError), True),
        ("a changed cpu request IS drift", edited((*C, "resources", "requests", "cpu"), "600m"), True),
        ("a changed memory request IS drift", edited((*C, "resources", "requests", "memory"), "1G"), True),
        (
            "a changed sizeLimit IS drift",
            edited(("spec", "template", "spec", "volumes", 0, "emptyDir", "sizeLimit"), "1Gi"),
            True,
        ),
        ("a port's protocol changed IS drift", edited((*C, "ports", 0, "protocol"), "UDP"), True),
        ("an atomic list reordered IS drift", edited((*C, "args"), ["--port", "8080", "serve"]), True),
        ("an atomic list with an extra item IS drift", edited((*C, "args"), ["serve", "--port", "8080", "-v"]), True),
        ("replicas changed IS drift", edited(("spec", "replicas"), 3), True),
        ("an image that looks like a quantity is still a string", edited((*C, "image"), "kerasop/server:1.0"), True),
    ],
)
def test_drift_is_what_the_operator_sets_changed_by_value(name: str, actual: dict[str, Any], drift: bool) -> None:
    assert _covers(actual, WANTED) is not drift, name


def test_quantities_compare_by_amount_only_where_the_schema_has_a_quantity() -> None:
    # `value` of an env var is a string: "1000m" is not "1" there, while an HPA target's value is a quantity.
    assert not _covers(
        with_env(stored(), [{"name": "A", "value": "1000m"}]), with_env(stored(), [{"name": "A", "value": "1"}])
    )
    hpa_wanted = {
        "spec": {"metrics": [{"type": "Pods", "pods": {"target": {"type": "AverageValue", "averageValue": "0.5"}}}]}
    }
    hpa_stored = {
        "spec": {"metrics": [{"type": "Pods", "pods": {"target": {"type": "AverageValue", "averageValue": "500m"}}}]}
    }
    assert _covers(hpa_stored, hpa_wanted)
    hpa_stored["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = "501m"
    assert not _covers(hpa_stored, hpa_wanted)
