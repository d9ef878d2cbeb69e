"""The emulated API server is as strict as a real one (v1.32) where the operator's drift checks depend on it:
quantities are stored in canonical form, defaults are filled in, server-side apply merges lists by the
schema's list types and tracks which field manager owns which field (metadata.managedFields)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import kmock
import pytest

from cluster import defaults, quantity
from cluster.emulator import Emulator, declare_resources

DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
APPLY = "application/apply-patch+yaml"


# --- quantities: k8s.io/apimachinery resource.Quantity's documented examples and its own tests ---


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("0.5", "500m"),  # the documented "1.5 will be serialized as 1500m"
        ("1.5", "1500m"),
        ("1.5Gi", "1536Mi"),  # "1.5Gi will be serialized as 1536Mi"
        ("1024Mi", "1Gi"),
        ("1000m", "1"),
        ("2000Mi", "2000Mi"),
        ("1e3", "1e3"),  # the exponent form stays one (quantity_test.go: 1e3, 3e3, 300e6)
        (".001e12", "1e9"),
        ("1000e-12", "1e-9"),
        ("2000", "2k"),
        ("1000M", "1G"),
        ("307200Ki", "300Mi"),
        ("1025024Mi", "1001Gi"),
        ("0.5Ki", "512"),  # binary below 1024: decimal
        ("1.5Ki", "1536"),  # binary, whole but not a multiple of 1Ki
        (".001Ki", "1024m"),
        (".000000000001Ki", "2n"),  # finer than 1n rounds up
        ("1080000000n", "1080m"),
        ("00", "0"),
        ("-1024Mi", "-1Gi"),
        (1, "1"),
        (0.25, "250m"),
    ],
)
def test_quantities_are_stored_in_canonical_form(written: str | int | float, stored: str) -> None:
    assert quantity.canonical(written) == stored


@pytest.mark.parametrize("bad", ["", "abc", "1K", "1mi", "1.2.3", "1Gi1", "Gi"])
def test_malformed_quantities_are_refused(bad: str) -> None:
    with pytest.raises(quantity.QuantityError):
        quantity.canonical(bad)


def test_image_pull_policy_follows_the_tag() -> None:
    assert [
        defaults._pull_policy(i) for i in ("nginx", "nginx:latest", "nginx:1.27", "reg:5000/nginx", "a@sha256:ab")
    ] == [
        "Always",
        "Always",
        "IfNotPresent",
        "Always",
        "IfNotPresent",
    ]


# --- the emulated server over HTTP ---


def run(scenario: Callable[[Emulator], Awaitable[None]]) -> None:
    async def main() -> None:
        emulator = Emulator()
        declare_resources(emulator)
        async with emulator, kmock.Server(emulator):
            await scenario(emulator)

    asyncio.run(main())


async def call(
    emulator: Emulator,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/merge-patch+json",
    agent: str = "kubectl/v1.32.0 (linux/amd64)",
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": content_type if method == "PATCH" else "application/json", "User-Agent": agent}
    data = None if body is None else json.dumps(body)
    async with emulator.request(method, path, data=data, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def apply(
    emulator: Emulator, body: dict[str, Any], manager: str, force: bool = False, name: str = "web"
) -> tuple[int, dict[str, Any]]:
    query = f"?fieldManager={manager}" + ("&force=True" if force else "")  # as the Python client spells it
    return await call(emulator, "PATCH", f"{DEPLOY}/{name}{query}", body, APPLY)


def deployment(replicas: int | None = 3, env: list[dict[str, Any]] | None = None, **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "server", "image": "kerasop/server:1", "ports": [{"containerPort": 8080}]}
    if resources:
        container["resources"] = {"requests": resources}
    if env is not None:
        container["env"] = env
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec}


def first_container(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"]["containers"][0])


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["manager"], e["operation"]): e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def test_a_created_deployment_comes_back_canonical_and_defaulted() -> None:
    async def scenario(emulator: Emulator) -> None:
        code, body = await call(emulator, "POST", DEPLOY, deployment(replicas=None, cpu="0.5", memory="1024Mi"))
        assert code in (200, 201), body
        spec = body["spec"]
        assert spec["replicas"] == 1
        assert spec["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
        }
        assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
        pod = spec["template"]["spec"]
        assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"]) == (
            "Always",
            "ClusterFirst",
            "default-scheduler",
        )
        assert (pod["securityContext"], pod["terminationGracePeriodSeconds"]) == ({}, 30)
        container = first_container(body)
        assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
        assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
        assert (container["terminationMessagePath"], container["terminationMessagePolicy"]) == (
            "/dev/termination-log",
            "File",
        )
        assert container["imagePullPolicy"] == "IfNotPresent"
        # The creator, named by its User-Agent (no fieldManager), owns what it wrote and what was defaulted.
        fields = managers(body)[("kubectl", "Update")]
        assert "f:replicas" in fields["f:spec"]
        assert "f:image" in fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"server"}']
        assert fields["f:spec"]["f:selector"] == {}  # a LabelSelector is an atomic map: owned whole
        # Kept on an update that does not touch them; a malformed quantity is refused as the server's decoding does.
        code, body = await call(emulator, "PATCH", f"{DEPLOY}/web", {"metadata": {"labels": {"a": "b"}}})
        assert code == 200
        assert body["spec"]["revisionHistoryLimit"] == 10
        code, body = await call(
            emulator,
            "PATCH",
            f"{DEPLOY}/web",
            {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "server", "resources": {"limits": {"cpu": "lots"}}}]}}
                }
            },
        )
        assert code == 400, body

    run(scenario)


def test_job_service_and_hpa_defaults() -> None:
    async def scenario(emulator: Emulator) -> None:
        template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "t", "image": "trainer"}]}}
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": template}}
        code, body = await call(emulator, "POST", "/apis/batch/v1/namespaces/default/jobs", job)
        assert code in (200, 201), body
        spec = body["spec"]
        assert {k: spec[k] for k in ("backoffLimit", "completions", "parallelism", "completionMode", "suspend")} == {
            "backoffLimit": 6,
            "completions": 1,
            "parallelism": 1,
            "completionMode": "NonIndexed",
            "suspend": False,
        }
        assert spec["podReplacementPolicy"] == "TerminatingOrFailed"
        assert "manualSelector" not in spec
        assert spec["template"]["spec"]["restartPolicy"] == "Never"  # set: kept
        assert first_container(body)["imagePullPolicy"] == "Always"  # no tag

        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}
        code, body = await call(emulator, "POST", "/api/v1/namespaces/default/services", svc)
        assert code in (200, 201), body
        spec = body["spec"]
        assert spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
        assert (spec["type"], spec["sessionAffinity"], spec["internalTrafficPolicy"]) == (
            "ClusterIP",
            "None",
            "Cluster",
        )
        assert spec["ipFamilyPolicy"] == "SingleStack"
        assert spec["clusterIPs"] == [spec["clusterIP"]]

        ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        target = {"type": "AverageValue", "averageValue": "0.5"}
        metric = {"type": "Pods", "pods": {"metric": {"name": "inflight"}, "target": target}}
        hpa_spec = {
            "scaleTargetRef": ref,
            "maxReplicas": 4,
            "metrics": [metric],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
        }
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "h"},
            "spec": hpa_spec,
        }
        code, body = await call(
            emulator, "POST", "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", hpa
        )
        assert code in (200, 201), body
        spec = body["spec"]
        assert spec["minReplicas"] == 1
        assert spec["metrics"][0]["pods"]["target"]["averageValue"] == "500m"
        assert spec["behavior"]["scaleDown"] == {
            "stabilizationWindowSeconds": 60,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
        }
        assert spec["behavior"]["scaleUp"]["policies"][0] == {"type": "Pods", "value": 4, "periodSeconds": 15}

    run(scenario)


def test_apply_keeps_another_managers_list_entries() -> None:
    """`kubectl set env` (another manager) adds an env var: the operator's next apply keeps it."""

    async def scenario(emulator: Emulator) -> None:
        assert (await apply(emulator, deployment(env=[{"name": "A", "value": "1"}]), "keras-operator"))[0] == 201
        code, body = await apply(
            emulator,
            deployment(replicas=None, env=[{"name": "FOO", "value": "bar"}])
            | {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "server", "env": [{"name": "FOO", "value": "bar"}]}]}}
                }
            },
            "kubectl",
        )
        assert code == 200, body
        assert first_container(body)["env"] == [{"name": "A", "value": "1"}, {"name": "FOO", "value": "bar"}]
        code, body = await apply(emulator, deployment(env=[{"name": "A", "value": "2"}]), "keras-operator")
        assert code == 200, body
        assert first_container(body)["env"] == [{"name": "A", "value": "2"}, {"name": "FOO", "value": "bar"}]
        owned = managers(body)[("kubectl", "Apply")]["f:spec"]["f:template"]["f:spec"]["f:containers"][
            'k:{"name":"server"}'
        ]
        assert owned["f:env"] == {'k:{"name":"FOO"}': {".": {}, "f:name": {}, "f:value": {}}}
        # Dropping its own entry removes it; the other manager's stays.
        code, body = await apply(emulator, deployment(env=None), "keras-operator")
        assert first_container(body)["env"] == [{"name": "FOO", "value": "bar"}]

    run(scenario)


