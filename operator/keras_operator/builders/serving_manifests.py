"""KerasModelService -> Deployment running the model server, its Service, and an HPA when asked; with a
canary, a second Deployment and either a Service over both sides' pods or per-side Services and an
HTTPRoute splitting traffic by weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from keras_operator.api.model_service import KerasModelServiceSpec, ServerSpec
from keras_operator.api.wire import (
    CANARY_LABEL,
    MODEL_SERVICE_LABEL,
    MODEL_SOURCE_ANNOTATION,
    SERVER_CONTAINER,
    SERVING_LABEL,
    SPEC_HASH_ANNOTATION,
    TRACK_LABEL,
)
from keras_operator.builders.code import code_mount, server_code_args
from keras_operator.builders.metadata import PVC_ROOT, labels, object_meta, resource_requirements, spec_hash
from keras_operator.builders.pod import pod_template, pvc_claims, pvc_volumes

GATEWAY_GROUP = "gateway.networking.k8s.io"
SERVER_DEFAULTS = ServerSpec()  # what the server assumes for a flag left out (keras_server.config)


@dataclass(frozen=True)
class DeploymentModel:
    """What one Deployment serves: a model URI, with the versions and labels of a base folder."""

    model_uri: str
    versions: str | None = None
    """The server's --model-versions (latest:N, all, specific:A,B); None: the server's default."""
    version_labels: tuple[tuple[str, int], ...] = ()
    canary: bool = False


def stable_side(spec: KerasModelServiceSpec, model_uri: str) -> DeploymentModel:
    model = spec.model
    return DeploymentModel(
        model_uri,
        model.version_policy.mode() if model.version_policy is not None else None,
        tuple(sorted((model.version_labels or {}).items())),
    )


def model_source(spec: KerasModelServiceSpec) -> str:
    """What spec.model names, as the stable Deployment records it: `trainingJobRef:NAME` or `uri:URI`."""
    ref = spec.model.training_job_ref
    return f"trainingJobRef:{ref.name}" if ref is not None else f"uri:{spec.model.uri}"


def canary_name(name: str) -> str:
    return f"{name}-canary"


def side_service_name(name: str, canary: bool) -> str:
    return f"{name}-canary" if canary else f"{name}-stable"


def serving_labels(name: str) -> dict[str, str]:
    return labels("keras-model-server", name, MODEL_SERVICE_LABEL)


def selector(name: str) -> dict[str, str]:
    return {MODEL_SERVICE_LABEL: name}


def selector_text(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def model_name(owner: dict[str, Any], spec: KerasModelServiceSpec) -> str:
    return spec.model_name or owner["metadata"]["name"]


def url(owner: dict[str, Any], spec: KerasModelServiceSpec) -> str:
    meta = owner["metadata"]
    return f"http://{meta['name']}.{meta.get('namespace', 'default')}.svc.cluster.local:{spec.server.port}"


def _hashed(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object with a hash of itself, so the controller patches only what changed."""
    obj["metadata"].setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = spec_hash(obj)
    return obj


def server_args(
    name: str, spec: KerasModelServiceSpec, model: str | DeploymentModel, port: int | None = None
) -> list[str]:
    """`keras-server` arguments that serve this spec: the Deployment's and `kerasop serve`'s.

    A setting equal to the API's default is left out: the server takes its defaults from the same API
    types (keras_server.config), so a flag would only repeat it, and an older server image keeps working
    for a spec that sets nothing new."""
    server = spec.server
    side = stable_side(spec, model) if isinstance(model, str) else model
    # The port and the backend are stated even at their defaults: the port is the pod's contract with
    # containerPort and the probes, the backend what the image must hold.
    args = ["--model-uri", side.model_uri, "--model-name", name, "--port", str(port or server.port)]
    args += ["--backend", spec.backend]
    given = {
        "--max-batch-size": (server.batching.max_batch_size, SERVER_DEFAULTS.batching.max_batch_size),
        "--max-latency-ms": (server.batching.max_latency_ms, SERVER_DEFAULTS.batching.max_latency_ms),
        "--max-request-bytes": (server.max_request_bytes, SERVER_DEFAULTS.max_request_bytes),
        "--max-queue": (server.max_queue, SERVER_DEFAULTS.max_queue),
        "--drain-seconds": (server.drain_seconds, SERVER_DEFAULTS.drain_seconds),
        "--max-rows-per-request": (server.batching.max_rows_per_request, SERVER_DEFAULTS.batching.max_rows_per_request),
    }
    for flag, (value, default) in given.items():
        if value is not None and value != default:
            args += [flag, str(value)]
    if side.versions is not None:
        args += ["--model-versions", side.versions]
    for label, version in side.version_labels:
        args += ["--version-label", f"{label}={version}"]
    if server.handler is not None:
        args += ["--handler", server.handler]
    if server.batching.allowed_batch_sizes:
        args += ["--allowed-batch-sizes", ",".join(str(n) for n in sorted(server.batching.allowed_batch_sizes))]
    return args + server_code_args(spec.code)


def pod_labels(name: str, canary: bool) -> dict[str, str]:
    own = {k: v for k, v in serving_labels(name).items() if k != MODEL_SERVICE_LABEL}
    side = {CANARY_LABEL: name} if canary else {MODEL_SERVICE_LABEL: name}
    return {**own, **side, SERVING_LABEL: name, TRACK_LABEL: "canary" if canary else "stable"}


