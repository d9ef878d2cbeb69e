"""A fake Deployment controller on the fake kubelet: runs the pods of a Deployment as local processes,
probes their readinessProbe over HTTP, and rolls a changed template out as Kubernetes does.

Pods carry `pod-template-hash` (the hash of the template they were made from) and belong to their
Deployment by ownerReferences uid: Deployments may select overlapping labels, so labels never decide
whose pod it is. RollingUpdate (the default) honours maxSurge and maxUnavailable (integers or
percentages, 25 % each by default): new pods are added while the total stays within replicas + maxSurge,
and old pods are deleted only while the ready pods stay at least replicas - maxUnavailable, unready old
pods first. A replica-count change alone adds or removes pods and leaves the others alone. Recreate
deletes the old pods and starts new ones once their processes have ended. Deleted pods stop gracefully
(the kubelet runs preStop, SIGTERM, then SIGKILL after the grace period); a Deployment's deletion deletes
its pods through the emulator's garbage collection.

One task per Deployment probes, scales and writes its status (replicas, updatedReplicas,
readyReplicas, availableReplicas, unavailableReplicas, observedGeneration, Available and Progressing with
NewReplicaSetAvailable / ReplicaSetUpdated / ProgressDeadlineExceeded), so nothing races on it.
Readiness is probed every PROBE_PERIOD seconds whatever periodSeconds says (tests should not wait);
failureThreshold consecutive failures make a ready pod unready. A container whose process exits is not
restarted: the pod stays unready with its terminated state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cluster.emulator import PODS, _now
from cluster.kubelet import Kubelet

PROBE_PERIOD = 0.3  # seconds between probes of a Deployment's pods
MIN_PROBE_TIMEOUT = 2.0  # the emulated pods share two cores: a 1 s probe timeout flaps under load
HASH_LABEL = "pod-template-hash"
log = logging.getLogger(__name__)


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _scaled(value: Any, replicas: int, default: str, round_up: bool) -> int:
    """An intOrString of the rolling-update strategy ("25%" or 1) for `replicas` pods."""
    value = default if value is None else value
    if isinstance(value, str) and value.endswith("%"):
        exact = replicas * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def rolling_limits(spec: dict[str, Any], replicas: int) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as the Deployment controller resolves them: surge rounds up, unavailable
    down, and both zero would never progress, so unavailable becomes 1."""
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = _scaled(rolling.get("maxSurge"), replicas, "25%", round_up=True)
    unavailable = _scaled(rolling.get("maxUnavailable"), replicas, "25%", round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


@dataclass
class _Deployment:
    raw: dict[str, Any]
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    written: dict[str, Any] | None = None  # the last status written, without timestamps
    since: dict[str, str] = field(default_factory=dict)  # condition type -> lastTransitionTime
    progress: tuple[Any, ...] = ()  # what changes as a rollout advances
    progressed_at: float = 0.0  # loop time of the last change of `progress`
    stopping: set[str] = field(default_factory=set)  # uids of pods deleted whose processes may still run


class DeploymentController(Kubelet):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deployments: dict[str, _Deployment] = {}  # uid -> its state
        self.ready: dict[tuple[str, str], bool] = {}  # (ns, pod) -> readiness, as the endpoints see it
        self.probe_failures: dict[tuple[str, str], int] = {}  # (ns, pod) -> consecutive failed probes
        self.emulator.port_of = self.port_of

    owner_plural = "deployments"

    async def _on_change(self, event: str, resource: Any, raw: dict[str, Any]) -> None:
        if resource == PODS and event == "DELETED":
            key = (raw["metadata"].get("namespace", ""), raw["metadata"]["name"])
            self.ready.pop(key, None)  # a terminating pod leaves the endpoints at once
            self.probe_failures.pop(key, None)
        await super()._on_change(event, resource, raw)

    async def _on_owner_change(self, event: str, raw: dict[str, Any]) -> None:
        uid = raw["metadata"]["uid"]
        if event == "DELETED":
            state = self.deployments.pop(uid, None)
            if state is not None and state.task is not None:
                state.task.cancel()  # its pods go by garbage collection, each stopping gracefully
            return
        state = self.deployments.get(uid)
        if state is None:
            state = self.deployments[uid] = _Deployment(raw=raw)
            state.task = asyncio.create_task(self._control(uid, state))
        state.raw = raw
        state.wake.set()

    async def close(self) -> None:
        for state in self.deployments.values():
            if state.task is not None:
                state.task.cancel()
        await asyncio.gather(*(s.task for s in self.deployments.values() if s.task), return_exceptions=True)
        await super().close()

    # --- the controller loop: one task per Deployment ---

    async def _control(self, uid: str, state: _Deployment) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                state.wake.clear()
                try:
                    await self._reconcile(state, session)
                except (RuntimeError, aiohttp.ClientError) as exc:  # e.g. a pod deleted under our feet
                    log.debug("deployment %s: %s", uid, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), PROBE_PERIOD)

    async def _reconcile(self, state: _Deployment, session: aiohttp.ClientSession) -> None:
        deployment = state.raw
        meta, spec = deployment["metadata"], deployment["spec"]
        ns = meta["namespace"]
        replicas = int(spec.get("replicas", 1))
        template = spec["template"]
        hash_ = template_hash(template)
        pods = self._pods_of(ns, meta["uid"])
        await self._probe(ns, pods, session)
        live = {p["metadata"]["uid"] for p in pods}
        state.stopping = {u for u in state.stopping if u in self.processes and u not in live}
        if not spec.get("paused"):
            await self._scale(state, pods, hash_, replicas)
            pods = self._pods_of(ns, meta["uid"])
        await self._write_status(state, pods, hash_, replicas)

    async def _scale(self, state: _Deployment, pods: list[dict[str, Any]], hash_: str, replicas: int) -> None:
        deployment = state.raw
        spec = deployment["spec"]
        ns = deployment["metadata"]["namespace"]
        new = [p for p in pods if self._hash_of(p) == hash_]
        old = [p for p in pods if self._hash_of(p) != hash_]
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            await self._delete(state, old)
            if not state.stopping:  # new pods only once the old ones have stopped
                await self._resize(state, new, hash_, replicas)
            return
        if not old:
            await self._resize(state, new, hash_, replicas)
            return
        surge, unavailable = rolling_limits(spec, replicas)
        if len(new) > replicas:  # scaled down mid-rollout
            extra = self._by_preference(ns, new)[: len(new) - replicas]
            await self._delete(state, extra)
            new = [p for p in new if p not in extra]
        room = min(replicas + surge - len(old) - len(new), replicas - len(new))
        for _ in range(max(room, 0)):
            new.append(await self._start_pod(deployment, hash_))
        # Old pods go only while the ready pods stay at least replicas - maxUnavailable: unready ones
        # first (they serve nothing), then ready ones as new pods become ready.
        min_available = replicas - unavailable
        new_unready = sum(not self._ready(ns, p) for p in new)
        max_down = len(old) + len(new) - min_available - new_unready
        if max_down <= 0:
            return
        unready_old = [p for p in old if not self._ready(ns, p)][:max_down]
        await self._delete(state, unready_old)
        old = [p for p in old if p not in unready_old]
        ready_total = sum(self._ready(ns, p) for p in [*old, *new])
        down = min(ready_total - min_available, max_down - len(unready_old), len(old))
        if down > 0:
            await self._delete(state, old[:down])  # the oldest first

    async def _resize(self, state: _Deployment, pods: list[dict[str, Any]], hash_: str, replicas: int) -> None:
        ns = state.raw["metadata"]["namespace"]
        if len(pods) > replicas:
            await self._delete(state, self._by_preference(ns, pods)[: len(pods) - replicas])
        for _ in range(replicas - len(pods)):
            await self._start_pod(state.raw, hash_)

    def _by_preference(self, ns: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Pods in the order a scale-down deletes them: unready before ready, newest before oldest."""
        return sorted(reversed(pods), key=lambda p: self._ready(ns, p))

    async def _delete(self, state: _Deployment, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            state.stopping.add(meta["uid"])
            with contextlib.suppress(RuntimeError):  # already gone
                await self._api("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")

    def _ready(self, ns: str, pod: dict[str, Any]) -> bool:
        return self.ready.get((ns, pod["metadata"]["name"]), False)

    @staticmethod
    def _hash_of(pod: dict[str, Any]) -> str | None:
        return (pod["metadata"].get("labels") or {}).get(HASH_LABEL)

    def _pods_of(self, ns: str, uid: str) -> list[dict[str, Any]]:
        """The Deployment's live pods in the order they were created (the emulator keeps insertion order)."""
        return [
            p
            for p in self.emulator.live(PODS)
            if p["metadata"].get("namespace") == ns
            and any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
        ]

    # --- pods ---

    async def _start_pod(self, deployment: dict[str, Any], hash_: str) -> dict[str, Any]:
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment["metadata"]}
        template = deployment["spec"]["template"]
        pod = await self._create_pod(
            owner, template, {HASH_LABEL: hash_}, prefix=f"{deployment['metadata']['name']}-{hash_[:8]}"
        )
        self.ready[(pod["metadata"]["namespace"], pod["metadata"]["name"])] = False
        uid = pod["metadata"]["uid"]
        self.tasks[uid] = asyncio.create_task(self._run_pod(pod, template["spec"]["containers"][0]))
        return pod

    async def _run_pod(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """Run the pod's container until its process ends (deleted pods end through graceful termination)."""
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        scratch = Path(tempfile.mkdtemp(prefix=f"pod-{name}-"))
        try:
            exit_code, message = await self._run_container(pod, container, scratch)
        except Exception as exc:  # a pod that cannot start (e.g. its ConfigMap is missing) stays unready
            log.warning("pod %s/%s did not start: %s", ns, name, exc)
            return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.tasks.pop(uid, None)
        if uid in self.deleted:
            return
        self.ready[(ns, name)] = False
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error", "message": message}
        with contextlib.suppress(RuntimeError, aiohttp.ClientError):  # deleted meanwhile, or the cluster stops
            await self._patch_status(
                "pods",
                ns,
                name,
                {
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "ready": False,
                            "restartCount": 0,
                            "state": {"terminated": {**terminated, "finishedAt": _now()}},
                        }
                    ],
                },
            )

    async def _probe(self, ns: str, pods: list[dict[str, Any]], session: aiohttp.ClientSession) -> None:
        async def one(pod: dict[str, Any]) -> None:
            name = pod["metadata"]["name"]
            container = pod["spec"]["containers"][0]
            probe = container.get("readinessProbe") or {}
            get = probe.get("httpGet") or {"path": "/", "port": "http"}
            port = get["port"]
            if isinstance(port, str):
                port = next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)
            local = self.port_of(ns, name, port) if port is not None else None
            ok = False
            if local is not None:
                timeout = aiohttp.ClientTimeout(total=max(float(probe.get("timeoutSeconds", 1)), MIN_PROBE_TIMEOUT))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    url = f"http://127.0.0.1:{local}{get.get('path', '/')}"
                    async with session.get(url, timeout=timeout) as resp:
                        ok = 200 <= resp.status < 400
            key = (ns, name)
            if pod["metadata"]["uid"] in self.deleted:
                return  # deleted while the probe ran: out of the endpoints for good
            was = self.ready.get(key, False)
            if ok:
                self.probe_failures[key] = 0
                now_ready = True
            else:
                self.probe_failures[key] = self.probe_failures.get(key, 0) + 1
                now_ready = was and self.probe_failures[key] < int(probe.get("failureThreshold", 3))
            self.ready[key] = now_ready
            if now_ready != was:
                with contextlib.suppress(RuntimeError):
                    await self._patch_status(
                        "pods",
                        ns,
                        name,
                        {
                            "conditions": [{"type": "Ready", "status": "True" if now_ready else "False"}],
                            "containerStatuses": [
                                {
                                    "name": container["name"],
                                    "ready": now_ready,
                                    "restartCount": 0,
                                    "state": {"running": {"startedAt": _now()}},
                                }
                            ],
                        },
                    )

        await asyncio.gather(*(one(p) for p in pods))

    # --- status ---

    async def _write_status(self, state: _Deployment, pods: list[dict[str, Any]], hash_: str, replicas: int) -> None:
        deployment = state.raw
        meta, spec = deployment["metadata"], deployment["spec"]
        ns, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 1)
        updated = sum(self._hash_of(p) == hash_ for p in pods)
        ready = sum(self._ready(ns, p) for p in pods)
        _, unavailable = rolling_limits(spec, replicas)
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            unavailable = 0
        available = ready >= replicas - unavailable
        complete = updated == replicas and len(pods) == replicas and ready >= replicas
        loop = asyncio.get_running_loop()
        progress = (generation, updated, len(pods), ready)
        if progress != state.progress:
            state.progress, state.progressed_at = progress, loop.time()
        replica_set = f'ReplicaSet "{name}-{hash_[:8]}"'
        deadline = float(spec.get("progressDeadlineSeconds", 600))
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f"{replica_set} has successfully progressed.")
        elif loop.time() - state.progressed_at > deadline:
            progressing = ("False", "ProgressDeadlineExceeded", f"{replica_set} has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", f"{replica_set} is progressing.")
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "replicas": len(pods),
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(len(pods) - ready, 0),
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available else "False",
                    "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                },
                dict(zip(("status", "reason", "message"), progressing, strict=True), type="Progressing"),
            ],
        }
        if status == state.written:
            return
        now = _now()
        previous = {c["type"]: c["status"] for c in (state.written or {}).get("conditions", [])}
        for cond in status["conditions"]:
            if previous.get(cond["type"]) != cond["status"] or cond["type"] not in state.since:
                state.since[cond["type"]] = now
        body = {
            **status,
            "conditions": [
                {**c, "lastTransitionTime": state.since[c["type"]], "lastUpdateTime": now} for c in status["conditions"]
            ],
        }
        await self._patch_status("deployments", ns, name, body)
        state.written = status
