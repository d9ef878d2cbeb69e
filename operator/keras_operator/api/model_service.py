"""The KerasModelService API: serve a saved Keras model behind TF Serving REST and Open Inference v2."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from keras_operator.api.base import ApiModel, Rule, at_most_one_of, cel_raw_string, exactly_one_of
from keras_operator.api.common import (
    API_VERSION,
    Backend,
    CodeSpec,
    Condition,
    Image,
    Int32,
    PodTemplate,
    Resources,
    TrainingJobRef,
    Uri,
)
from keras_operator.api.training_job import ObjectMeta

KIND = "KerasModelService"
PLURAL = "kerasmodelservices"


VERSION_LABEL = r"^[a-z][a-z0-9_-]{0,62}$"


class VersionPolicy(ApiModel):
    """Which numbered versions of a base folder to serve, as TF Serving's model_version_policy: at most one of
    latest, all, specific; none set means latest 1."""

    rules: ClassVar[tuple[Rule, ...]] = (at_most_one_of("latest", "all", "specific"),)

    latest: Annotated[int, Field(ge=1, le=100)] | None = None
    """Serve the N highest versions."""
    all: bool | None = None
    """Serve every version (true)."""
    specific: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=100)] | None = None
    """Serve exactly these versions."""

    def mode(self) -> str:
        """The server's --model-versions argument: latest:N, all or specific:A,B."""
        if self.specific is not None:
            return "specific:" + ",".join(str(v) for v in sorted(set(self.specific)))
        if self.all:
            return "all"
        return f"latest:{self.latest or 1}"


def _labels_in_policy(source: ModelSource) -> bool:
    policy = source.version_policy
    if not source.version_labels or policy is None or policy.specific is None:
        return True
    return set(source.version_labels.values()) <= set(policy.specific)


class ModelSource(ApiModel):
    """The model to serve: exactly one of uri, trainingJobRef."""

    rules: ClassVar[tuple[Rule, ...]] = (
        exactly_one_of("uri", "trainingJobRef"),
        Rule(
            cel="!has(self.versionPolicy) || has(self.uri)",
            message="versionPolicy needs a uri: a base folder of numbered versions",
            holds=lambda m: m.version_policy is None or m.uri is not None,
        ),
        Rule(
            cel="!has(self.versionLabels) || has(self.uri)",
            message="versionLabels needs a uri: a base folder of numbered versions",
            holds=lambda m: m.version_labels is None or m.uri is not None,
        ),
        Rule(
            cel="!has(self.versionLabels) || !has(self.versionPolicy) || !has(self.versionPolicy.specific) || "
            "self.versionLabels.all(k, self.versionLabels[k] in self.versionPolicy.specific)",
            message="every version in versionLabels must be one of versionPolicy.specific",
            holds=_labels_in_policy,
        ),
        Rule(
            cel=f"!has(self.versionLabels) || self.versionLabels.all(k, k.matches({cel_raw_string(VERSION_LABEL)}))",
            message="versionLabels names are lowercase letters, digits, '-' and '_', starting with a letter",
            holds=lambda m: all(re.fullmatch(VERSION_LABEL, k) for k in m.version_labels or {}),
        ),
    )

    uri: Uri | None = None
    """A .keras file, an exported SavedModel folder, or a base folder of numbered versions (BASE/1/, BASE/2/,
    each holding a .keras file or a SavedModel): pvc://CLAIM/PATH, s3://, gs://, https://, file:// or a path
    in the image."""
    training_job_ref: TrainingJobRef | None = None
    """Serve what this KerasTrainingJob produced (its status.modelUri), once it has succeeded."""
    version_policy: VersionPolicy | None = None
    """Which versions of a base folder to serve (default: the latest one). The server watches the folder:
    new versions are loaded and warmed up before they take requests."""
    version_labels: Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(max_length=32)] | None = None
    """Names for versions (stable: 1, canary: 2), reachable at /v1/models/NAME/labels/LABEL."""


def _sizes_fit(b: Batching) -> bool:
    sizes = b.allowed_batch_sizes
    return sizes is None or (len(set(sizes)) == len(sizes) and max(sizes) == b.max_batch_size)


