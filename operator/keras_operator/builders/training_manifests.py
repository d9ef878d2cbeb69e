"""KerasTrainingJob -> the batch/v1 Job that runs the trainer.

The trainer's job file (api/jobfile.py: the run's identity and the spec sections it uses, every default
filled in) travels in the pod template, as an annotation the downward API mounts as a file: one object
to create, no ConfigMap to keep in step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from keras_operator.api import jobfile
from keras_operator.api.parse import InvalidResource
from keras_operator.api.report import EXIT_INVALID_SPEC, TERMINATION_MESSAGE_PATH
from keras_operator.api.training_job import COORDINATOR_PORT, KerasTrainingJobSpec
from keras_operator.api.wire import (
    COMPLETION_INDEX_ANNOTATION,
    GENERATION_ANNOTATION,
    KUEUE_PRIORITY_CLASS_LABEL,
    KUEUE_QUEUE_LABEL,
    PROGRESS_AUDIENCE,
    SPEC_HASH_ANNOTATION,
    STARTED_FROM_ANNOTATION,
    TRAINER_CONFIG_ANNOTATION,
    TRAINER_CONTAINER,
    TRAINING_JOB_LABEL,
)
from keras_operator.builders.code import code_mount
from keras_operator.builders.metadata import PVC_ROOT, labels, object_meta, resource_requirements, spec_hash
from keras_operator.builders.pod import pod_template, pvc_claims, pvc_volumes

CONFIG_DIR = "/etc/keras-operator"
CONFIG_KEY = "job.yaml"
COORDINATOR_PORT_NAME = "coordinator"


def job_name(name: str) -> str:
    return f"{name}-train"


def worker_service_name(name: str) -> str:
    return f"{name}-workers"


def training_labels(name: str) -> dict[str, str]:
    return labels("keras-trainer", name, TRAINING_JOB_LABEL)


def job_spec_hash(spec: KerasTrainingJobSpec) -> str:
    """What the Job was made from, less what may change while it runs (suspend flips the Job in place)."""
    dumped = spec.dump()
    dumped.get("runPolicy", {}).pop("suspend", None)
    if spec.distribution.workers == 1:
        # A one-pod training hashes as before the field existed: Jobs made by an older operator still match.
        dumped.pop("distribution", None)
    return spec_hash(dumped)


def desired_suspend(spec: KerasTrainingJobSpec) -> bool | None:
    """What the Job's spec.suspend should be, or None when Kueue owns it (a queued Job is Kueue's to
    admit, and to suspend again on preemption: the operator never writes it)."""
    return None if spec.run_policy.queue_name else spec.run_policy.suspend


# Kubernetes refuses an object whose annotations, keys and values together, exceed 256 KiB. The job file
# stays well under it (about 1 KiB for the examples); this leaves room for the user's own annotations.
ANNOTATION_LIMIT = 256 * 1024
JOB_FILE_LIMIT = 192 * 1024


def trainer_config(owner: dict[str, Any], spec: KerasTrainingJobSpec) -> dict[str, Any]:
    """What the trainer reads: its job file, for the run identified by the owner's uid."""
    return jobfile.from_spec(owner["metadata"], spec).dump()


def trainer_config_text(owner: dict[str, Any], spec: KerasTrainingJobSpec) -> str:
    # JSON, which the trainer's YAML reader takes as it is: about 20x cheaper to write than YAML.
    text = json.dumps(trainer_config(owner, spec), separators=(",", ":"))
    check_job_file_size(text, spec)
    return text


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode()) if value is not None else 0


def check_job_file_size(text: str, spec: KerasTrainingJobSpec) -> None:
    """InvalidResource naming the field that makes the job file too big for the pod annotation."""
    user = (spec.pod_template.metadata.annotations or {}) if spec.pod_template and spec.pod_template.metadata else {}
    size = len(text.encode())
    total = size + len(TRAINER_CONFIG_ANNOTATION) + sum(len(k.encode()) + len(v.encode()) for k, v in user.items())
    if size <= JOB_FILE_LIMIT and total <= ANNOTATION_LIMIT:
        return
    model, data = spec.model, spec.data
    candidates = {
        "spec.model.config": _size(model.config),
        "spec.model.layers": _size([layer.dump() for layer in model.layers or []]),
        "spec.model.application": _size(model.application.dump() if model.application else None),
        "spec.data": _size(data.dump()),
        "spec.training": _size(spec.training.dump()),
        "spec.podTemplate.metadata.annotations": _size(user) if size <= JOB_FILE_LIMIT else 0,
    }
    field = max(candidates, key=lambda name: candidates[name])
    hint = {
        "spec.model.config": "; save the model (model.save) and give spec.model.uri, or build it in "
        "spec.model.callable",
        "spec.model.layers": "; give the model as spec.model.uri or spec.model.callable",
        "spec.podTemplate.metadata.annotations": "; move large values out of the pod annotations",
    }.get(field, "")
    raise InvalidResource(
        f"{field}: too large for the trainer's job file ({candidates[field] // 1024} KiB of a "
        f"{size // 1024} KiB file; the pod annotation that carries it holds at most "
        f"{JOB_FILE_LIMIT // 1024} KiB, Kubernetes allows {ANNOTATION_LIMIT // 1024} KiB of annotations "
        f"in all){hint}"
    )


