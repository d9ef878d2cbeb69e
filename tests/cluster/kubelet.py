"""The fake kubelet both fake controllers share: creates pods over the API and runs their container
command as a local process.

Paths the pod would see are mapped to local folders: ConfigMap volumes are written out,
emptyDirs are temp folders, PVCs are folders under `pvc_root/CLAIM`, projected volumes get their
ConfigMap items and a service-account token minted by the emulator for each `serviceAccountToken`
source (bound to the pod; `rotate_tokens` re-mints them, as the kubelet does before they expire),
and the termination message path is a temp file. Mount paths in the command's args and env values are rewritten
to those folders; container ports are mapped to free local ports (args equal to the port number
are rewritten), as if each pod had its own IP; env values from a fieldRef are the pod's own fields.
stdout and stderr become the pod log.

A deleted pod stops as the kubelet stops it: its container's `lifecycle.preStop` hook runs first
(`sleep: {seconds}`, `exec: {command}` run locally with the container's env and paths, or `httpGet`),
then SIGTERM goes to the process group, and SIGKILL once `terminationGracePeriodSeconds` (default 30)
have passed since the deletion (2 s more when the hook used them all up, as the kubelet allows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cluster.emulator import CONFIGMAPS, PODS, Emulator, _now
from cluster.tokens import API_AUDIENCE

FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # what the kubelet keeps of the log for FallbackToLogsOnError
DEFAULT_GRACE = 30.0  # terminationGracePeriodSeconds when the pod does not say
HOOK_EXTENSION = 2.0  # what the kubelet adds once when a preStop hook outlasts the grace period


@dataclass
class ProjectedToken:
    """A serviceAccountToken source the kubelet keeps fresh in a pod's projected volume."""

    path: Path  # the local file behind the path the container reads
    namespace: str
    pod: str
    uid: str
    service_account: str
    audience: str
    ttl: int
    token: str = ""


def _write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a half-written one (the kubelet swaps a symlink)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def field_value(pod: dict[str, Any], path: str) -> str:
    """A downward API fieldRef of the pod: metadata.name / namespace / uid, metadata.annotations['k'] or
    metadata.labels['k'] (a missing key is an empty file, as the kubelet writes it)."""
    meta = pod["metadata"]
    match = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path.startswith("metadata."):
        return str(meta.get(path.split(".", 1)[1], ""))
    raise RuntimeError(f"downward API field {path} is not emulated")


