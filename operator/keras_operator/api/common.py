"""Types both kinds share: compute resources, the pod template, metav1.Condition."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema

from keras_operator.api.base import ApiModel

GROUP = "kerasoperator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Backend = Literal["tensorflow", "jax", "torch"]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$"


def _quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    return value


# Kubernetes quantities are strings or integers ("500m", 2, "8Gi").
Quantity = Annotated[
    str | int,
    AfterValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]

# Free-form Kubernetes fragments (tolerations, affinity, ...): the API server validates them
# when the Job is created, so we keep their schema open instead of copying the Pod schema.
K8sObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]


class Resources(ApiModel):
    """Compute resources for each pod; requests and limits are set to the same values."""

    gpus: Annotated[int, Field(ge=0)] = 0
    """Number of GPUs; becomes requests and limits of gpuResourceName."""
    gpu_resource_name: str = "nvidia.com/gpu"
    """Extended resource name of the GPU device plugin (e.g. amd.com/gpu)."""
    cpu: Quantity | None = None
    """CPU cores, as a Kubernetes quantity (e.g. "4" or "500m")."""
    memory: Quantity | None = None
    """Memory, as a Kubernetes quantity (e.g. "8Gi")."""


class PodMetadata(ApiModel):
    """Labels and annotations added to the generated pods."""

    labels: dict[str, str] | None = None
    """Extra labels for the pods (the operator's own labels win on conflict)."""
    annotations: dict[str, str] | None = None
    """Extra annotations for the pods."""


class PodSpecOverrides(ApiModel):
    """The parts of a PodSpec users may set; they are merged into the generated pod."""

    node_selector: dict[str, str] | None = None
    """Node labels the pods must run on (e.g. a GPU node pool)."""
    tolerations: list[K8sObject] | None = None
    """Tolerations, e.g. for tainted GPU nodes."""
    affinity: K8sObject | None = None
    """Affinity and anti-affinity rules."""
    env: list[K8sObject] | None = None
    """Extra environment variables for the main container."""
    env_from: list[K8sObject] | None = None
    """Extra environment sources (ConfigMaps, Secrets) for the main container, e.g. cloud credentials."""
    volumes: list[K8sObject] | None = None
    """Extra volumes for the pod."""
    volume_mounts: list[K8sObject] | None = None
    """Extra volume mounts for the main container."""
    image_pull_secrets: list[K8sObject] | None = None
    """Secrets for pulling the image from a private registry."""
    service_account_name: str | None = None
    """ServiceAccount for the pods (e.g. for workload identity to cloud storage); its token is mounted
    only when this is set."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""
    runtime_class_name: str | None = None
    """RuntimeClass of the pods (e.g. nvidia)."""
    scheduler_name: str | None = None
    """Scheduler for the pods."""


class PodTemplate(ApiModel):
    """Pod settings merged into what the operator generates."""

    metadata: PodMetadata | None = None
    """Labels and annotations for the pods."""
    spec: PodSpecOverrides | None = None
    """Pod spec fields for scheduling, environment and volumes."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A metav1.Condition."""

    model_config = ConfigDict(extra="ignore")

    type: str
    """Type of the condition, e.g. Valid, Created, Running, Succeeded, Failed."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str = ""
    """A CamelCase machine-readable reason for the last transition."""
    message: str = ""
    """A human-readable explanation."""
    last_transition_time: str | None = None
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was set for."""