def test_apply_removes_a_field_its_manager_alone_owned_and_the_default_comes_back() -> None:
    async def scenario(emulator: Emulator) -> None:
        await apply(emulator, deployment(replicas=3), "keras-operator")
        code, body = await apply(emulator, deployment(replicas=None), "keras-operator")
        assert code == 200, body
        assert body["spec"]["replicas"] == 1  # dropped from the apply: removed, then defaulted

    run(scenario)


def test_a_co_owned_field_stays_when_one_manager_drops_it() -> None:
    async def scenario(emulator: Emulator) -> None:
        await apply(emulator, deployment(replicas=3), "keras-operator")
        code, body = await apply(emulator, deployment(replicas=3), "hpa-handover")  # same value: shared, no conflict
        assert code == 200, body
        code, body = await apply(emulator, deployment(replicas=None), "keras-operator")
        assert body["spec"]["replicas"] == 3
        assert "f:replicas" not in managers(body)[("keras-operator", "Apply")]["f:spec"]

    run(scenario)


def test_a_conflicting_apply_is_refused_unless_forced() -> None:
    async def scenario(emulator: Emulator) -> None:
        await apply(emulator, deployment(replicas=3, cpu="0.5"), "keras-operator")
        code, _ = await call(emulator, "PATCH", f"{DEPLOY}/web", {"spec": {"replicas": 5}})  # a hand edit (kubectl)
        assert code == 200
        code, body = await apply(emulator, deployment(replicas=3, cpu="500m"), "keras-operator")
        assert code == 409, body
        assert body["reason"] == "Conflict"
        assert 'conflict with "kubectl": .spec.replicas' in body["message"]
        code, body = await apply(emulator, deployment(replicas=3, cpu="500m"), "keras-operator", force=True)
        assert code == 200
        assert body["spec"]["replicas"] == 3
        assert ("kubectl", "Update") not in managers(body) or "f:replicas" not in managers(body)[
            ("kubectl", "Update")
        ].get("f:spec", {})
        # The same configuration again, quantities written differently: nothing changes, nothing is written.
        before = emulator.applies
        code, again = await apply(emulator, deployment(replicas=3, cpu="0.5"), "keras-operator")
        assert code == 200
        assert again["metadata"]["resourceVersion"] == body["metadata"]["resourceVersion"]
        assert emulator.applies == before

    run(scenario)