class Batching(ApiModel):
    """Dynamic server-side batching of concurrent requests."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.allowedBatchSizes) || ("
            "self.allowedBatchSizes.all(s, s <= (has(self.maxBatchSize) ? self.maxBatchSize : 32)) && "
            "(has(self.maxBatchSize) ? self.maxBatchSize : 32) in self.allowedBatchSizes && "
            "self.allowedBatchSizes.all(s, self.allowedBatchSizes.filter(t, t == s).size() == 1))",
            message="allowedBatchSizes must not repeat a size, and its largest must be maxBatchSize",
            holds=_sizes_fit,
        ),
    )

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    """Most rows in one model call; 1 turns batching off."""
    max_latency_ms: Annotated[float, Field(ge=0, le=10000)] = 5.0
    """Longest time a request waits for its batch to fill."""
    allowed_batch_sizes: (
        Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=32)] | None
    ) = None
    """Batch sizes the model is called with, the largest equal to maxBatchSize (TF Serving's
    allowed_batch_sizes): a batch is padded up to the next one. Default: powers of two up to maxBatchSize."""
    max_rows_per_request: Annotated[int, Field(ge=1)] | None = None
    """Requests of more rows are refused with 400 (default: no cap; larger requests run in chunks)."""


HANDLER_REF = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"  # module:Class, as model.callable's module:function


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
    pre_stop_seconds: Annotated[int, Field(ge=0, le=300)] = 5
    """How long a deleted pod keeps serving before it is told to stop: Services and proxies learn of the
    deletion at the same time as the pod, so one that stops listening at once gets refused connections."""
    drain_seconds: Annotated[int, Field(ge=1, le=3600)] = 20
    """How long a stopping server lets requests in flight finish; those still running then get a 503 with
    Retry-After. The pod's grace period is preStopSeconds + drainSeconds + 5."""
    handler: Annotated[str, Field(pattern=HANDLER_REF, max_length=256)] | None = None
    """Pre- and post-processing in the server's own process, "module:Class" (the module from spec.code or
    the image): its preprocess(inputs) turns each batch of request values into model inputs, its
    postprocess(outputs) turns the model's outputs into the answer (docs/serving.md)."""


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) on CPU utilisation."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            holds=lambda a: a.min_replicas <= a.max_replicas,
        ),
    )

    min_replicas: Annotated[Int32, Field(ge=1)] = 1
    """Fewest replicas."""
    max_replicas: Annotated[Int32, Field(ge=1)]
    """Most replicas."""
    target_cpu_utilization_percentage: Annotated[int, Field(ge=1, le=100, alias="targetCPUUtilizationPercentage")] = 70
    """Average CPU use, in percent of the request, the autoscaler aims for."""


class CanaryModel(ApiModel):
    """The canary's model: exactly one of uri, trainingJobRef, version."""

    rules: ClassVar[tuple[Rule, ...]] = (exactly_one_of("uri", "trainingJobRef", "version"),)

    uri: Uri | None = None
    """A .keras file or SavedModel folder (the same URI forms as spec.model.uri)."""
    training_job_ref: TrainingJobRef | None = None
    """What this KerasTrainingJob produced, once it has succeeded."""
    version: Annotated[int, Field(ge=0)] | None = None
    """A numbered version of spec.model.uri's base folder."""


class CanaryAnalysis(ApiModel):
    """How the operator judges the canary against the stable side, one window at a time."""

    interval_seconds: Annotated[int, Field(ge=5, le=3600)] = 60
    """Length of a window."""
    min_requests: Annotated[int, Field(ge=1)] = 20
    """Fewest canary requests in a window for it to be judged; a quieter window counts neither way."""
    max_error_rate_increase: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Rolled back when the canary's error rate exceeds the stable side's by more than this (0.01: one point)."""
    max_p99_ratio: Annotated[float, Field(ge=1, le=1000)] = 1.5
    """Rolled back when the canary's p99 latency exceeds the stable side's times this."""
    min_p99_increase_ms: Annotated[float, Field(ge=0, le=60000)] = 5.0
    """...and by more than this many milliseconds: latency histograms make small latencies jumpy (2 ms vs 3.5 ms
    is a ratio of 1.75 and no real difference)."""
    auto_promote: bool = False
    """Make the canary's model the stable one after successfulIntervals healthy windows in a row."""
    successful_intervals: Annotated[int, Field(ge=1, le=1000)] = 5
    """Healthy windows in a row before an automatic promotion."""


class Canary(ApiModel):
    """A second model in its own Deployment, taking a share of the traffic, judged by the operator."""

    model: CanaryModel
    """The canary's model."""
    traffic_percent: Annotated[int, Field(ge=0, le=100)] = 10
    """Share of requests sent to the canary. Exact per request with Gateway API (an HTTPRoute's weights);
    otherwise the canary gets this share of the pods behind the one Service, rounded to whole pods."""
    replicas: Annotated[Int32, Field(ge=1)] = 1
    """Canary pods when traffic is split by an HTTPRoute (with a split by pods, the operator sizes the
    canary to trafficPercent)."""
    resources: Resources | None = None
    """CPU, memory and GPUs per canary pod; default spec.resources."""
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)
    """Automatic rollback (and promotion) thresholds."""


