"""An emulated cluster for end-to-end tests: the API emulator and the fake Job controller run in
their own thread and event loop; the operator runs in another (kopf's KopfRunner); the test
talks to both synchronously."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kmock
from kopf.testing import KopfRunner

from cluster.deploymentcontroller import DeploymentController
from cluster.emulator import (
    CONFIGMAPS,
    EVENTS,
    HTTPROUTES,
    JOBS,
    PODS,
    SERVICES,
    TOKENREVIEWS,
    Emulator,
    declare_resources,
)
from cluster.jobcontroller import JobController
from cluster.traffic import Router, parse

KTJ = kmock.resource("kerasoperator.dev", "v1alpha1", "kerastrainingjobs")
KMS = kmock.resource("kerasoperator.dev", "v1alpha1", "kerasmodelservices")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
T = TypeVar("T")


class Cluster:
    def __init__(self, pvc_root: Path, workdir: Path) -> None:
        self.pvc_root, self.workdir = pvc_root, workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="emulated-cluster", daemon=True)
        self.emulator: Emulator | None = None
        self.controller: JobController | None = None
        self.deployments: DeploymentController | None = None
        self._router: Router | None = None
        self._stack = contextlib.AsyncExitStack()

    # --- lifecycle ---

    def start(self) -> Cluster:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        emulator = Emulator()
        declare_resources(emulator)
        await self._stack.enter_async_context(emulator)
        await self._stack.enter_async_context(kmock.Server(emulator))
        self.emulator = emulator
        self.controller = JobController(emulator, self.pvc_root, self.workdir)
        self.deployments = DeploymentController(emulator, self.pvc_root, self.workdir)

    def stop(self) -> None:
        async def _stop() -> None:
            if self.controller is not None:
                await self.controller.close()
            if self.deployments is not None:
                await self.deployments.close()
            await self._stack.aclose()

        self.call(_stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        assert self.emulator is not None
        return str(self.emulator.url).rstrip("/")

    # --- the API, as kubectl would use it ---

    def _path(self, resource: kmock.resource, namespace: str | None, name: str | None = None) -> str:
        """The object's (or the collection's) URL path; namespace None: a cluster-scoped kind."""
        base = f"/api/{resource.version}" if not resource.group else f"/apis/{resource.group}/{resource.version}"
        scope = f"/namespaces/{namespace}" if namespace is not None else ""
        path = f"{base}{scope}/{resource.plural}"
        return f"{path}/{name}" if name else path

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        assert self.emulator is not None
        async with self.emulator.request(method, path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    def create(self, resource: kmock.resource, obj: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
        return dict(self.call(self._request("POST", self._path(resource, namespace), obj)))

    def create_cluster_object(self, resource: kmock.resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create a cluster-scoped object (a ValidatingWebhookConfiguration, ...)."""
        return dict(self.call(self._request("POST", self._path(resource, None), obj)))

    def patch(self, resource: kmock.resource, name: str, body: dict[str, Any], namespace: str = "default") -> None:
        self.call(self._request("PATCH", self._path(resource, namespace, name), body))

    def delete(self, resource: kmock.resource, name: str, namespace: str = "default") -> None:
        self.call(self._request("DELETE", self._path(resource, namespace, name)))

    def get(self, resource: kmock.resource, name: str, namespace: str = "default") -> dict[str, Any] | None:
        assert self.emulator is not None
        emulator = self.emulator

        async def _get() -> dict[str, Any] | None:
            return emulator.find(resource, namespace, name)

        return self.call(_get())

    def list(self, resource: kmock.resource, namespace: str | None = "default") -> list[dict[str, Any]]:
        assert self.emulator is not None
        emulator = self.emulator

        async def _list() -> list[dict[str, Any]]:
            return [
                o for o in emulator.live(resource) if namespace is None or o["metadata"].get("namespace") == namespace
            ]

        return list(self.call(_list()))

    def events_for(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        return [e for e in self.list(EVENTS, namespace) if e.get("involvedObject", {}).get("name") == name]

    def wait_for(self, check: Callable[[], T], timeout: float = 120, message: str = "") -> T:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {message or check}; last: {last!r}")

    def service_url(self, url: str) -> str:
        """The local address behind a Service URL (http://NAME.NS.svc.cluster.local:PORT): the first ready
        endpoint's (cluster/traffic.py: pods the Service selects, Ready, not deleted)."""
        target = parse(url)
        assert self.get(SERVICES, target.name, target.namespace) is not None, f"no Service {target.name}"
        endpoints = self.traffic.endpoints(target.name, target.namespace, target.port)
        assert endpoints, f"no ready pod behind {url}"
        return endpoints[0].address

    @property
    def traffic(self) -> Router:
        """Requests routed as the cluster would (Services, HTTPRoutes), recorded: see cluster/traffic.py."""
        if self._router is None:
            self._router = Router(self)
        return self._router

    def pod_signals(self, pod_uid: str) -> dict[str, float]:
        """When the kubelet sent SIGTERM / SIGKILL to a deleted pod's process (time.monotonic() seconds)."""
        kubelets = [k for k in (self.controller, self.deployments) if k is not None]

        async def _signals() -> dict[str, float]:
            return next((dict(k.signalled[pod_uid]) for k in kubelets if pod_uid in k.signalled), {})

        return dict(self.call(_signals()))

    def pod_env(self, pod: str, namespace: str = "default") -> dict[str, str] | None:
        """The env a pod's container was started with (its declared variables, aliases and fieldRefs
        resolved); None until it starts."""
        kubelets = [k for k in (self.controller, self.deployments) if k is not None]

        async def _env() -> dict[str, str] | None:
            for kubelet in kubelets:
                if (namespace, pod) in kubelet.container_env:
                    return dict(kubelet.container_env[(namespace, pod)])
            return None

        return self.call(_env())

    # --- service-account tokens in pods (mint / forge / expire / review: on self.emulator) ---

    def pod_tokens(self, pod: str, namespace: str = "default") -> list[str]:
        """The tokens the fake kubelet wrote into the pod's projected serviceAccountToken volumes."""
        kubelets = [k for k in (self.controller, self.deployments) if k is not None]

        async def _tokens() -> list[str]:
            return [t for k in kubelets for t in k.tokens_of(namespace, pod)]

        return list(self.call(_tokens()))

    def alias_url(self, cluster_url: str, local_url: str) -> None:
        """Pods reach `cluster_url...` (e.g. https://svc.ns.svc:8443) at `local_url...` (https://127.0.0.1:PORT):
        env values and args that start with it are rewritten when a container starts."""
        for kubelet in (self.controller, self.deployments):
            if kubelet is not None:
                kubelet.url_aliases[cluster_url] = local_url

    def rotate_tokens(self, pod: str, namespace: str = "default") -> list[str]:
        """Re-mint the pod's projected tokens and swap the files, as the kubelet does before expiry."""
        kubelets = [k for k in (self.controller, self.deployments) if k is not None]

        async def _rotate() -> list[str]:
            return [t for k in kubelets for t in k.rotate_tokens(namespace, pod)]

        return list(self.call(_rotate()))

    def ktj(self, name: str, namespace: str = "default") -> dict[str, Any]:
        obj = self.get(KTJ, name, namespace)
        assert obj is not None, f"KerasTrainingJob {name} not found"
        return obj


@contextlib.contextmanager
def operator(cluster: Cluster, namespaces: tuple[str, ...] = ()) -> Iterator[KopfRunner]:
    """Run the real operator (keras_operator.main) against the emulated cluster until the block ends:
    over the whole cluster, or, given `namespaces`, as the chart's watchNamespaces runs it (those namespaces
    named to kopf and in KERAS_OPERATOR_NAMESPACES, and no cluster-scoped grant to list namespaces)."""
    assert cluster.emulator is not None
    emulator = cluster.emulator
    watches_before = emulator.watch_starts[KTJ]
    scope = [arg for namespace in namespaces for arg in ("--namespace", namespace)] or ["--all-namespaces"]
    saved_env, saved_grant = os.environ.get("KERAS_OPERATOR_NAMESPACES"), emulator.cluster_scoped_grant
    if namespaces:
        os.environ["KERAS_OPERATOR_NAMESPACES"] = ",".join(namespaces)
    else:
        os.environ.pop("KERAS_OPERATOR_NAMESPACES", None)
    emulator.cluster_scoped_grant = not namespaces
    runner = KopfRunner(["run", "--standalone", *scope, "-m", "keras_operator.main"], timeout=60)
    runner.__enter__()
    try:
        # kmock re-sends every object on a new watch, but events between list and watch could be missed.
        try:
            cluster.wait_for(
                lambda: emulator.watch_starts[KTJ] > watches_before,
                timeout=30,
                message="the operator's watch on KerasTrainingJobs",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the operator's requests refused 403: {dict(emulator.forbidden)}") from None
        yield runner
    finally:
        try:
            runner.__exit__(None, None, None)
        finally:
            emulator.cluster_scoped_grant = saved_grant
            if saved_env is None:
                os.environ.pop("KERAS_OPERATOR_NAMESPACES", None)
            else:
                os.environ["KERAS_OPERATOR_NAMESPACES"] = saved_env


__all__ = [
    "CONFIGMAPS",
    "DEPLOYMENTS",
    "HPAS",
    "HTTPROUTES",
    "JOBS",
    "KMS",
    "KTJ",
    "LEASES",
    "PODS",
    "SERVICES",
    "TOKENREVIEWS",
    "Cluster",
    "operator",
]