def test_writes_record_their_field_manager() -> None:
    async def scenario(emulator: Emulator) -> None:
        await call(emulator, "POST", DEPLOY, deployment(), agent="OpenAPI-Generator/31.0.0/python")
        await call(emulator, "PATCH", f"{DEPLOY}/web?fieldManager=kubectl-edit", {"spec": {"paused": True}})
        _, body = await call(emulator, "GET", f"{DEPLOY}/web")
        owners = managers(body)
        assert set(owners) == {("OpenAPI-Generator", "Update"), ("kubectl-edit", "Update")}
        assert owners[("kubectl-edit", "Update")] == {"f:spec": {"f:paused": {}}}

    run(scenario)


def test_a_strategic_merge_patch_merges_lists_by_their_patch_merge_key() -> None:
    """What `kubectl set env` and the Python client send: env vars merged by name, not the list replaced."""

    async def scenario(emulator: Emulator) -> None:
        await call(emulator, "POST", DEPLOY, deployment(env=[{"name": "A", "value": "1"}]))
        smp = "application/strategic-merge-patch+json"
        env_patch = {
            "spec": {
                "template": {"spec": {"containers": [{"name": "server", "env": [{"name": "FOO", "value": "bar"}]}]}}
            }
        }
        code, body = await call(emulator, "PATCH", f"{DEPLOY}/web?fieldManager=kubectl-set", env_patch, smp)
        assert code == 200, body
        assert first_container(body)["env"] == [{"name": "A", "value": "1"}, {"name": "FOO", "value": "bar"}]
        assert managers(body)[("kubectl-set", "Update")]["f:spec"]["f:template"]["f:spec"]["f:containers"] == {
            'k:{"name":"server"}': {"f:env": {'k:{"name":"FOO"}': {".": {}, "f:name": {}, "f:value": {}}}}
        }
        delete = {
            "spec": {
                "template": {"spec": {"containers": [{"name": "server", "env": [{"name": "A", "$patch": "delete"}]}]}}
            }
        }
        code, body = await call(emulator, "PATCH", f"{DEPLOY}/web", delete, smp)
        assert first_container(body)["env"] == [{"name": "FOO", "value": "bar"}]
        # The same body as a JSON merge patch replaces the list whole.
        code, body = await call(emulator, "PATCH", f"{DEPLOY}/web", env_patch)
        assert first_container(body)["env"] == [{"name": "FOO", "value": "bar"}]
        assert "image" not in first_container(body)
        # A custom resource has no patch strategies: the server refuses the media type.
        kms = {
            "apiVersion": "kerasoperator.dev/v1alpha1",
            "kind": "KerasModelService",
            "metadata": {"name": "m"},
            "spec": {},
        }
        path = "/apis/kerasoperator.dev/v1alpha1/namespaces/default/kerasmodelservices"
        await call(emulator, "POST", path, kms)
        code, body = await call(emulator, "PATCH", f"{path}/m", {"spec": {"replicas": 2}}, smp)
        assert code == 415, body

    run(scenario)