@dataclass(frozen=True)
class ProgressEndpoint:
    """Where trainers push their progress: the operator's endpoint, as pods reach it."""

    base_url: str
    ca_pem: str | None = None


class ProgressSettings(Protocol):
    progress_url: str | None
    progress_port: int

    def progress_ca(self) -> str | None: ...


def progress_endpoint(settings: ProgressSettings) -> ProgressEndpoint | None:
    """Where this operator's trainers push progress (from its settings); None when there is no endpoint
    they can reach, and progress comes from their logs."""
    if not (settings.progress_url and settings.progress_port):
        return None
    return ProgressEndpoint(settings.progress_url, settings.progress_ca())


PROGRESS_TOKEN_DIR = "/var/run/secrets/kerasoperator.dev/progress"
PROGRESS_TOKEN_SECONDS = 3600  # the kubelet renews the file before it expires


def progress_path(namespace: str, name: str) -> str:
    return f"/v1/namespaces/{namespace}/kerastrainingjobs/{name}/progress"


def _progress_pod_parts(
    owner: dict[str, Any], endpoint: ProgressEndpoint
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(env, volume, mount) that let the trainer push: the URL, a token bound to this pod and to the
    operator's audience only (a projected service-account token), and the CA to trust."""
    meta = owner["metadata"]
    env = [
        {
            "name": "KERAS_OPERATOR_PROGRESS_URL",
            "value": endpoint.base_url.rstrip("/") + progress_path(meta.get("namespace") or "default", meta["name"]),
        },
        {"name": "KERAS_OPERATOR_PROGRESS_TOKEN_FILE", "value": f"{PROGRESS_TOKEN_DIR}/token"},
    ]
    if endpoint.ca_pem:
        env.append({"name": "KERAS_OPERATOR_PROGRESS_CA", "value": endpoint.ca_pem})
    volume = {
        "name": "progress-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": PROGRESS_AUDIENCE,
                        "expirationSeconds": PROGRESS_TOKEN_SECONDS,
                        "path": "token",
                    }
                }
            ]
        },
    }
    return env, volume, {"name": "progress-token", "mountPath": PROGRESS_TOKEN_DIR, "readOnly": True}


