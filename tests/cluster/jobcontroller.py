"""A fake Job controller on the fake kubelet: Job and pod status follow what Kubernetes writes:
active / succeeded / failed counts, startTime / completionTime, Complete or Failed conditions
(BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded), and the container's terminated state
with its termination message.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cluster.emulator import _now
from cluster.kubelet import Kubelet


def _true(types: tuple[str, ...], reason: str, message: str, now: str) -> list[dict[str, Any]]:
    return [
        {"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now} for t in types
    ]


class JobController(Kubelet):
    owner_plural = "jobs"

    async def _on_owner_change(self, event: str, raw: dict[str, Any]) -> None:
        uid = raw["metadata"]["uid"]
        if event == "DELETED":
            task = self.tasks.pop(uid, None)
            if task is not None:
                task.cancel()
            return
        suspended = bool(raw.get("spec", {}).get("suspend"))
        finished = any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in raw.get("status", {}).get("conditions") or []
        )
        if suspended and uid in self.tasks:
            # Suspending a running Job stops its pods (the task's cancellation kills the process group).
            self.tasks.pop(uid).cancel()
            meta = raw["metadata"]
            suspended_now = _true(("Suspended",), "JobSuspended", "Job suspended", _now())
            await self._patch_status(
                "jobs", meta["namespace"], meta["name"], {"active": 0, "conditions": suspended_now}
            )
        elif uid not in self.tasks and not suspended and not finished:
            self.tasks[uid] = asyncio.create_task(self._run_job(raw))

    # --- the Job controller ---

    async def _run_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name = meta["namespace"], meta["name"]
        backoff_limit = spec.get("backoffLimit", 6)
        deadline = spec.get("activeDeadlineSeconds")
        failed = 0
        started: dict[str, Any] = {"startTime": _now(), "active": 1}
        if any(c.get("type") == "Suspended" for c in job.get("status", {}).get("conditions") or []):
            started["conditions"] = [
                {**_true(("Suspended",), "JobResumed", "Job resumed", _now())[0], "status": "False"}
            ]
        await self._patch_status("jobs", ns, name, started)
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
        meta = job["metadata"]
        labels = {"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"]}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}
        pod = await self._create_pod(owner, job["spec"]["template"], labels)
        ns, pod_name = meta["namespace"], pod["metadata"]["name"]
        container = job["spec"]["template"]["spec"]["containers"][0]
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
                "conditions": [{"type": "Ready", "status": "False"}],
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
