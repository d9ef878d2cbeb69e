"""The defaults the API server fills into the built-in objects on every write, and the canonical form of
their quantities: what a client reads back is not what it wrote, so it must compare only what it sets,
and by value.

From k8s.io/kubernetes pkg/apis/{core,apps,batch,autoscaling}/v*/defaults.go (v1.32) and the Service
registry's IP allocation. Defaults fill only absent fields, so they are kept on updates and come back
when an apply removes a field (a `replicas` dropped from an apply becomes 1 again).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from cluster import quantity, schema

Obj = dict[str, Any]
_HPA_SCALE_UP = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ],
}
_HPA_SCALE_DOWN = {"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
_PROBE = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}


def _fill(obj: Obj, **values: Any) -> None:
    for key, value in values.items():
        if obj.get(key) is None:
            obj[key] = copy.deepcopy(value)


def _pull_policy(image: str) -> str:
    """Always for `:latest` or no tag, else IfNotPresent (a digest pins the image)."""
    if "@" in image:
        return "IfNotPresent"
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _container(container: Obj) -> None:
    _fill(container, terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
    if container.get("image"):
        _fill(container, imagePullPolicy=_pull_policy(container["image"]))
    for port in container.get("ports") or []:
        _fill(port, protocol="TCP")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(probe), dict):
            _fill(container[probe], **_PROBE)
            if isinstance(container[probe].get("httpGet"), dict):
                _fill(container[probe]["httpGet"], scheme="HTTP")
    for env in container.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(ref, dict):
            _fill(ref, apiVersion="v1")


def pod_spec(spec: Obj) -> None:
    _fill(
        spec,
        restartPolicy="Always",
        dnsPolicy="ClusterFirst",
        schedulerName="default-scheduler",
        securityContext={},
        terminationGracePeriodSeconds=30,
        enableServiceLinks=True,
    )
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            _container(container)
    for volume in spec.get("volumes") or []:
        for source in ("configMap", "secret", "projected", "downwardAPI"):
            if isinstance(volume.get(source), dict):
                _fill(volume[source], defaultMode=420)


def _template(spec: Obj) -> None:
    template = spec.get("template")
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        pod_spec(template["spec"])


def deployment(spec: Obj) -> None:
    _fill(spec, replicas=1, revisionHistoryLimit=10, progressDeadlineSeconds=600)
    _fill(spec, strategy={"type": "RollingUpdate"})
    if spec["strategy"].get("type") == "RollingUpdate":
        spec["strategy"].setdefault("rollingUpdate", {})
        _fill(spec["strategy"]["rollingUpdate"], maxUnavailable="25%", maxSurge="25%")
    _template(spec)


def job(spec: Obj) -> None:
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec.update(completions=1, parallelism=1)
    _fill(spec, parallelism=1, completionMode="NonIndexed", suspend=False)
    _fill(spec, backoffLimit=2147483647 if spec.get("backoffLimitPerIndex") is not None else 6)
    _fill(spec, podReplacementPolicy="Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    _template(spec)


def service(spec: Obj, name: str) -> None:
    _fill(spec, type="ClusterIP", sessionAffinity="None", internalTrafficPolicy="Cluster")
    for port in spec.get("ports") or []:
        _fill(port, protocol="TCP")
        if port.get("targetPort") is None and port.get("port") is not None:
            port["targetPort"] = port["port"]
    if spec["type"] in ("NodePort", "LoadBalancer"):
        _fill(spec, externalTrafficPolicy="Cluster")
    if spec["type"] != "ExternalName":
        # The registry allocates a cluster IP (stable per name here, as it would not change on updates).
        digest = hashlib.blake2b(name.encode(), digest_size=2).digest()
        _fill(spec, clusterIP=f"10.96.{digest[0]}.{digest[1] or 1}", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"])
        if spec["clusterIP"] != "None":
            _fill(spec, clusterIPs=[spec["clusterIP"]])


def hpa(spec: Obj) -> None:
    _fill(spec, minReplicas=1)
    if not spec.get("metrics"):
        target = {"type": "Utilization", "averageUtilization": 80}
        spec["metrics"] = [{"type": "Resource", "resource": {"name": "cpu", "target": target}}]
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):  # filled only when the HPA sets some behavior
        for key, rules in (("scaleUp", _HPA_SCALE_UP), ("scaleDown", _HPA_SCALE_DOWN)):
            behavior[key] = {**copy.deepcopy(rules), **(behavior.get(key) or {})}


def apply_defaults(group: str, plural: str, obj: Obj) -> None:
    """Fill `obj`'s defaults in place (kinds the emulator has no defaults for are left alone)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if (group, plural) == ("apps", "deployments"):
        deployment(spec)
    elif (group, plural) == ("batch", "jobs"):
        job(spec)
    elif (group, plural) == ("", "pods"):
        pod_spec(spec)
    elif (group, plural) == ("", "services"):
        service(spec, (obj.get("metadata") or {}).get("name") or "")
    elif (group, plural) == ("autoscaling", "horizontalpodautoscalers"):
        hpa(spec)


def canonicalize(group: str, plural: str, obj: Obj) -> None:
    """Every Quantity of a built-in object in its canonical form, in place (a custom resource is stored
    as written). Raises quantity.QuantityError for a malformed one."""
    if schema.builtin(group, plural):
        _canonical(obj, schema.root(group, plural))


def _canonical(value: Any, node: schema.Node | None) -> Any:
    if node is None:
        return value
    if schema.is_quantity(node) and isinstance(value, str | int | float) and not isinstance(value, bool):
        return quantity.canonical(value)
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _canonical(value[key], schema.field(node, key))
    elif isinstance(value, list):
        item = schema.items(node)
        value[:] = [_canonical(v, item) for v in value]
    return value