def build_job(
    owner: dict[str, Any],
    spec: KerasTrainingJobSpec,
    default_image: str,
    progress: ProgressEndpoint | None = None,
    start_from: str | None = None,
) -> dict[str, Any]:
    """The Job. `start_from`: the model spec.model.trainingJobRef resolved to, which the job file carries as
    spec.model.uri; the Job's spec hash stays the spec's own, as the resource states it."""
    stated = spec
    if start_from is not None:
        spec = jobfile.starting_from(spec, start_from)
    name = owner["metadata"]["name"]
    job_labels = training_labels(name)
    policy = spec.run_policy
    if policy.queue_name:
        job_labels[KUEUE_QUEUE_LABEL] = policy.queue_name

    claims = pvc_claims(
        [
            spec.data.train.uri,
            spec.data.validation.uri if spec.data.validation else None,
            spec.model.uri,
            spec.output.uri,
            code.uri if (code := spec.code_source()) else None,
        ],
        writable=[spec.output.uri],
    )
    volumes, mounts = pvc_volumes(claims)
    volumes.insert(
        0,
        {
            "name": "config",
            "downwardAPI": {
                "items": [
                    {
                        "path": CONFIG_KEY,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{TRAINER_CONFIG_ANNOTATION}']"},
                    }
                ]
            },
        },
    )
    mounts.insert(0, {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    env = [
        {"name": "KERAS_BACKEND", "value": spec.backend},
        {"name": "KERAS_OPERATOR_PVC_ROOT", "value": PVC_ROOT},
        {"name": "KERAS_OPERATOR_LOG_FORMAT", "value": "json"},
        {"name": "KERAS_TRAINER_TERMINATION_LOG", "value": TERMINATION_MESSAGE_PATH},
        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
    ]
    if progress is not None:
        progress_env, progress_volume, progress_mount = _progress_pod_parts(owner, progress)
        env.extend(progress_env)
        volumes.append(progress_volume)
        mounts.append(progress_mount)
    # The trainer reads where the code comes from in its job file; only a ConfigMap needs a volume.
    code_parts = code_mount(spec.code_source())
    volumes.extend(code_parts.volumes)
    mounts.extend(code_parts.mounts)
    env.extend(code_parts.env)

    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or default_image,
        "command": ["keras-trainer"],
        "args": ["train", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": env,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # A trainer that dies before writing its result (OOM, segfault) still leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    requirements = resource_requirements(spec.resources)
    if requirements:
        container["resources"] = requirements
    extra: dict[str, Any] = {}
    if policy.priority_class_name:
        extra["priorityClassName"] = policy.priority_class_name
    if spec.output.checkpoints:
        # On SIGTERM the trainer saves a checkpoint at the next step end: time for that save and the exit.
        extra["terminationGracePeriodSeconds"] = spec.output.checkpoints.grace_period_seconds()
    template = pod_template(
        container=container,
        labels=job_labels,
        volumes=volumes,
        user=spec.pod_template,
        restart_policy="Never",
        extra=extra,
    )
    # Ours after the user's: the trainer must read the config the operator validated.
    template["metadata"]["annotations"] = {
        **template["metadata"].get("annotations", {}),
        TRAINER_CONFIG_ANNOTATION: trainer_config_text(owner, spec),
    }

    meta = object_meta(owner, job_name(name), job_labels)
    if policy.workload_priority_class:
        # On the Job only: Kueue takes the Workload's priority from its Job; the pods need none of it.
        meta["labels"] = {**meta["labels"], KUEUE_PRIORITY_CLASS_LABEL: policy.workload_priority_class}
    meta["annotations"] = {SPEC_HASH_ANNOTATION: job_spec_hash(stated)}
    if start_from is not None:
        meta["annotations"][STARTED_FROM_ANNOTATION] = start_from
    if owner["metadata"].get("generation") is not None:
        meta["annotations"][GENERATION_ANNOTATION] = str(owner["metadata"]["generation"])
    job_spec: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        # Kueue admits a queued Job by un-suspending it; the operator never does.
        "suspend": policy.suspend or bool(policy.queue_name),
        "podFailurePolicy": {
            "rules": [
                # The trainer exits with this code for mistakes in the spec: retrying cannot help.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": TRAINER_CONTAINER,
                        "operator": "In",
                        "values": [EXIT_INVALID_SPEC],
                    },
                },
                # Preemption and node drains are not the training's fault; checkpoints resume it.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": template,
    }
    if policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if spec.distribution.workers > 1:
        _distribute(job_spec, name, owner["metadata"].get("namespace") or "default", spec.distribution.workers)
    # No ttlSecondsAfterFinished on the Job: the TTL controller could delete a finished Job before the
    # operator has read its result. The operator deletes it itself once the status holds the result.
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def _distribute(job_spec: dict[str, Any], name: str, namespace: str, workers: int) -> None:
    """Make the Job one group of `workers` pods training together (JAX's multi-process runtime).

    An Indexed Job gives each pod a stable index and hostname (JOB-INDEX); the headless Service
    (build_worker_service) named in the template's subdomain makes JOB-0.SERVICE.NAMESPACE.svc resolve
    to worker 0, where JAX's coordination service listens. keras.distribution.initialize() reads the
    three KERAS_DISTRIBUTION_* variables.

    Success: worker 0's (successPolicy; the others are stopped then). Servers before 1.31 drop the
    field (it is beta from 1.31, GA in 1.33), and the Job then waits for every worker, which all end
    together anyway. Failure: JAX ends every worker when one fails, so the group restarts together and
    resumes from worker 0's checkpoint; each restart costs `workers` pod failures, hence a backoff
    limit of runPolicy.backoffLimit group restarts. The podFailurePolicy stays: a spec error (exit 2)
    fails the Job, a disruption is not counted.
    """
    job_spec["backoffLimit"] = job_spec["backoffLimit"] * workers
    job_spec["completionMode"] = "Indexed"
    job_spec["completions"] = workers
    job_spec["parallelism"] = workers
    job_spec["successPolicy"] = {"rules": [{"succeededIndexes": "0"}]}
    pod = job_spec["template"]["spec"]
    service = worker_service_name(name)
    pod["subdomain"] = service
    container = next(c for c in pod["containers"] if c["name"] == TRAINER_CONTAINER)
    coordinator = f"{job_name(name)}-0.{service}.{namespace}.svc:{COORDINATOR_PORT}"
    container["env"] = [
        *container["env"],
        {"name": "KERAS_DISTRIBUTION_JOB_ADDRESSES", "value": coordinator},
        {"name": "KERAS_DISTRIBUTION_NUM_PROCESSES", "value": str(workers)},
        {
            "name": "KERAS_DISTRIBUTION_PROCESS_ID",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
    ]
    container["ports"] = [
        *container.get("ports", []),
        {"name": COORDINATOR_PORT_NAME, "containerPort": COORDINATOR_PORT, "protocol": "TCP"},
    ]


def build_worker_service(owner: dict[str, Any], spec: KerasTrainingJobSpec) -> dict[str, Any] | None:
    """The headless Service that names a multi-worker training's pods (JOB-INDEX.NAME-workers); None for
    one worker. Not-ready pods are published too: workers look each other up while they start."""
    if spec.distribution.workers <= 1:
        return None
    name = owner["metadata"]["name"]
    pod_labels = training_labels(name)
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, worker_service_name(name), pod_labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": pod_labels,
            "ports": [
                {
                    "name": COORDINATOR_PORT_NAME,
                    "port": COORDINATOR_PORT,
                    "targetPort": COORDINATOR_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }
    # What Api.apply compares to decide whether the Service must be applied again.
    service["metadata"]["annotations"] = {SPEC_HASH_ANNOTATION: spec_hash(service)}
    return service
