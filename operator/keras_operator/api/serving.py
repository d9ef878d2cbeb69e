"""The KerasModelService API: serve a saved Keras model behind TF Serving REST and Open Inference v2."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from keras_operator.api.base import ApiModel, Rule, exactly_one_of
from keras_operator.api.common import API_VERSION, Backend, Condition, PodTemplate, Resources
from keras_operator.api.training import ObjectMeta

KIND = "KerasModelService"
PLURAL = "kerasmodelservices"


class TrainingJobRef(ApiModel):
    """A KerasTrainingJob in the same namespace."""

    name: Annotated[str, Field(min_length=1)]
    """Its metadata.name."""


class ModelSource(ApiModel):
    """The model to serve: exactly one of uri, trainingJobRef."""

    rules: ClassVar[tuple[Rule, ...]] = (exactly_one_of("uri", "trainingJobRef"),)

    uri: Annotated[str, Field(min_length=1)] | None = None
    """A .keras file or an exported SavedModel folder: pvc://CLAIM/PATH, s3://, gs://, https://, file:// or a
    path in the image."""
    training_job_ref: TrainingJobRef | None = None
    """Serve what this KerasTrainingJob produced (its status.modelUri), once it has succeeded."""


class Batching(ApiModel):
    """Dynamic server-side batching of concurrent requests."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Most rows in one model call; 1 turns batching off."""
    max_latency_ms: Annotated[float, Field(ge=0, le=10000)] = 5.0
    """Longest time a request waits for its batch to fill."""


class ServerSpec(ApiModel):
    """The model server's settings."""

    port: Annotated[int, Field(ge=1024, le=65535)] = 8080
    """Port of the HTTP API (both protocols and /metrics)."""
    batching: Batching = Field(default_factory=Batching)
    """Server-side batching."""
    max_request_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    """Larger request bodies are refused with 413."""
    max_queue: Annotated[int, Field(ge=1)] = 1024
    """Requests waiting for the model before new ones are refused with 503."""


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            holds=lambda a: a.min_replicas <= a.max_replicas,
        ),
    )

    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Fewest replicas."""
    max_replicas: Annotated[int, Field(ge=1)]
    """Most replicas."""
    target_cpu_utilization_percentage: Annotated[int, Field(ge=1, le=100, alias="targetCPUUtilizationPercentage")] = 70
    """Average CPU use, in percent of the request, the autoscaler aims for."""


class KerasModelServiceSpec(ApiModel):
    """A served Keras model."""

    model: ModelSource
    """The model to serve."""
    model_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", max_length=128)] | None = None
    """The NAME in /v1/models/NAME and /v2/models/NAME; default metadata.name."""
    backend: Backend = "tensorflow"
    """Keras 3 backend: tensorflow, jax or torch."""
    image: str | None = None
    """Server image (the trainer image); the operator's default when omitted."""
    replicas: Annotated[int, Field(ge=0)] = 1
    """Pods serving the model; the /scale subresource points here. Ignored while autoscaling is set."""
    autoscaling: Autoscaling | None = None
    """Scale on CPU with a HorizontalPodAutoscaler."""
    resources: Resources = Field(default_factory=Resources)
    """CPU, memory and GPUs per pod."""
    server: ServerSpec = Field(default_factory=ServerSpec)
    """Port, batching and limits of the server."""
    pod_template: PodTemplate | None = None
    """Pod settings merged into the generated pods."""


ServicePhase = Literal["Pending", "Loading", "Ready", "Failed"]


class ServingMetrics(ApiModel):
    """Serving figures summed over the ready pods, from their /metrics."""

    requests_total: int = 0
    """Inference requests answered."""
    errors_total: int = 0
    """Inference requests answered with a 4xx or 5xx status."""
    latency_p50_ms: float | None = None
    """Median inference latency (ms), from the server's histogram."""
    latency_p99_ms: float | None = None
    """99th percentile inference latency (ms)."""


class KerasModelServiceStatus(ApiModel):
    """The observed state of the service."""

    model_config = ConfigDict(extra="ignore")

    phase: ServicePhase | None = None
    """Pending, Loading, Ready or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation this status was computed for."""
    conditions: list[Condition] | None = None
    """Valid, ModelResolved, Available, Ready."""
    url: str | None = None
    """In-cluster URL of the model server."""
    model_uri: str | None = None
    """The model being served."""
    replicas: int | None = None
    """Pods of the Deployment (the /scale subresource reads this)."""
    ready_replicas: int | None = None
    """Pods ready to serve."""
    selector: str | None = None
    """Label selector of the pods (for the /scale subresource and HPAs)."""
    metrics: ServingMetrics | None = None
    """Serving figures, refreshed periodically."""
    message: str | None = None
    """A human-readable summary of the current state."""


class KerasModelService(ApiModel):
    """A whole KerasModelService resource."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["kerasoperator.dev/v1alpha1"] = API_VERSION
    kind: Literal["KerasModelService"] = KIND
    metadata: ObjectMeta
    spec: KerasModelServiceSpec
    status: KerasModelServiceStatus | None = None
