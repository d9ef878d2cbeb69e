"""Types both kinds share: compute resources, the pod template, metav1.Condition."""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from keras_operator.api.base import ApiModel, Rule, cel_raw_string, exactly_one_of
from keras_operator.api.limits import INT32_MAX

GROUP = "kerasoperator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Backend = Literal["tensorflow", "jax", "torch"]

QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$"


def _quantity(value: str | int) -> str | int:
    if isinstance(value, str) and not re.match(QUANTITY_PATTERN, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 8Gi)")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{value} is negative: a quantity of CPU or memory is 0 or more")
    return value


# Kubernetes quantities are strings or integers ("500m", 2, "8Gi"); the pattern keeps strings non-negative
# (no sign), the minimum integers.
Quantity = Annotated[
    str | int,
    AfterValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "minimum": 0}),
]

# The API server's rules for the names and labels the operator writes into generated objects: a spec that
# breaks them is refused here, naming its field, instead of failing when the object is created.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"

SubdomainName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN)]
"""The name of a ConfigMap, ServiceAccount, PriorityClass, PersistentVolumeClaim..."""
OptionalSubdomainName = Annotated[str, Field(max_length=253, pattern=f"^({DNS1123_SUBDOMAIN[1:-1]})?$")]
"""A name, or "" for none (the API server defaults an empty priorityClassName or serviceAccountName)."""
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
Int32 = Annotated[int, Field(le=INT32_MAX)]
"""An integer the operator writes into an int32 field of a generated object (replicas, backoffLimit)."""
RESOURCE_NAME = rf"^({DNS1123_SUBDOMAIN[1:-1]}/)?{_LABEL_NAME}$"
"""An extended resource's name, e.g. nvidia.com/gpu."""
Image = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\s]+$")]


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a label or annotation key ([PREFIX/]NAME), or None."""
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, prefix)):
        return f"key {key!r}: its prefix must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
    if not name or len(name) > 63 or not re.fullmatch(_LABEL_NAME, name):
        return (
            f"key {key!r}: its name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit"
        )
    return None


def _qualified_keys(mapping: dict[str, Any] | None) -> dict[str, Any] | None:
    for key in mapping or {}:
        if problem := qualified_name_problem(key):
            raise ValueError(problem)
    return mapping


# Kubernetes refuses an object whose annotations, keys and values together, exceed 256 KiB.
ANNOTATIONS_LIMIT = 256 * 1024


def _annotations_fit(mapping: dict[str, str] | None) -> dict[str, str] | None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in (mapping or {}).items())
    if size > ANNOTATIONS_LIMIT:
        raise ValueError(f"{size // 1024} KiB in all; Kubernetes allows {ANNOTATIONS_LIMIT // 1024} KiB")
    return _qualified_keys(mapping)


Labels = Annotated[dict[str, LabelValue], AfterValidator(_qualified_keys)]

# pvc://CLAIM/PATH: the claim becomes a volume's claimName and part of a mount path, so it must be a
# PersistentVolumeClaim name. The scheme is matched in any case, as urlparse does.
PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(/.*)?$"
_PVC_MESSAGE = (
    "a pvc:// URI is pvc://CLAIM/PATH, CLAIM the name of a PersistentVolumeClaim (lowercase letters, "
    "digits, '-' and '.')"
)


def _uri(value: str) -> str:
    try:
        parsed = urlparse(value)
    except ValueError as exc:  # e.g. an unclosed [ in the host
        raise ValueError(f"{value!r} is not a valid URI: {exc}") from exc
    if re.match(r"^[pP][vV][cC]:", value) and (not re.match(PVC_URI, value) or len(parsed.netloc) > 253):
        raise ValueError(_PVC_MESSAGE)
    return value


Uri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!self.matches({cel_raw_string('^[pP][vV][cC]:')}) "
                    f"|| self.matches({cel_raw_string(PVC_URI)})",
                    "message": _PVC_MESSAGE,
                }
            ]
        },
    ),
    AfterValidator(_uri),
]
"""A model or data location: pvc://CLAIM/PATH, s3://, gs://, https://, file:// or a plain path."""

# Free-form Kubernetes fragments (tolerations, affinity, ...): the API server validates them
# when the Job is created, so we keep their schema open instead of copying the Pod schema.
K8sObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]


class Resources(ApiModel):
    """Compute resources for each pod; requests and limits are set to the same values."""

    gpus: Annotated[int, Field(ge=0)] = 0
    """Number of GPUs; becomes requests and limits of gpuResourceName."""
    gpu_resource_name: Annotated[str, Field(max_length=317, pattern=RESOURCE_NAME)] = "nvidia.com/gpu"
    """Extended resource name of the GPU device plugin (e.g. amd.com/gpu)."""
    cpu: Quantity | None = None
    """CPU cores, as a Kubernetes quantity (e.g. "4" or "500m")."""
    memory: Quantity | None = None
    """Memory, as a Kubernetes quantity (e.g. "8Gi")."""


class PodMetadata(ApiModel):
    """Labels and annotations added to the generated pods."""

    labels: Labels | None = None
    """Extra labels for the pods (the operator's own labels win on conflict)."""
    annotations: Annotated[dict[str, str], AfterValidator(_annotations_fit)] | None = None
    """Extra annotations for the pods."""


