"""A fake Deployment controller on the fake kubelet: runs `replicas` pods of the template as local
processes, probes their readinessProbe over HTTP, and writes pod readiness and the Deployment's
status (replicas, readyReplicas, Available / Progressing) as Kubernetes does. A changed template
replaces the pods (a Recreate rollout: good enough to see a new model served)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from cluster.emulator import PODS, _now
from cluster.kubelet import Kubelet


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class DeploymentController(Kubelet):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deployments: dict[str, dict[str, Any]] = {}  # uid -> {"hash", "pods": [names], "task"}
        self.ready: dict[tuple[str, str], bool] = {}  # (ns, pod) -> last probe result
        self.reported: dict[tuple[str, str], tuple[int, int]] = {}  # (ns, deployment) -> (ready, generation)
        self.emulator.port_of = self.port_of

    owner_plural = "deployments"

    async def _on_owner_change(self, event: str, raw: dict[str, Any]) -> None:
        uid = raw["metadata"]["uid"]
        if event == "DELETED":
            state = self.deployments.pop(uid, None)
            if state is not None:
                state["task"].cancel()
            return
        want_hash = template_hash(raw["spec"]["template"])
        want_replicas = raw["spec"].get("replicas", 1)
        state = self.deployments.get(uid)
        if state is not None and state["hash"] == want_hash and state["replicas"] == want_replicas:
            return
        if state is not None:
            state["task"].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state["task"]
        self.deployments[uid] = {
            "hash": want_hash,
            "replicas": want_replicas,
            "task": asyncio.create_task(self._run(raw, want_hash, want_replicas)),
        }

    async def _run(self, deployment: dict[str, Any], hash_: str, replicas: int) -> None:
        meta = deployment["metadata"]
        ns, name = meta["namespace"], meta["name"]
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta}
        for pod in self._pods_of(ns, meta["uid"]):  # the old template's pods go
            await self._delete_pod(ns, pod["metadata"]["name"])
        generation = int(meta.get("generation") or 1)
        await self._status(ns, name, replicas, 0, generation)
        pods = [
            await self._create_pod(owner, deployment["spec"]["template"], {"pod-template-hash": hash_})
            for _ in range(replicas)
        ]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        scratch = Path(tempfile.mkdtemp(prefix=f"deploy-{name}-"))
        for p in pods:
            (scratch / p["metadata"]["name"]).mkdir(parents=True)
        runs = [asyncio.create_task(self._run_container(p, container, scratch / p["metadata"]["name"])) for p in pods]
        try:
            await self._probe(ns, name, replicas, pods, container, generation)
        finally:
            for task in runs:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            shutil.rmtree(scratch, ignore_errors=True)

    def _pods_of(self, ns: str, uid: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.emulator.live(PODS)
            if p["metadata"].get("namespace") == ns
            and any(ref.get("uid") == uid for ref in p["metadata"].get("ownerReferences") or [])
        ]

    async def _delete_pod(self, ns: str, name: str) -> None:
        with contextlib.suppress(RuntimeError):
            await self._api("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")

    async def _probe(
        self, ns: str, name: str, replicas: int, pods: list[dict[str, Any]], container: dict[str, Any], generation: int
    ) -> None:
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {"path": "/", "port": "http"}
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                ready_count = 0
                for pod in pods:
                    pod_name = pod["metadata"]["name"]
                    local = self.port_of(ns, pod_name, port)
                    ok = False
                    if local is not None:
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            async with session.get(f"http://127.0.0.1:{local}{probe['path']}") as resp:
                                ok = resp.status == 200
                    ready_count += ok
                    if self.ready.get((ns, pod_name)) != ok:
                        self.ready[(ns, pod_name)] = ok
                        await self._patch_status(
                            "pods",
                            ns,
                            pod_name,
                            {
                                "conditions": [{"type": "Ready", "status": "True" if ok else "False"}],
                                "containerStatuses": [
                                    {
                                        "name": container["name"],
                                        "ready": ok,
                                        "restartCount": 0,
                                        "state": {"running": {"startedAt": _now()}},
                                    }
                                ],
                            },
                        )
                await self._status(ns, name, replicas, ready_count, generation)
                await asyncio.sleep(0.3)

    async def _status(self, ns: str, name: str, replicas: int, ready: int, generation: int) -> None:
        if self.reported.get((ns, name)) == (ready, generation):
            return
        self.reported[(ns, name)] = (ready, generation)
        available = ready >= replicas
        now = _now()
        await self._patch_status(
            "deployments",
            ns,
            name,
            {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "True" if available else "False",
                        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                        "message": f"{ready}/{replicas} replicas available",
                        "lastTransitionTime": now,
                    },
                    {
                        "type": "Progressing",
                        "status": "True",
                        "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
                        "message": "rollout in progress" if not available else "rollout complete",
                        "lastTransitionTime": now,
                    },
                ],
            },
        )