def build_deployment(
    owner: dict[str, Any],
    spec: KerasModelServiceSpec,
    model: str | DeploymentModel,
    default_image: str,
    *,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The stable Deployment (`model` a URI or the stable DeploymentModel), or the canary's (a DeploymentModel
    with canary=True); `replicas` overrides the spec's (a canary's count)."""
    name = owner["metadata"]["name"]
    side = stable_side(spec, model) if isinstance(model, str) else model
    canary = spec.canary if side.canary else None
    server = spec.server
    claims = pvc_claims([side.model_uri, spec.code.uri if spec.code else None], writable=[])
    volumes, mounts = pvc_volumes(claims)
    code_parts = code_mount(spec.code)
    volumes.extend(code_parts.volumes)
    mounts.extend(code_parts.mounts)
    probe_port = "http"
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": spec.image or default_image,
        "command": ["keras-server"],
        "args": server_args(model_name(owner, spec), spec, side),
        "ports": [{"name": "http", "containerPort": server.port, "protocol": "TCP"}],
        "env": [
            {"name": "KERAS_BACKEND", "value": spec.backend},
            {"name": "KERAS_OPERATOR_PVC_ROOT", "value": PVC_ROOT},
            {"name": "KERAS_OPERATOR_LOG_FORMAT", "value": "json"},
            {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
        ],
        "volumeMounts": mounts,
        # The server listens at once and is ready only after loading and warming up the model.
        # Timeouts are explicit: Kubernetes' default of 1 s fails probes that queue behind a burst of
        # large bodies on a busy pod. Readiness reacts within ~15 s (the Service stops sending to a pod
        # that cannot keep up); liveness tolerates ~60 s, as restarting a pod that is only slow drops
        # everything it holds and moves its load onto the others.
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": probe_port},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
            "successThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": probe_port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }
    if server.pre_stop_seconds:
        # exec, not the sleep action: that one needs Kubernetes 1.30.
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(server.pre_stop_seconds)]}}}
    requirements = resource_requirements(canary.resources or spec.resources if canary else spec.resources)
    if requirements:
        container["resources"] = requirements
    template = pod_template(
        container=container,
        labels=pod_labels(name, side.canary),
        volumes=volumes,
        user=spec.pod_template,
        restart_policy="Always",
    )
    # The preStop pause, then the server's drain, then a margin for its exit.
    template["spec"]["terminationGracePeriodSeconds"] = server.pre_stop_seconds + server.drain_seconds + 5
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {CANARY_LABEL: name} if side.canary else selector(name)},
        "template": template,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "progressDeadlineSeconds": 600,
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    elif spec.autoscaling is None:  # with an HPA, the HPA owns the replica count
        deployment_spec["replicas"] = spec.replicas
    object_labels = {**serving_labels(name), TRACK_LABEL: "canary" if side.canary else "stable"}
    metadata = object_meta(owner, canary_name(name) if side.canary else name, object_labels)
    if not side.canary:
        metadata.setdefault("annotations", {})[MODEL_SOURCE_ANNOTATION] = model_source(spec)
    return _hashed({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": deployment_spec})


ServiceTarget = Literal["stable", "both", "canary"]
"""What the Service NAME selects: the stable pods, both sides' (a canary splitting by pods), or the canary's."""


def _selector_of(name: str, selects: ServiceTarget) -> dict[str, str]:
    return {"stable": selector(name), "both": {SERVING_LABEL: name}, "canary": {CANARY_LABEL: name}}[selects]


def build_service(
    owner: dict[str, Any],
    spec: KerasModelServiceSpec,
    selects: ServiceTarget = "stable",
    service_name: str | None = None,
) -> dict[str, Any]:
    """The Service NAME (`selects` both sides while a canary shares traffic by pods), or a per-side Service
    (`service_name`) an HTTPRoute sends to."""
    name = owner["metadata"]["name"]
    return _hashed(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(owner, service_name or name, serving_labels(name)),
            "spec": {
                "type": "ClusterIP",
                "selector": _selector_of(name, selects),
                "ports": [{"name": "http", "port": spec.server.port, "targetPort": "http", "protocol": "TCP"}],
            },
        }
    )


def route_parent(owner: dict[str, Any], spec: KerasModelServiceSpec, gateway: str | None) -> dict[str, Any]:
    """The Gateway named NAMESPACE/NAME the route attaches to; without one, the Service NAME itself (Gateway API's
    mesh form, GAMMA: the mesh splits what is sent to the Service)."""
    if gateway:
        namespace, _, gateway_name = gateway.rpartition("/")
        parent = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway_name}
        return {**parent, "namespace": namespace} if namespace else parent
    return {"group": "", "kind": "Service", "name": owner["metadata"]["name"], "port": spec.server.port}


def build_route(
    owner: dict[str, Any], spec: KerasModelServiceSpec, canary_percent: int, gateway: str | None
) -> dict[str, Any]:
    """An HTTPRoute sending `canary_percent` of the requests to the canary's Service, the rest to the stable one."""
    name = owner["metadata"]["name"]
    port = spec.server.port
    backends = [
        {"group": "", "kind": "Service", "name": side_service_name(name, canary), "port": port, "weight": weight}
        for canary, weight in ((False, 100 - canary_percent), (True, canary_percent))
    ]
    return _hashed(
        {
            "apiVersion": f"{GATEWAY_GROUP}/v1",
            "kind": "HTTPRoute",
            "metadata": object_meta(owner, name, serving_labels(name)),
            "spec": {
                "parentRefs": [route_parent(owner, spec, gateway)],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
            },
        }
    )


def build_hpa(owner: dict[str, Any], spec: KerasModelServiceSpec) -> dict[str, Any] | None:
    scaling = spec.autoscaling
    if scaling is None:
        return None
    name = owner["metadata"]["name"]
    return _hashed(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": object_meta(owner, name, serving_labels(name)),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {
                                "type": "Utilization",
                                "averageUtilization": scaling.target_cpu_utilization_percentage,
                            },
                        },
                    }
                ],
            },
        }
    )
