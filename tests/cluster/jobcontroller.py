"""A fake Job controller on the fake kubelet: Job and pod status follow what Kubernetes writes:
active / succeeded / failed counts, startTime / completionTime, Complete or Failed conditions
(BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded), and the container's terminated state
with its termination message.

Indexed Jobs (completionMode: Indexed) run one pod per index at once, as `parallelism: completions`
asks: pod JOB-INDEX-XXXXX with hostname JOB-INDEX and the completion index as annotation, label and
JOB_COMPLETION_INDEX; a failed index gets a new pod until the failures exceed backoffLimit (the Job
fails and its other pods are stopped). The Job is complete once every index succeeded, or once the
indexes a successPolicy rule names did (the others are then stopped). Pod DNS: when a headless Service
named like the template's subdomain selects the Job's pods, JOB-INDEX.SUBDOMAIN.NS.svc[.cluster.local]:PORT
resolves for every pod, as a URL alias, to 127.0.0.1 and the local port that index's pod listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import kmock

from cluster.emulator import _now
from cluster.kubelet import Kubelet, free_port

SERVICES = kmock.resource("", "v1", "services")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"  # annotation and label of an Indexed Job's pods
STOP_GRACE = 10.0  # seconds a stopped pod's process has between SIGTERM and SIGKILL


def _index_path() -> str:
    return f"metadata.annotations['{INDEX_KEY}']"


def indexes(text: str) -> set[int]:
    """A Job's index list ("0", "0-2,5") as a set."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


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
        if job["spec"].get("completionMode") == "Indexed":
            await self._run_indexed_job(job)
            return
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

    async def _fail(
        self, ns: str, name: str, failed: int, reason: str, message: str, extra: dict[str, Any] | None = None
    ) -> None:
        conditions = _true(("FailureTarget", "Failed"), reason, message, _now())
        status = {"active": 0, "failed": failed, "conditions": conditions, **(extra or {})}
        await self._patch_status("jobs", ns, name, status)

    async def _run_indexed_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name = meta["namespace"], meta["name"]
        completions = int(spec.get("completions") or 1)
        backoff_limit = spec.get("backoffLimit", 6)
        rules = (spec.get("successPolicy") or {}).get("rules") or []
        enough = [indexes(r["succeededIndexes"]) for r in rules if "succeededIndexes" in r]
        template = spec["template"]
        # Each index listens on the same local ports whatever pod runs it: its DNS name stays valid.
        ports = {
            i: {p["containerPort"]: free_port() for p in template["spec"]["containers"][0].get("ports", [])}
            for i in range(completions)
        }
        succeeded: set[int] = set()
        failures: list[tuple[int, int]] = []  # (index, exit code), in order
        pods: dict[int, str] = {}  # index -> the uid of its current pod
        stopping = False
        changed = asyncio.Event()

        async def run_index(index: int) -> None:
            while not stopping:
                self._publish_dns(job, ports)
                exit_code = await self._run_pod(job, index, ports[index], pods)
                if stopping:
                    return
                if exit_code == 0:
                    succeeded.add(index)
                    changed.set()
                    return
                failures.append((index, exit_code))
                changed.set()
                if self._fail_job_reason(spec, exit_code) or len(failures) > backoff_limit:
                    return
                await self._patch_status("jobs", ns, name, {"failed": len(failures)})

        started: dict[str, Any] = {"startTime": _now(), "active": completions}
        if any(c.get("type") == "Suspended" for c in job.get("status", {}).get("conditions") or []):
            started["conditions"] = [
                {**_true(("Suspended",), "JobResumed", "Job resumed", _now())[0], "status": "False"}
            ]
        await self._patch_status("jobs", ns, name, started)
        tasks = [asyncio.create_task(run_index(i)) for i in range(completions)]
        try:
            async with asyncio.timeout(spec.get("activeDeadlineSeconds")):
                while True:
                    await changed.wait()
                    changed.clear()
                    done = ",".join(str(i) for i in sorted(succeeded))
                    counts = {"succeeded": len(succeeded), "failed": len(failures), "completedIndexes": done}
                    index, code = failures[-1] if failures else (0, 0)
                    reason = self._fail_job_reason(spec, code) if failures else None
                    if reason is None and len(failures) > backoff_limit:
                        reason = "BackoffLimitExceeded"
                    if reason:
                        stopping = True
                        await self._stop(tasks, pods)
                        message = {
                            "PodFailurePolicy": f"Container trainer for pod index {index} failed with exit code {code}",
                            "BackoffLimitExceeded": "Job has reached the specified backoff limit",
                        }[reason]
                        await self._fail(ns, name, len(failures), reason, message, counts)
                        return
                    policy_met = any(wanted <= succeeded for wanted in enough)
                    if policy_met or len(succeeded) == completions:
                        stopping = True
                        await self._stop(tasks, pods)
                        now = _now()
                        why = (
                            ("SuccessPolicy", "Matched rules at index 0") if policy_met else ("CompletionsReached", "")
                        )
                        status = {
                            **counts,
                            "active": 0,
                            "completionTime": now,
                            "conditions": _true(("SuccessCriteriaMet", "Complete"), *why, now),
                        }
                        await self._patch_status("jobs", ns, name, status)
                        return
        except TimeoutError:
            stopping = True
            await self._stop(tasks, pods)
            await self._fail(
                ns, name, len(failures), "DeadlineExceeded", "Job was active longer than specified deadline"
            )
        finally:
            stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop(self, tasks: list[asyncio.Task[None]], pods: dict[int, str]) -> None:
        """Terminate the pods still running, as the Job controller does once the Job has ended: SIGTERM,
        then SIGKILL after the grace period; each pod keeps the state it ended in."""
        for uid in pods.values():
            proc = self.processes.get(uid)
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait(tasks, timeout=STOP_GRACE)

    def _publish_dns(self, job: dict[str, Any], ports: dict[int, dict[int, int]]) -> None:
        """JOB-INDEX.SUBDOMAIN.NS.svc names, once a headless Service of that name selects the Job's pods
        (the cluster DNS publishes them only then)."""
        meta, template = job["metadata"], job["spec"]["template"]
        subdomain, ns = template["spec"].get("subdomain"), meta["namespace"]
        service = self.emulator.find(SERVICES, ns, subdomain) if subdomain else None
        if service is None or service.get("spec", {}).get("clusterIP") != "None":
            return
        selector = service["spec"].get("selector") or {}
        labels = template.get("metadata", {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            return
        for index, mapped in ports.items():
            for domain in ("svc", "svc.cluster.local"):
                for port, local in mapped.items():
                    host = f"{meta['name']}-{index}.{subdomain}.{ns}.{domain}"
                    self.url_aliases[f"{host}:{port}"] = f"127.0.0.1:{local}"

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

    async def _run_pod(
        self,
        job: dict[str, Any],
        index: int | None = None,
        ports: dict[int, int] | None = None,
        pods: dict[int, str] | None = None,
    ) -> int:
        """Run one pod of the Job to its end; for an Indexed Job, the pod of `index`, listening on `ports`,
        its uid recorded in `pods`."""
        meta = job["metadata"]
        labels = {"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"]}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}
        template = job["spec"]["template"]
        if index is None:
            pod = await self._create_pod(owner, template, labels)
        else:
            spec = {**template["spec"], "hostname": f"{meta['name']}-{index}"}
            # As the Job controller does: every container learns its index from the annotation.
            index_env = {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": _index_path()}}}
            spec["containers"] = [{**c, "env": [*c.get("env", []), index_env]} for c in spec["containers"]]
            pod = await self._create_pod(
                owner,
                template,
                {**labels, INDEX_KEY: str(index)},
                prefix=f"{meta['name']}-{index}",
                annotations={INDEX_KEY: str(index)},
                spec=spec,
            )
            if pods is not None:
                pods[index] = pod["metadata"]["uid"]
        ns, pod_name = meta["namespace"], pod["metadata"]["name"]
        container = (template["spec"] if index is None else spec)["containers"][0]
        scratch = Path(tempfile.mkdtemp(prefix=f"pod-{pod_name}-"))
        try:
            exit_code, message = await self._run_container(pod, container, scratch, ports)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if pod["metadata"]["uid"] in self.deleted:
            # Deleted from the API (the kubelet stopped it): no pod left to report on; the Job counts the
            # failure and starts another, as after a preemption.
            return exit_code
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