class KerasModelServiceSpec(ApiModel):
    """A served Keras model."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!has(self.canary) || !has(self.canary.model.version) || has(self.model.uri)",
            message="canary.model.version needs model.uri: a base folder of numbered versions",
            holds=lambda s: s.canary is None or s.canary.model.version is None or s.model.uri is not None,
        ),
    )

    model: ModelSource
    """The model to serve."""
    model_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", max_length=128)] | None = None
    """The NAME in /v1/models/NAME and /v2/models/NAME; default metadata.name."""
    backend: Backend = "tensorflow"
    """Keras 3 backend: tensorflow, jax or torch."""
    image: Image | None = None
    """Server image (the trainer image); the operator's default when omitted."""
    replicas: Annotated[Int32, Field(ge=0)] = 1
    """Pods serving the model; the /scale subresource points here. Ignored while autoscaling is set."""
    autoscaling: Autoscaling | None = None
    """Scale on CPU with a HorizontalPodAutoscaler."""
    resources: Resources = Field(default_factory=Resources)
    """CPU, memory and GPUs per pod."""
    server: ServerSpec = Field(default_factory=ServerSpec)
    """Port, batching and limits of the server."""
    pod_template: PodTemplate | None = None
    """Pod settings merged into the generated pods."""
    canary: Canary | None = None
    """A canary model taking a share of the traffic; remove it (or set trafficPercent 0) to roll back by hand,
    move its model to spec.model to promote it."""
    code: CodeSpec | None = None
    """The user's Python, imported before the model loads. Not needed for a model trained by this
    operator: a server imports the code recorded with the run it serves (trainingJobRef or a run's URI)."""


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


CanaryState = Literal["Starting", "Progressing", "Promoting", "Promoted", "RolledBack"]


class SideStatus(ApiModel):
    """One side of a canary rollout, over the last analysis window."""

    model_uri: str | None = None
    """The model this side serves."""
    replicas: int | None = None
    """Its pods."""
    ready_replicas: int | None = None
    """Its pods ready to serve."""
    traffic_percent: int | None = None
    """Its share of the requests (with a split by pods: its share of the ready pods)."""
    requests: int | None = None
    """Inference requests it answered in the last window."""
    error_rate: float | None = None
    """Share of those answered with a 4xx or 5xx status."""
    latency_p99_ms: float | None = None
    """Their 99th percentile latency (ms)."""


class CanaryStatus(ApiModel):
    """Where the canary rollout stands, both sides side by side."""

    state: CanaryState | None = None
    """Starting, Progressing, Promoting, Promoted or RolledBack."""
    split: Literal["HTTPRoute", "Pods"] | None = None
    """How traffic is split: by an HTTPRoute's weights, or by pods behind the one Service."""
    stable: SideStatus | None = None
    """The stable side."""
    canary: SideStatus | None = None
    """The canary side."""
    healthy_intervals: int | None = None
    """Healthy windows in a row."""
    comparing: str | None = None
    """The models compared, STABLE => CANARY: a decision (promotion, rollback) holds for these two; a new canary
    model starts over."""
    message: str | None = None
    """Why the canary is where it is."""


class KerasModelServiceStatus(ApiModel):
    """The observed state of the service."""

    model_config = ConfigDict(extra="ignore")

    phase: ServicePhase | None = None
    """Pending, Loading, Ready or Failed."""
    observed_generation: int | None = None
    """The .metadata.generation this status was computed for."""
    conditions: list[Condition] | None = None
    """Valid, ModelResolved, Available, Ready, and CanaryReady and CanaryHealthy with a canary."""
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
    canary: CanaryStatus | None = None
    """The canary rollout, when spec.canary is set (or was, until its decision)."""
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

    @model_validator(mode="after")
    def _service_name(self) -> KerasModelService:
        problem = name_problem(self.metadata.name)
        if problem:
            raise ValueError(problem)
        return self


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a KerasModelService's (None when it can): the Services NAME, NAME-stable and
    NAME-canary are DNS-1035 labels, which start with a letter."""
    if not name[:1].isalpha():
        return f"metadata.name: {name!r} must start with a letter (it names Services)"
    return None
