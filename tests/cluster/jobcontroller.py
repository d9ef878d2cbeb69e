"""A fake Job controller and kubelet: runs each Job's container command as a local process.

Paths the pod would see are mapped to local folders: ConfigMap volumes are written out,
emptyDirs are temp folders, PVCs are folders under `pvc_root/CLAIM`, and the termination
message path is a temp file. Mount paths in the command's args and env values are rewritten
to those folders. stdout and stderr become the pod log. Job and pod status follow what
Kubernetes writes: active / succeeded / failed counts, startTime / completionTime,
Complete or Failed conditions (BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded),
and the container's terminated state with its termination message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from cluster.emulator import CONFIGMAPS, JOBS, PODS, Emulator, _now

FALLBACK_LINES, FALLBACK_BYTES = 80, 2048  # what the kubelet keeps of the log for FallbackToLogsOnError


def _true(types: tuple[str, ...], reason: str, message: str, now: str) -> list[dict[str, Any]]:
    return [
        {"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now} for t in types
    ]


class JobController:
    def __init__(self, emulator: Emulator, pvc_root: Path, workdir: Path) -> None:
        self.emulator, self.pvc_root, self.workdir = emulator, pvc_root, workdir
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.session: aiohttp.ClientSession | None = None
        self.pods_started = 0
        emulator.hooks.append(self._on_change)

    async def close(self) -> None:
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

    async def _on_change(self, event: str, resource: Any, raw: dict[str, Any]) -> None:
        if resource != JOBS:
            if resource == PODS and event == "DELETED":
                proc = self.processes.get(raw["metadata"]["uid"])
                if proc is not None and proc.returncode is None:
                    proc.kill()
            return
        uid = raw["metadata"]["uid"]
        if event == "DELETED":
            task = self.tasks.pop(uid, None)
            if task is not None:
                task.cancel()
            return
        if (
            uid not in self.tasks
            and not raw.get("spec", {}).get("suspend")
            and not raw.get("status", {}).get("conditions")
        ):
            self.tasks[uid] = asyncio.create_task(self._run_job(raw))

    # --- API calls, over HTTP like a real controller ---

    async def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession(base_url=str(self.emulator.url))
        async with self.session.request(method, path, json=body) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return dict(data)

    async def _patch_status(self, kind: str, ns: str, name: str, status: dict[str, Any]) -> None:
        base = "/apis/batch/v1" if kind == "jobs" else "/api/v1"
        await self._api("PATCH", f"{base}/namespaces/{ns}/{kind}/{name}/status", {"status": status})

    # --- the Job controller ---

    async def _run_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name = meta["namespace"], meta["name"]
        backoff_limit = spec.get("backoffLimit", 6)
        deadline = spec.get("activeDeadlineSeconds")
        failed = 0
        await self._patch_status("jobs", ns, name, {"startTime": _now(), "active": 1})
        try:
            async with asyncio.timeout(deadline):
                while True:
                    exit_code = await self._run_pod(job)
                    if exit_code == 0:
                        now = _now()
                        status = {
                            "active": 0,
                            "succeeded": 1,
                            "failed": failed,
                            "completionTime": now,
                            "conditions": _true(("SuccessCriteriaMet", "Complete"), "CompletionsReached", "", now),
                        }
                        await self._patch_status("jobs", ns, name, status)
                        return
                    failed += 1
                    reason = self._fail_job_reason(spec, exit_code) or (
                        "BackoffLimitExceeded" if failed > backoff_limit else None
                    )
                    if reason:
                        await self._fail(
                            ns,
                            name,
                            failed,
                            reason,
                            {
                                "PodFailurePolicy": f"Container trainer for pod failed with exit code {exit_code}",
                                "BackoffLimitExceeded": "Job has reached the specified backoff limit",
                            }[reason],
                        )
                        return
                    await self._patch_status("jobs", ns, name, {"failed": failed, "active": 1})
        except TimeoutError:
            for proc in self.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await self._fail(ns, name, failed, "DeadlineExceeded", "Job was active longer than specified deadline")

    async def _fail(self, ns: str, name: str, failed: int, reason: str, message: str) -> None:
        conditions = _true(("FailureTarget", "Failed"), reason, message, _now())
        await self._patch_status("jobs", ns, name, {"active": 0, "failed": failed, "conditions": conditions})

    @staticmethod
    def _fail_job_reason(spec: dict[str, Any], exit_code: int) -> str | None:
        for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
            codes = rule.get("onExitCodes")
            if (
                rule.get("action") == "FailJob"
                and codes
                and codes.get("operator") == "In"
                and exit_code in codes.get("values", [])
            ):
                return "PodFailurePolicy"
        return None

    # --- the kubelet ---

    async def _run_pod(self, job: dict[str, Any]) -> int:
        meta, template = job["metadata"], job["spec"]["template"]
        ns = meta["namespace"]
        pod_name = f"{meta['name']}-{secrets.token_hex(3)[:5]}"
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": meta["name"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
        }
        pod = await self._api(
            "POST",
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": template["spec"],
            },
        )
        self.pods_started += 1
        container = template["spec"]["containers"][0]
        await self._patch_status(
            "pods",
            ns,
            pod_name,
            {
                "phase": "Running",
                "startTime": _now(),
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                ],
            },
        )
        scratch = Path(tempfile.mkdtemp(prefix=f"pod-{pod_name}-"))
        try:
            exit_code, message = await self._run_container(pod, container, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        await self._patch_status(
            "pods",
            ns,
            pod_name,
            {
                "phase": "Succeeded" if exit_code == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": exit_code,
                                "reason": "Completed" if exit_code == 0 else "Error",
                                "message": message,
                                "finishedAt": _now(),
                            }
                        },
                    }
                ],
            },
        )
        return exit_code

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
            local.mkdir(parents=True, exist_ok=True)
            mapping[mount["mountPath"]] = str(local)
        mapping[container.get("terminationMessagePath", "/dev/termination-log")] = str(scratch / "termination-log")
        return mapping

    @staticmethod
    def _rewrite(value: str, mapping: dict[str, str]) -> str:
        for container_path in sorted(mapping, key=len, reverse=True):
            if value == container_path or value.startswith(container_path + "/"):
                return mapping[container_path] + value[len(container_path) :]
        return value

    async def _run_container(self, pod: dict[str, Any], container: dict[str, Any], scratch: Path) -> tuple[int, str]:
        mapping = self._mounts(pod, container, scratch)
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = self._rewrite(item["value"], mapping)
        argv = [self._rewrite(a, mapping) for a in [*container.get("command", []), *container.get("args", [])]]
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self.emulator.pod_logs[key] = ""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[pod["metadata"]["uid"]] = proc
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
            self.processes.pop(pod["metadata"]["uid"], None)
        if exit_code < 0:
            exit_code = 128 - exit_code  # how a container runtime reports death by signal
        term = scratch / "termination-log"
        message = term.read_text()[:4096] if term.exists() else ""
        if not message and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            tail = "".join(self.emulator.pod_logs[key].splitlines(keepends=True)[-FALLBACK_LINES:])
            message = tail[-FALLBACK_BYTES:]
        return exit_code, message
