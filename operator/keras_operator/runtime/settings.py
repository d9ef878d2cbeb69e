"""Operator configuration, read once from the environment (the Helm chart sets these)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from keras_common import __version__

DEFAULT_IMAGE = f"ghcr.io/keras-operator/keras-trainer:{__version__}"


def backend_images(trainer_image: str) -> dict[str, str]:
    """One trainer image per Keras backend (Dockerfile.trainer --build-arg BACKEND=...), named after the
    tensorflow one as the release workflow tags them."""
    return {"tensorflow": trainer_image, "jax": f"{trainer_image}-jax", "torch": f"{trainer_image}-torch"}


PREFIX = "KERAS_OPERATOR_"

ENV: Mapping[str, str] = MappingProxyType(
    {
        "namespaces": "NAMESPACES",
        "trainer_image": "TRAINER_IMAGE",
        "backend_images": "TRAINER_IMAGE_<BACKEND>",
        "log_format": "LOG_FORMAT",
        "log_level": "LOG_LEVEL",
        "sync_interval": "SYNC_INTERVAL",
        "progress_port": "PROGRESS_PORT",
        "progress_address": "PROGRESS_ADDRESS",
        "progress_url": "PROGRESS_URL",
        "progress_cert_dir": "PROGRESS_CERT_DIR",
        "progress_fallback_after": "PROGRESS_FALLBACK_AFTER",
        "api_server": "API_SERVER",
        "api_timeout": "API_TIMEOUT",
        "liveness_port": "LIVENESS_PORT",
        "metrics_port": "METRICS_PORT",
        "leader_election": "LEADER_ELECTION",
        "lease_namespace": "POD_NAMESPACE",
        "lease_name": "LEASE_NAME",
        "identity": "POD_NAME",
        "lease_seconds": "LEASE_SECONDS",
        "traffic_split": "TRAFFIC_SPLIT",
        "gateway": "GATEWAY",
        "webhook_port": "WEBHOOK_PORT",
        "webhook_cert_dir": "WEBHOOK_CERT_DIR",
    }
)
"""The environment variable (after PREFIX) of each Settings field: from_env reads these, `keras-operator
--help` lists them."""


def _var(field_name: str) -> str:
    return PREFIX + ENV[field_name]


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
    def described(cls) -> list[tuple[str, str, str]]:
        """(environment variable, what it sets, its default) of every field, from the fields' docstrings."""
        docs: dict[str, str] = {}
        body = ast.parse(inspect.getsource(cls)).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
            ):
                docs[node.target.id] = " ".join(str(after.value.value).split())
        defaults = cls()
        out = []
        for f in dataclasses.fields(cls):
            default = getattr(defaults, f.name)
            if f.name == "identity":
                default = "the host name"
            elif f.name == "backend_images":
                default = ", ".join(f"{k}: {v}" for k, v in default.items())
            elif isinstance(default, tuple):
                default = ",".join(default) or "(all)"
            out.append((_var(f.name), docs.get(f.name, ""), "" if default is None else str(default)))
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        namespaces = tuple(n.strip() for n in env.get(_var("namespaces"), "").split(",") if n.strip())
        trainer_image = env.get(_var("trainer_image")) or DEFAULT_IMAGE
        return cls(
            namespaces=namespaces,
            trainer_image=trainer_image,
            backend_images={
                backend: env.get(_var("backend_images").replace("<BACKEND>", backend.upper())) or default
                for backend, default in backend_images(trainer_image).items()
            },
            log_format=env.get(_var("log_format"), "auto"),
            log_level=env.get(_var("log_level"), "info"),
            sync_interval=float(env.get(_var("sync_interval"), "5")),
            progress_port=int(env.get(_var("progress_port"), "8443")),
            progress_address=env.get(_var("progress_address")) or "0.0.0.0",
            progress_url=env.get(_var("progress_url")) or None,
            progress_cert_dir=env.get(_var("progress_cert_dir")) or None,
            progress_fallback_after=float(env.get(_var("progress_fallback_after"), "60")),
            api_server=env.get(_var("api_server")) or None,
            api_timeout=_api_timeout(env),
            liveness_port=int(env.get(_var("liveness_port"), "8080")),
            metrics_port=int(env.get(_var("metrics_port"), "9090")),
            leader_election=env.get(_var("leader_election"), "").lower() in ("1", "true", "yes"),
            lease_namespace=env.get(_var("lease_namespace")) or "default",
            lease_name=env.get(_var("lease_name")) or "keras-operator",
            identity=env.get(_var("identity")) or socket.gethostname(),
            lease_seconds=float(env.get(_var("lease_seconds"), "15")),
            traffic_split=traffic_split(env.get(_var("traffic_split"), "pods")),
            gateway=env.get(_var("gateway")) or None,
            webhook_port=int(env.get(_var("webhook_port")) or 0),
            webhook_cert_dir=env.get(_var("webhook_cert_dir")) or None,
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


DEFAULT_API_TIMEOUT = 30.0


def _api_timeout(env: Mapping[str, str]) -> float:
    value = float(env.get(_var("api_timeout")) or DEFAULT_API_TIMEOUT)
    if value <= 0:
        raise ValueError(f"KERAS_OPERATOR_API_TIMEOUT must be a positive number of seconds, got {value}")
    return value