class PodSpecOverrides(ApiModel):
    """The parts of a PodSpec users may set; they are merged into the generated pod."""

    node_selector: Labels | None = None
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
    service_account_name: OptionalSubdomainName | None = None
    """ServiceAccount for the pods (e.g. for workload identity to cloud storage); its token is mounted
    only when this is set."""
    priority_class_name: OptionalSubdomainName | None = None
    """PriorityClass of the pods."""
    runtime_class_name: SubdomainName | None = None
    """RuntimeClass of the pods (e.g. nvidia)."""
    scheduler_name: OptionalSubdomainName | None = None
    """Scheduler for the pods."""

    @model_validator(mode="after")
    def _no_collisions(self) -> PodSpecOverrides:
        """The operator's volumes and mount paths are its own: a user's of the same name or path would
        make the API server refuse the pod (a duplicate) or hide the config, token or data it mounts."""
        for i, volume in enumerate(self.volumes or []):
            name = volume.get("name")
            if isinstance(name, str) and (name in RESERVED_VOLUMES or re.fullmatch(r"pvc-\d+", name)):
                raise ValueError(
                    f"volumes[{i}].name: {name!r} is a volume of the operator's (it uses "
                    f"{', '.join(sorted(RESERVED_VOLUMES))} and pvc-N); choose another name"
                )
        for i, mount in enumerate(self.volume_mounts or []):
            path = mount.get("mountPath")
            if not isinstance(path, str) or not path:
                continue
            clean = posixpath.normpath(path)
            if clean in RESERVED_MOUNT_PATHS or clean == PVC_MOUNT_ROOT or clean.startswith(PVC_MOUNT_ROOT + "/"):
                raise ValueError(
                    f"volumeMounts[{i}].mountPath: {path!r} is where the operator mounts its own volumes "
                    f"({', '.join(sorted(RESERVED_MOUNT_PATHS))}, and pvc:// claims under {PVC_MOUNT_ROOT}); "
                    "choose another path"
                )
        return self


CODE_DIR = "/opt/keras-operator/code"
"""Where a spec.code ConfigMap is mounted in the trainer's and the server's pods."""
CODE_DIR_ENV = "KERAS_TRAINER_CODE_DIR"
"""The trainer's variable naming where the code ConfigMap is (CODE_DIR in a pod; a folder in a local run)."""
# The volumes and mount paths the operator adds to every pod (builders/pod.py, training.py, serving.py;
# tests/operator/api/test_hostile_specs.py checks they are all listed here).
RESERVED_VOLUMES = frozenset({"config", "scratch", "progress-token", "code"})
RESERVED_MOUNT_PATHS = frozenset(
    {"/etc/keras-operator", "/tmp", "/var/run/secrets/kerasoperator.dev/progress", CODE_DIR}
)
PVC_MOUNT_ROOT = "/mnt/pvc"


PYTHON_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
# An absolute folder, not the root.
IMAGE_FOLDER = r"^/[A-Za-z0-9_.@+-]+(/[A-Za-z0-9_.@+-]+)*/?$"


class CodeSpec(ApiModel):
    """The user's Python (custom layers, losses, metrics, the model.callable module): exactly one of
    configMap, uri, path. The training records the code it ran beside its model, and a server that
    serves that run imports the same code before loading it."""

    rules: ClassVar[tuple[Rule, ...]] = (exactly_one_of("configMap", "uri", "path"),)

    config_map: SubdomainName | None = None
    """A ConfigMap in the same namespace whose keys are the files (models.py, layers.py); mounted at
    /opt/keras-operator/code, which goes first on the Python path."""
    uri: Uri | None = None
    """A folder, or a .tar.gz/.tgz/.zip archive of one: pvc://CLAIM/PATH, s3://, gs://, file:// or a
    plain path; fetched (and unpacked) when the container starts."""
    path: Annotated[str, Field(max_length=4096, pattern=IMAGE_FOLDER)] | None = None
    """A folder inside the image (an image built FROM the trainer image with the code copied in): the
    production route, nothing fetched or installed at start."""
    imports: Annotated[list[Annotated[str, Field(pattern=PYTHON_MODULE)]], Field(max_length=100)] | None = None
    """Modules imported before a model is built or loaded, so their keras.saving.register_keras_serializable
    classes are known; default every top-level module and package of the code."""
    requirements: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=1024)]], Field(max_length=100)] | None
    ) = None
    """pip requirement specifiers installed at container start (into a scratch folder, each start
    again): needs the package index reachable from the pod and costs start-up time; pin versions
    (name==1.2.3) for repeatable runs, or bake them into an image."""


class PodTemplate(ApiModel):
    """Pod settings merged into what the operator generates."""

    metadata: PodMetadata | None = None
    """Labels and annotations for the pods."""
    spec: PodSpecOverrides | None = None
    """Pod spec fields for scheduling, environment and volumes."""


class TrainingJobRef(ApiModel):
    """A KerasTrainingJob in the same namespace."""

    name: Annotated[str, Field(min_length=1, max_length=53, pattern=DNS1123_LABEL)]
    """Its metadata.name."""


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
