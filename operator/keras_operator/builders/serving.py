"""KerasModelService -> Deployment running the model server, its Service, and an HPA when asked."""

from __future__ import annotations

from typing import Any

from keras_operator.api.common import GROUP
from keras_operator.api.serving import KerasModelServiceSpec
from keras_operator.builders.common import PVC_ROOT, labels, object_meta, resource_requirements, spec_hash
from keras_operator.builders.pod import pod_template, pvc_claims, pvc_volumes

CONTAINER = "server"
SELECTOR_LABEL = f"{GROUP}/model-service"
HASH_ANNOTATION = f"{GROUP}/spec-hash"


def serving_labels(name: str) -> dict[str, str]:
    return labels("keras-model-server", name, "model-service")


def selector(name: str) -> dict[str, str]:
    return {SELECTOR_LABEL: name}


def selector_text(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(name).items())


def model_name(owner: dict[str, Any], spec: KerasModelServiceSpec) -> str:
    return spec.model_name or owner["metadata"]["name"]


def url(owner: dict[str, Any], spec: KerasModelServiceSpec) -> str:
    meta = owner["metadata"]
    return f"http://{meta['name']}.{meta.get('namespace', 'default')}.svc.cluster.local:{spec.server.port}"


def _hashed(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object with a hash of itself, so the controller patches only what changed."""
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = spec_hash(obj)
    return obj


def server_args(name: str, spec: KerasModelServiceSpec, model_uri: str, port: int | None = None) -> list[str]:
    """`keras-trainer` arguments that serve this spec: the Deployment's and `kerasop serve`'s."""
    server = spec.server
    return [
        "serve",
        "--model-uri",
        model_uri,
        "--model-name",
        name,
        "--port",
        str(port or server.port),
        "--backend",
        spec.backend,
        "--max-batch-size",
        str(server.batching.max_batch_size),
        "--max-latency-ms",
        str(server.batching.max_latency_ms),
        "--max-request-bytes",
        str(server.max_request_bytes),
        "--max-queue",
        str(server.max_queue),
    ]


def build_deployment(
    owner: dict[str, Any], spec: KerasModelServiceSpec, model_uri: str, default_image: str
) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    server = spec.server
    claims = pvc_claims([model_uri], writable=[])
    volumes, mounts = pvc_volumes(claims)
    probe_port = "http"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or default_image,
        "command": ["keras-trainer"],
        "args": server_args(model_name(owner, spec), spec, model_uri),
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
    requirements = resource_requirements(spec.resources)
    if requirements:
        container["resources"] = requirements
    pod_labels = {**serving_labels(name), **selector(name)}
    template = pod_template(
        container=container, labels=pod_labels, volumes=volumes, user=spec.pod_template, restart_policy="Always"
    )
    template["spec"]["terminationGracePeriodSeconds"] = 30  # the server drains within 25 s
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(name)},
        "template": template,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "progressDeadlineSeconds": 600,
    }
    if spec.autoscaling is None:  # with an HPA, the HPA owns the replica count
        deployment_spec["replicas"] = spec.replicas
    return _hashed(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": object_meta(owner, name, serving_labels(name)),
            "spec": deployment_spec,
        }
    )


def build_service(owner: dict[str, Any], spec: KerasModelServiceSpec) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return _hashed(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": object_meta(owner, name, serving_labels(name)),
            "spec": {
                "type": "ClusterIP",
                "selector": selector(name),
                "ports": [{"name": "http", "port": spec.server.port, "targetPort": "http", "protocol": "TCP"}],
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
