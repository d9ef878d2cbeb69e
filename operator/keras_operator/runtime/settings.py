"""Operator configuration, read once from the environment (the Helm chart sets these)."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from keras_common import __version__

DEFAULT_IMAGE = f"ghcr.io/keras-operator/keras-trainer:{__version__}"


def backend_images(trainer_image: str) -> dict[str, str]:
    """One trainer image per Keras backend (Dockerfile.trainer --build-arg BACKEND=...), named after the
    tensorflow one as the release workflow tags them."""
    return {"tensorflow": trainer_image, "jax": f"{trainer_image}-jax", "torch": f"{trainer_image}-torch"}


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    """Namespaces to watch; empty means the whole cluster."""
    trainer_image: str = DEFAULT_IMAGE
    """Image for training and serving pods of the tensorflow backend when a resource names none."""
    backend_images: Mapping[str, str] = field(default_factory=lambda: backend_images(DEFAULT_IMAGE))
    """Image per Keras backend (tensorflow, jax, torch) when a resource names none."""
    log_format: str = "auto"
    """json, console, or auto (console on a terminal)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    sync_interval: float = 5.0
    """Seconds between status refreshes of a model service, and between pod log reads of a training whose
    trainer has not reached the progress endpoint for progress_fallback_after seconds."""
    progress_port: int = 8443
    """Port of the endpoint trainers push their progress to; 0 turns it off (progress then comes from pod
    logs, read every sync_interval)."""
    progress_address: str = "0.0.0.0"
    """Address the progress endpoint listens on (all of a pod's; 127.0.0.1 keeps a laptop's run local)."""
    progress_url: str | None = None
    """The endpoint's base URL as training pods reach it (the chart: https://SERVICE.NAMESPACE.svc:PORT);
    without it, trainers are not told to push and progress comes from pod logs."""
    progress_cert_dir: str | None = None
    """A folder with tls.crt, tls.key and ca.crt: the endpoint serves HTTPS and trainers trust ca.crt."""
    progress_fallback_after: float = 60.0
    """Seconds without a push from a running training before its pod log is read instead."""
    api_server: str | None = None
    """Talk to this API URL without credentials (kubectl proxy, test clusters) instead of the
    in-cluster or kubeconfig login."""
    api_timeout: float = 30.0
    """Seconds any one API call may take before it fails and its reconcile is retried: a call on a
    half-open connection would otherwise hold its resource (and a thread) for as long as the kernel keeps
    the socket. A leader with a reconcile in flight for STALL_FACTOR times this steps down."""
    liveness_port: int = 8080
    """Port of the /healthz endpoint."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics endpoint; 0 turns it off."""
    leader_election: bool = False
    """Act only while holding a Lease, so several replicas can run (the chart turns this on)."""
    lease_namespace: str = "default"
    """Namespace of the Lease (the operator's own, from the downward API)."""
    lease_name: str = "keras-operator"
    """Name of the Lease."""
    identity: str = ""
    """This replica's name in the Lease (the pod name); defaults to the host name."""
    lease_seconds: float = 15.0
    """How long a Lease holds without renewal: the longest gap before another replica takes over."""
    traffic_split: str = "pods"
    """How a canary gets its share of requests: "pods" (the one Service over both sides' pods, the canary sized
    to its share) or "httproute" (a Gateway API HTTPRoute's weights; needs Gateway API in the cluster)."""
    gateway: str | None = None
    """NAMESPACE/NAME of the Gateway canary HTTPRoutes attach to; without it they attach to the model's Service
    (Gateway API's mesh form, for a service mesh that implements it)."""
    webhook_port: int = 0
    """Port of the validating admission webhook (HTTPS, every replica); 0 turns it off."""
    webhook_cert_dir: str | None = None
    """A folder with the webhook's tls.crt and tls.key (read again when they change)."""

    @property
    def named_namespaces(self) -> bool:
        """Whether the operator watches named namespaces only: some are set and none is one of kopf's patterns
        (a glob `ml-*`, a negation `!kube-system`, a comma list), which kopf can resolve only by listing the
        cluster's namespaces."""
        return bool(self.namespaces) and not any(set(n) & set("*?!,") for n in self.namespaces)

    def image_for(self, backend: str) -> str:
        return self.trainer_image if backend == "tensorflow" else self.backend_images.get(backend, self.trainer_image)

    def progress_ca(self) -> str | None:
        """The CA certificate trainers trust for the progress endpoint (PEM), when it serves HTTPS."""
        return _read_text(self.progress_cert_dir, "ca.crt") if self.progress_cert_dir else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get("KERAS_OPERATOR_NAMESPACES", "").split(",") if n.strip())
        trainer_image = env.get("KERAS_OPERATOR_TRAINER_IMAGE") or DEFAULT_IMAGE
        return cls(
            namespaces=namespaces,
            trainer_image=trainer_image,
            backend_images={
                backend: env.get(f"KERAS_OPERATOR_TRAINER_IMAGE_{backend.upper()}") or default
                for backend, default in backend_images(trainer_image).items()
            },
            log_format=env.get("KERAS_OPERATOR_LOG_FORMAT", "auto"),
            log_level=env.get("KERAS_OPERATOR_LOG_LEVEL", "info"),
            sync_interval=float(env.get("KERAS_OPERATOR_SYNC_INTERVAL", "5")),
            progress_port=int(env.get("KERAS_OPERATOR_PROGRESS_PORT", "8443")),
            progress_address=env.get("KERAS_OPERATOR_PROGRESS_ADDRESS") or "0.0.0.0",
            progress_url=env.get("KERAS_OPERATOR_PROGRESS_URL") or None,
            progress_cert_dir=env.get("KERAS_OPERATOR_PROGRESS_CERT_DIR") or None,
            progress_fallback_after=float(env.get("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "60")),
            api_server=api_server(env),
            api_timeout=api_timeout(env),
            liveness_port=int(env.get("KERAS_OPERATOR_LIVENESS_PORT", "8080")),
            metrics_port=int(env.get("KERAS_OPERATOR_METRICS_PORT", "9090")),
            leader_election=env.get("KERAS_OPERATOR_LEADER_ELECTION", "").lower() in ("1", "true", "yes"),
            lease_namespace=env.get("KERAS_OPERATOR_POD_NAMESPACE") or "default",
            lease_name=env.get("KERAS_OPERATOR_LEASE_NAME") or "keras-operator",
            identity=env.get("KERAS_OPERATOR_POD_NAME") or socket.gethostname(),
            lease_seconds=float(env.get("KERAS_OPERATOR_LEASE_SECONDS", "15")),
            traffic_split=traffic_split(env.get("KERAS_OPERATOR_TRAFFIC_SPLIT", "pods")),
            gateway=env.get("KERAS_OPERATOR_GATEWAY") or None,
            webhook_port=int(env.get("KERAS_OPERATOR_WEBHOOK_PORT") or 0),
            webhook_cert_dir=env.get("KERAS_OPERATOR_WEBHOOK_CERT_DIR") or None,
        )


def traffic_split(value: str) -> str:
    value = value.strip().lower() or "pods"
    if value not in ("pods", "httproute"):
        raise ValueError(f"KERAS_OPERATOR_TRAFFIC_SPLIT must be pods or httproute, got {value!r}")
    return value


@functools.lru_cache(maxsize=4)
def _read_text(folder: str, name: str) -> str | None:
    path = Path(folder) / name
    return path.read_text() if path.exists() else None


def api_server(env: Mapping[str, str] | None = None) -> str | None:
    """KERAS_OPERATOR_API_SERVER alone, for the API client that reads it on every call."""
    return (os.environ if env is None else env).get("KERAS_OPERATOR_API_SERVER") or None


DEFAULT_API_TIMEOUT = 30.0


def api_timeout(env: Mapping[str, str] | None = None) -> float:
    """KERAS_OPERATOR_API_TIMEOUT alone (seconds), for the API client that reads it on every call."""
    value = float((os.environ if env is None else env).get("KERAS_OPERATOR_API_TIMEOUT") or DEFAULT_API_TIMEOUT)
    if value <= 0:
        raise ValueError(f"KERAS_OPERATOR_API_TIMEOUT must be a positive number of seconds, got {value}")
    return value