class Kubelet:
    def __init__(self, emulator: Emulator, pvc_root: Path, workdir: Path) -> None:
        self.emulator, self.pvc_root, self.workdir = emulator, pvc_root, workdir
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.host_ports: dict[tuple[str, str], dict[int, int]] = {}  # (ns, pod) -> containerPort -> local port
        self.session: aiohttp.ClientSession | None = None
        self.pods_started = 0
        self.projected_tokens: dict[tuple[str, str], list[ProjectedToken]] = {}  # (ns, pod) -> its tokens
        # URL prefix a pod would reach (a Service's https://NAME.NS.svc:PORT) -> where the test serves it;
        # applied to env values and args, the way cluster DNS would route them.
        self.url_aliases: dict[str, str] = {}
        # (ns, pod) -> the container's declared env as its process got it (aliases and fieldRefs resolved).
        self.container_env: dict[tuple[str, str], dict[str, str]] = {}
        # pod uid -> (env, path mapping, ports) its container started with: what a preStop exec runs with.
        self.launches: dict[str, tuple[dict[str, str], dict[str, str], dict[int, int]]] = {}
        self.deleted: set[str] = set()  # uids of pods deleted from the API (their processes may still stop)
        # pod uid -> when SIGTERM and SIGKILL went to its process (loop time): what tests check grace by.
        self.signalled: dict[str, dict[str, float]] = {}
        self.terminations: set[asyncio.Task[None]] = set()
        # Containers added to every pod created from now on, after the template's, as a mutating webhook
        # injects a service mesh's proxy (istio-proxy): the pod then has several containers. Only the first
        # runs; a sidecar's log is emulator.container_logs[(ns, pod, name)].
        self.sidecars: list[dict[str, Any]] = []
        emulator.hooks.append(self._on_change)

    def port_of(self, namespace: str, pod: str, port: int) -> int | None:
        return self.host_ports.get((namespace, pod), {}).get(port)

    async def _on_change(self, event: str, resource: Any, raw: dict[str, Any]) -> None:
        if resource == PODS and event == "DELETED":  # the kubelet stops a deleted pod's container
            uid = raw["metadata"]["uid"]
            self.deleted.add(uid)
            if uid in self.processes:
                self._terminate_soon(raw)
        elif resource.plural == self.owner_plural:
            await self._on_owner_change(event, raw)

    owner_plural = ""

    async def _on_owner_change(self, event: str, raw: dict[str, Any]) -> None:
        raise NotImplementedError

    def _terminate_soon(self, pod: dict[str, Any]) -> None:
        task = asyncio.create_task(self._terminate(pod))
        self.terminations.add(task)
        task.add_done_callback(self.terminations.discard)

    async def _terminate(self, pod: dict[str, Any]) -> None:
        """Stop a deleted pod's container: preStop, SIGTERM, SIGKILL at the end of the grace period."""
        uid = pod["metadata"]["uid"]
        proc = self.processes.get(uid)
        if proc is None or proc.returncode is not None:
            return
        loop = asyncio.get_running_loop()
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE))
        deadline = loop.time() + grace
        container = pod["spec"]["containers"][0]
        hook = (container.get("lifecycle") or {}).get("preStop")
        signalled = self.signalled.setdefault(uid, {})
        if hook:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._pre_stop(pod, container, hook)
            except TimeoutError:
                deadline = loop.time() + HOOK_EXTENSION
            except Exception as exc:  # a failing hook does not stop the termination
                key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
                self.emulator.pod_logs[key] = self.emulator.pod_logs.get(key, "") + f"preStop hook failed: {exc}\n"
        if proc.returncode is not None:
            return
        signalled["SIGTERM"] = loop.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout_at(deadline):
                await proc.wait()
        except TimeoutError:
            signalled["SIGKILL"] = loop.time()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def _pre_stop(self, pod: dict[str, Any], container: dict[str, Any], hook: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        env, mapping, ports = self.launches.get(uid, (dict(os.environ), {}, {}))
        if "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"]["seconds"]))
        elif "exec" in hook:
            argv = [self._alias(self._rewrite(a, mapping)) for a in hook["exec"]["command"]]
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.workdir,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
        elif "httpGet" in hook:
            get = hook["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == port)
            url = f"http://127.0.0.1:{ports[int(port)]}{get.get('path', '/')}"
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                await resp.read()

    async def close(self) -> None:
        for task in list(self.terminations):
            task.cancel()
        await asyncio.gather(*self.terminations, return_exceptions=True)
        processes = list(self.processes.values())
        for proc in processes:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.gather(*(p.wait() for p in processes), return_exceptions=True)
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession(base_url=str(self.emulator.url))
        async with self.session.request(method, path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return dict(data)

    async def _patch_status(self, kind: str, ns: str, name: str, status: dict[str, Any]) -> None:
        base = {"jobs": "/apis/batch/v1", "deployments": "/apis/apps/v1"}.get(kind, "/api/v1")
        await self._api("PATCH", f"{base}/namespaces/{ns}/{kind}/{name}/status", {"status": status})

    async def _create_pod(
        self,
        owner: dict[str, Any],
        template: dict[str, Any],
        labels: dict[str, str],
        prefix: str | None = None,
        annotations: dict[str, str] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The pod of `template`, named PREFIX-XXXXX (PREFIX: the owner's name unless given), with the
        controller's own labels and annotations added and `spec` (when given) instead of the template's."""
        meta = owner["metadata"]
        ns = meta["namespace"]
        spec = spec if spec is not None else template["spec"]
        if self.sidecars:
            spec = {**spec, "containers": [*spec["containers"], *(dict(c) for c in self.sidecars)]}
        pod = await self._api(
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{prefix or meta['name']}-{secrets.token_hex(3)[:5]}",
                    "namespace": ns,
                    "labels": {**(template.get("metadata", {}).get("labels") or {}), **labels},
                    "annotations": {**(template.get("metadata", {}).get("annotations") or {}), **(annotations or {})},
                    "ownerReferences": [
                        {
                            "apiVersion": owner["apiVersion"],
                            "kind": owner["kind"],
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": spec,
            },
        )
        self.pods_started += 1
        container = template["spec"]["containers"][0]
        for sidecar in self.sidecars:
            self.emulator.container_logs[(ns, pod["metadata"]["name"], sidecar["name"])] = f"{sidecar['name']} ready\n"
        await self._patch_status(
            "pods",
            ns,
            pod["metadata"]["name"],
            {
                "phase": "Running",
                "startTime": _now(),
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {
                        "name": name,
                        "ready": False,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                    for name in [container["name"], *(c["name"] for c in self.sidecars)]
                ],
            },
        )
        return pod

    def _mounts(self, pod: dict[str, Any], container: dict[str, Any], scratch: Path) -> dict[str, str]:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        ns = pod["metadata"]["namespace"]
        mapping: dict[str, str] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                local = self.pvc_root / claim
                if mount["mountPath"].endswith("/" + claim):
                    # Claims mounted side by side under one folder (PVC_ROOT/CLAIM): code that builds
                    # paths from that folder must land in our pvc_root too.
                    mapping[mount["mountPath"][: -len(claim) - 1]] = str(self.pvc_root)
            else:
                local = scratch / "volumes" / mount["name"]
                if "configMap" in volume:
                    cm = self.emulator.find(CONFIGMAPS, ns, volume["configMap"]["name"])
                    if cm is None:
                        raise RuntimeError(f"ConfigMap {volume['configMap']['name']} not found")  # real: pod stuck
                    local.mkdir(parents=True, exist_ok=True)
                    for key, text in (cm.get("data") or {}).items():
                        (local / key).write_text(text)
                elif "projected" in volume:
                    self._project(pod, volume["projected"], local)
                elif "downwardAPI" in volume:
                    local.mkdir(parents=True, exist_ok=True)
                    for item in volume["downwardAPI"].get("items") or []:
                        (local / item["path"]).write_text(field_value(pod, item["fieldRef"]["fieldPath"]))
            local.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = str(local)
        mapping[container.get("terminationMessagePath", "/dev/termination-log")] = str(scratch / "termination-log")
        return mapping

    def _project(self, pod: dict[str, Any], projected: dict[str, Any], local: Path) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        local.mkdir(parents=True, exist_ok=True)
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                spec = source["serviceAccountToken"]
                token = ProjectedToken(
                    path=local / spec["path"],
                    namespace=ns,
                    pod=name,
                    uid=meta["uid"],
                    service_account=pod["spec"].get("serviceAccountName") or "default",
                    audience=spec.get("audience") or API_AUDIENCE,
                    ttl=int(spec.get("expirationSeconds") or 3600),
                )
                self._mint(token)
                self.projected_tokens.setdefault((ns, name), []).append(token)
            elif "configMap" in source:
                ref = source["configMap"]
                cm = self.emulator.find(CONFIGMAPS, ns, ref["name"])
                if cm is None:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f"ConfigMap {ref['name']} not found")  # real: the pod is stuck
                data = cm.get("data") or {}
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    _write_atomically(local / item["path"], data[item["key"]])

    def _mint(self, token: ProjectedToken) -> None:
        token.token = self.emulator.mint_token(
            token.namespace, token.pod, token.uid, token.audience, token.ttl, token.service_account
        )
        _write_atomically(token.path, token.token)

    def rotate_tokens(self, namespace: str, pod: str) -> list[str]:
        """Mint the pod's projected tokens again and swap them into its volumes (the old ones stay valid
        until they expire, as with the real kubelet); returns the new tokens."""
        tokens = self.projected_tokens.get((namespace, pod), [])
        for token in tokens:
            if token.path.parent.exists():  # not once the pod's folders were removed
                self._mint(token)
        return [t.token for t in tokens]

    def tokens_of(self, namespace: str, pod: str) -> list[str]:
        """The tokens the kubelet last wrote into the pod's projected volumes."""
        return [t.token for t in self.projected_tokens.get((namespace, pod), [])]

    def _alias(self, value: str) -> str:
        """`value` with a cluster address (or command) swapped for the test's. Applied after the container paths
        are mapped: what an alias points to is a path or address on this machine already, never remapped
        (a checkout under /tmp would otherwise see its own files moved into a pod's emptyDir)."""
        for prefix in sorted(self.url_aliases, key=len, reverse=True):
            if value.startswith(prefix):
                return self.url_aliases[prefix] + value[len(prefix) :]
        return value

    @staticmethod
    def _rewrite(value: str, mapping: dict[str, str]) -> str:
        for container_path in sorted(mapping, key=len, reverse=True):
            if value == container_path or value.startswith(container_path + "/"):
                return mapping[container_path] + value[len(container_path) :]
        return value

    async def _run_container(
        self, pod: dict[str, Any], container: dict[str, Any], scratch: Path, ports: dict[int, int] | None = None
    ) -> tuple[int, str]:
        """Run the container; `ports` (containerPort -> local port) when the caller chose them already
        (a port others must reach at a known address), free ports otherwise."""
        mapping = self._mounts(pod, container, scratch)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._alias(self._rewrite(item["value"], mapping))
            elif "fieldRef" in (item.get("valueFrom") or {}):
                env[item["name"]] = field_value(pod, item["valueFrom"]["fieldRef"]["fieldPath"])
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.container_env[key] = {e["name"]: env[e["name"]] for e in container.get("env", []) if e["name"] in env}
        if ports is None:
            ports = {p["containerPort"]: free_port() for p in container.get("ports", [])}
        self.host_ports[key] = ports
        argv = [
            self._alias(self._rewrite(a, mapping)) for a in [*container.get("command", []), *container.get("args", [])]
        ]
        argv = [str(ports[int(a)]) if a.isdigit() and int(a) in ports else a for a in argv]
        self.emulator.pod_logs[key] = ""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        uid = pod["metadata"]["uid"]
        self.processes[uid] = proc
        self.launches[uid] = (env, mapping, ports)
        if uid in self.deleted:  # deleted while it was starting: stop it now
            self._terminate_soon(pod)
        try:
            assert proc.stdout is not None
            async for line in proc.stdout:
                self.emulator.pod_logs[key] += line.decode(errors="replace")
            exit_code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            self.processes.pop(uid, None)
            self.launches.pop(uid, None)
        if exit_code < 0:
            exit_code = 128 - exit_code  # how a container runtime reports death by signal
        term = scratch / "termination-log"
        message = term.read_text()[:4096] if term.exists() else ""
        if not message and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = "".join(self.emulator.pod_logs[key].splitlines(keepends=True)[-FALLBACK_LINES:])
            message = tail[-FALLBACK_BYTES:]
        return exit_code, message
