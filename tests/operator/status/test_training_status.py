"""Status decisions from observed Job / pod / log states (pure functions)."""

from __future__ import annotations

from typing import Any

from keras_operator.api.report import EpochReport, TrainingResult, last_epoch
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions
from keras_operator.status.training_status import Observation, invalid, observe

NOW = "2026-01-01T00:00:00Z"


def job(status: dict[str, Any] | None = None, suspend: bool = False, labels: dict[str, str] | None = None) -> dict:
    return {"metadata": {"name": "j", "labels": labels or {}}, "spec": {"suspend": suspend}, "status": status or {}}


def pod(phase: str, state: dict[str, Any] | None = None, conditions: list | None = None) -> dict:
    return {
        "metadata": {"name": "j-abc"},
        "status": {"phase": phase, "containerStatuses": [{"state": state or {}}], "conditions": conditions or []},
    }


def test_no_job_yet_is_pending() -> None:
    status = observe(Observation(job=None), {}, 1, NOW, 5)
    assert status["phase"] == "Pending"


def test_unschedulable_pod_says_why() -> None:
    obs = Observation(
        job(),
        pod(
            "Pending",
            conditions=[{"type": "PodScheduled", "status": "False", "message": "0/3 nodes have nvidia.com/gpu"}],
        ),
    )
    status = observe(obs, {}, 1, NOW, 5)
    assert status["phase"] == "Pending"
    assert "0/3 nodes have nvidia.com/gpu" in status["message"]


def test_image_pull_problem_is_shown() -> None:
    obs = Observation(job({"active": 1}), pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}))
    assert "ImagePullBackOff" in observe(obs, {}, 1, NOW, 5)["message"]


def test_running_shows_the_reported_progress_and_keeps_it_when_no_report_comes() -> None:
    log = 'noise\n{"event": "epoch_end", "epoch": 2, "epochs": 5, "metrics": {"loss": 0.5}, "seconds": 3.0}\n{"x": 1}\n'
    report = last_epoch(log)  # the log fallback and a pushed report end up the same
    status = observe(Observation(job({"active": 1}), pod("Running"), report), {}, 1, NOW, 5)
    assert status["phase"] == "Running"
    assert status["progress"] == {"epoch": 2, "epochs": 5, "percent": 40, "secondsRemaining": 9}
    assert status["metrics"] == {"loss": 0.5}
    assert status["message"] == "epoch 2/5"
    again = observe(Observation(job({"active": 1}), pod("Running"), None), status, 1, NOW, 5)
    assert again["progress"] == status["progress"]


def test_an_older_report_never_moves_progress_back() -> None:
    newer = EpochReport(epoch=4, epochs=5, metrics={"loss": 0.2}, samples_per_second=1234.56)
    status = observe(Observation(job({"active": 1}), pod("Running"), newer), {}, 1, NOW, 5)
    assert status["progress"] == {"epoch": 4, "epochs": 5, "percent": 80, "samplesPerSecond": 1235.0}
    older = EpochReport(epoch=3, epochs=5, metrics={"loss": 0.3})
    late = observe(Observation(job({"active": 1}), pod("Running"), older), status, 1, NOW, 5)
    assert late["progress"] == status["progress"]
    assert late["metrics"] == {"loss": 0.2}


def test_failure_without_a_result_uses_the_log_fallback_and_the_job_reason() -> None:
    failed = job(
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        }
    )
    crashed = pod("Failed", {"terminated": {"exitCode": 137, "message": "epoch 3\nKilled: out of memory\n"}})
    status = observe(Observation(failed, crashed), {}, 1, NOW, 5)
    assert status["phase"] == "Failed"
    assert status["message"] == "BackoffLimitExceeded: Killed: out of memory"


def test_deadline_exceeded_is_reported() -> None:
    failed = job(
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                }
            ]
        }
    )
    status = observe(Observation(failed, None), {}, 1, NOW, 5)
    assert status["message"] == "DeadlineExceeded: Job was active longer than specified deadline"


def test_transition_time_only_changes_with_the_status() -> None:
    first = observe(Observation(job({"active": 1}), pod("Running"), None), {}, 1, "2026-01-01T00:00:00Z", 5)
    later = observe(Observation(job({"active": 1}), pod("Running"), None), first, 2, "2026-01-01T00:05:00Z", 5)
    running = next(c for c in later["conditions"] if c["type"] == "Running")
    assert running["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert running["observedGeneration"] == 2


def condition_status(status: dict[str, Any], type_: str) -> str | None:
    found = conditions.get(status.get("conditions"), type_)
    return found["status"] if found else None


def running_at_epoch(epoch: int, generation: int = 1) -> dict[str, Any]:
    report = EpochReport(epoch=epoch, epochs=5, metrics={"loss": 0.5})
    return observe(Observation(job({"active": 1}), pod("Running"), report), {}, generation, NOW, 5)


def test_a_failed_pod_the_job_retries_is_pending_and_not_running() -> None:
    # Was: phase Pending with Running=True kept from before the failure.
    crashed = pod("Failed", {"terminated": {"exitCode": 137, "message": "epoch 3\nKilled: out of memory\n"}})
    status = observe(Observation(job({"active": 0, "failed": 1}), crashed), running_at_epoch(3), 1, NOW, 5)
    assert status["phase"] == "Pending"
    assert condition_status(status, "Running") == "False"
    assert "Killed: out of memory" in status["message"]
    assert status["progress"]["epoch"] == 3


def test_a_succeeded_pod_before_the_job_completes_is_still_running() -> None:
    # Was: phase Pending with Running=True, between the pod's end and the Job's Complete condition.
    done = pod("Succeeded", {"terminated": {"exitCode": 0, "message": "{}"}})
    report = EpochReport(epoch=5, epochs=5, metrics={"loss": 0.1})
    status = observe(Observation(job({"active": 0}), done, report), running_at_epoch(4), 1, NOW, 5)
    assert status["phase"] == "Running"
    assert condition_status(status, "Running") == "True"
    assert status["progress"]["epoch"] == 5


def test_a_suspended_job_is_queued_and_not_running() -> None:
    status = observe(Observation(job(suspend=True), None), running_at_epoch(2), 1, NOW, 5)
    assert status["phase"] == "Queued"
    assert condition_status(status, "Queued") == "True"
    assert condition_status(status, "Running") == "False"


def test_a_restart_claims_a_resume_only_when_checkpoints_are_on() -> None:
    obs = Observation(job({"active": 1, "failed": 1}), pod("Running"), None)
    assert "resumed from the last checkpoint" in observe(obs, {}, 1, NOW, 5)["message"]
    off = observe(obs, {}, 1, NOW, 5, checkpoints=False)
    assert "attempt 2" in off["message"]
    assert all("resum" not in m.lower() for m in [off["message"], *(c["message"] for c in off["conditions"])])
    crashed = pod("Failed", {"terminated": {"exitCode": 1, "message": "boom"}})
    retrying = observe(Observation(job({"failed": 1}), crashed), off, 1, NOW, 5, checkpoints=False)
    assert "resum" not in retrying["message"].lower()


def sidecar_pod(phase: str, trainer_message: str, exit_code: int) -> dict[str, Any]:
    sidecar = {"name": "istio-proxy", "state": {"terminated": {"exitCode": 0, "message": "envoy shutting down"}}}
    trainer = {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": trainer_message}}}
    return {"metadata": {"name": "j-abc"}, "status": {"phase": phase, "containerStatuses": [sidecar, trainer]}}


def test_the_trainer_result_is_found_beside_a_sidecar() -> None:
    result = TrainingResult(phase="Succeeded", message="done", epoch=5, epochs=5, model_uri="s3://b/model.keras")
    complete = job({"conditions": [{"type": "Complete", "status": "True"}]})
    status = observe(Observation(complete, sidecar_pod("Succeeded", result.to_termination_message(), 0)), {}, 1, NOW, 5)
    assert status["modelUri"] == "s3://b/model.keras"
    assert status["message"] == "done"
    failed = job({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    status = observe(Observation(failed, sidecar_pod("Failed", "Killed: out of memory", 137)), {}, 1, NOW, 5)
    assert status["message"] == "BackoffLimitExceeded: Killed: out of memory"


def test_the_code_hash_and_an_unservable_model_reach_the_status() -> None:
    result = TrainingResult(phase="Succeeded", message="done", epoch=1, epochs=1, model_uri="m", code_hash="ab" * 32)
    complete = job({"conditions": [{"type": "Complete", "status": "True"}]})
    ended = pod("Succeeded", {"terminated": {"exitCode": 0, "message": result.to_termination_message()}})
    assert observe(Observation(complete, ended), {}, 1, NOW, 1)["codeHash"] == "ab" * 32
    message = "the saved model cannot be served with the code recorded with it: Could not locate class 'Scale'"
    unservable = TrainingResult(phase="Failed", reason="Unservable", message=message, epochs=1)
    failed = job({"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]})
    ended = pod("Failed", {"terminated": {"exitCode": 2, "message": unservable.to_termination_message()}})
    status = observe(Observation(failed, ended), {}, 1, NOW, 1)
    assert status["phase"] == "Failed"
    assert "codeHash" not in status
    assert conditions.get(status["conditions"], "Failed")["reason"] == "Unservable"
    assert "Could not locate class 'Scale'" in status["message"]


def test_a_complete_job_waits_for_its_pods_final_state_to_say_the_result() -> None:
    """The Job's Complete can reach the operator before the pod's end (two watches): Succeeded then had no
    modelUri, and an operator that wrote it never looked again (seen in the faults test, 1 of 100)."""
    result = TrainingResult(phase="Succeeded", message="done", epoch=5, epochs=5, model_uri="s3://b/model.keras")
    complete = job({"conditions": [{"type": "Complete", "status": "True"}]})
    stale = observe(Observation(complete, pod("Running", {"running": {}})), running_at_epoch(4), 1, NOW, 5)
    assert stale["phase"] == "Running"
    assert stale["progress"]["epoch"] == 4
    assert "completionTime" not in stale
    ended = pod("Succeeded", {"terminated": {"exitCode": 0, "message": result.to_termination_message()}})
    status = observe(Observation(complete, ended), stale, 1, NOW, 5)
    assert status["phase"] == "Succeeded"
    assert status["modelUri"] == "s3://b/model.keras"
    # A pod that ended without a result (a custom image), or one already gone, does not hold it up.
    for silent in (pod("Succeeded", {"terminated": {"exitCode": 0}}), pod("Running", {"terminated": {}}), None):
        assert observe(Observation(complete, silent), stale, 1, NOW, 5)["phase"] == "Succeeded"


def test_completion_without_a_result_keeps_the_progress_shown() -> None:
    # The pod may be gone (or its message unreadable) by the time the Job completes.
    complete = job({"conditions": [{"type": "Complete", "status": "True"}]})
    status = observe(Observation(complete, None), running_at_epoch(4), 1, NOW, 5)
    assert status["phase"] == "Succeeded"
    assert status["progress"]["epoch"] == 4


def test_every_condition_carries_the_generation_evaluated() -> None:
    queued = observe(Observation(job(suspend=True), None), {}, 1, NOW, 5)
    complete = job({"conditions": [{"type": "Complete", "status": "True"}]})
    status = observe(Observation(complete, None), queued, 2, NOW, 5)
    assert status["observedGeneration"] == 2
    assert {c["type"]: c.get("observedGeneration") for c in status["conditions"]} == {
        t: 2 for t in ("Valid", "Created", "Queued", "Running", "Succeeded")
    }
    assert condition_status(status, "Queued") == "False"


def test_no_generation_writes_no_observed_generation() -> None:
    for status in (
        observe(Observation(None), {"observedGeneration": 3}, None, NOW, 5),
        observe(Observation(job({"active": 1}), pod("Running")), {}, None, NOW, 5),
        invalid("bad", {}, None, NOW),
    ):
        assert "observedGeneration" not in status
        assert all("observedGeneration" not in c for c in status["conditions"])


def test_an_invalid_spec_after_running_is_not_running() -> None:
    status = invalid("spec.podTemplate: rejected", running_at_epoch(2), 1, NOW)
    assert status["phase"] == "Failed"
    assert condition_status(status, "Running") == "False"


def test_settings_from_environment() -> None:
    s = Settings.from_env(
        {
            "KERAS_OPERATOR_NAMESPACES": "ml, team-b,",
            "KERAS_OPERATOR_TRAINER_IMAGE": "r/t:1",
            "KERAS_OPERATOR_SYNC_INTERVAL": "2.5",
        }
    )
    assert s.namespaces == ("ml", "team-b")
    assert s.trainer_image == "r/t:1"
    assert s.sync_interval == 2.5
    assert Settings.from_env({}).namespaces == ()


# --- Kueue: queued, admitted, evicted, admitted again ---

QUEUE = {"kueue.x-k8s.io/queue-name": "team-a"}
SUSPENDED = {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}


def test_a_kueue_eviction_after_running_is_preempted_and_not_failed() -> None:
    queued = observe(Observation(job(suspend=True, labels=QUEUE)), {}, 1, NOW, 5)
    assert (queued["phase"], conditions.get(queued["conditions"], "Queued")["reason"]) == ("Queued", "Suspended")
    assert "waiting for Kueue to admit the Job (queue team-a)" in queued["message"]
    report = EpochReport(epoch=3, epochs=5, metrics={"loss": 0.4})
    running = observe(
        Observation(job({"active": 1, "startTime": "t0"}, labels=QUEUE), pod("Running"), report), queued, 1, NOW, 5
    )
    assert running["phase"] == "Running"
    # Kueue suspends the admitted Job again; its pod is killed on the way (no failure of the training).
    killed = pod("Failed", {"terminated": {"exitCode": 143, "message": "Terminated"}})
    for active in (1, 0):
        evicted = observe(Observation(job({"active": active, **SUSPENDED}, True, QUEUE), killed), running, 1, NOW, 5)
        assert evicted["phase"] == "Queued"
        assert condition_status(evicted, "Queued") == "True"
        assert condition_status(evicted, "Running") == "False"
        assert conditions.get(evicted["conditions"], "Queued")["reason"] == "Preempted"
        assert "evicted by Kueue" in evicted["message"]
        assert "resumes from its last checkpoint (epoch 3/5 done)" in evicted["message"]
        assert evicted["progress"]["epoch"] == 3
        assert evicted["startTime"] == "t0"  # Kueue clears the Job's startTime on eviction
    # It stays Preempted while it waits, and runs again once admitted.
    still = observe(Observation(job(SUSPENDED, True, QUEUE)), evicted, 1, NOW, 5)
    assert conditions.get(still["conditions"], "Queued")["reason"] == "Preempted"
    again = observe(Observation(job({"active": 1, "startTime": "t9"}, labels=QUEUE), pod("Running")), still, 1, NOW, 5)
    assert again["phase"] == "Running"
    assert condition_status(again, "Queued") == "False"
    assert again["startTime"] == "t0"


def test_a_preempted_training_without_checkpoints_starts_over() -> None:
    running = observe(Observation(job({"active": 1}, labels=QUEUE), pod("Running")), {}, 1, NOW, 5, checkpoints=False)
    evicted = observe(Observation(job(SUSPENDED, True, QUEUE)), running, 1, NOW, 5, checkpoints=False)
    assert conditions.get(evicted["conditions"], "Queued")["reason"] == "Preempted"
    assert "starts over: spec.output.checkpoints is off" in evicted["message"]
    assert "resum" not in evicted["message"]


def test_a_queued_job_that_never_ran_is_not_preempted() -> None:
    pending = observe(Observation(job({"active": 1}, labels=QUEUE), pod("Pending")), {}, 1, NOW, 5)
    requeued = observe(Observation(job(SUSPENDED, True, QUEUE)), pending, 1, NOW, 5)
    assert conditions.get(requeued["conditions"], "Queued")["reason"] == "Suspended"
    assert "waiting for Kueue" in requeued["message"]


def test_a_job_suspended_by_its_own_spec_is_not_preempted() -> None:
    status = observe(Observation(job(SUSPENDED, True)), running_at_epoch(2), 1, NOW, 5)
    assert conditions.get(status["conditions"], "Queued")["reason"] == "Suspended"
    assert "spec.runPolicy.suspend" in status["message"]


# --- several workers ---


def worker(
    index: int,
    phase: str,
    created: str = "2026-01-01T00:00:00Z",
    state: dict[str, Any] | None = None,
    suffix: str = "a",
) -> dict[str, Any]:
    if state is None:
        state = {"running": {}} if phase == "Running" else {"waiting": {"reason": "ContainerCreating"}}
    return {
        "metadata": {
            "name": f"j-{index}-{suffix}",
            "creationTimestamp": created,
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def ended(code: int, message: str, at: str, reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message, "finishedAt": at}}


def observe_workers(
    pods: list[dict[str, Any]], job_status: dict[str, Any], previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """observe() for a two-worker training, as the controller calls it: worker 0's newest pod, and all."""
    zero = max((p for p in pods if p["metadata"]["name"].startswith("j-0-")), key=lambda p: p["metadata"]["name"])
    return observe(Observation(job(job_status), zero, None, pods), previous or {}, 1, NOW, 5, workers=2)


def test_workers_ready_out_of_total() -> None:
    pods = [worker(0, "Running"), worker(1, "Pending")]
    status = observe_workers(pods, {"active": 2})
    assert status["workers"] == {"ready": 1, "total": 2}
    status = observe_workers([worker(0, "Running"), worker(1, "Running")], {"active": 2}, status)
    assert status["workers"] == {"ready": 2, "total": 2}
    # One worker: nothing to count, as before.
    assert "workers" not in observe(Observation(job({"active": 1}), pod("Running")), {}, 1, NOW, 5)


def test_the_worker_that_failed_first_is_named_not_its_peers() -> None:
    t0, t1, t2, t3 = (f"2026-01-01T00:0{m}:00Z" for m in range(4))
    oom = ended(137, "epoch 3\nKilled: out of memory", t1, "OOMKilled")
    # Worker 1 is killed; worker 0 still runs (JAX notices a lost peer after its heartbeat).
    pods = [worker(0, "Running", t0), worker(1, "Failed", t0, oom)]
    status = observe_workers(pods, {"active": 1, "failed": 1})
    assert status["phase"] == "Running"
    assert status["workers"]["ready"] == 1
    failure = {"index": 1, "pod": "j-1-a", "reason": "OOMKilled, exit code 137", "message": "Killed: out of memory"}
    assert status["workers"]["lastFailure"] == failure
    assert "worker 1 (pod j-1-a) failed (OOMKilled, exit code 137): Killed: out of memory" in status["message"]
    # Then worker 0 ends too, for want of its peer; worker 1's replacement is already there.
    lost = ended(1, "worker 0 of 2: lost contact with worker 1", t2)
    pods = [worker(0, "Failed", t0, lost), worker(1, "Failed", t0, oom), worker(1, "Pending", t1, suffix="b")]
    status = observe_workers(pods, {"active": 1, "failed": 2}, status)
    assert status["phase"] == "Pending"
    assert status["workers"]["lastFailure"] == failure
    assert status["message"].startswith("worker 1 (pod j-1-a) failed (OOMKilled, exit code 137)")
    assert "resuming from the last checkpoint" in status["message"]
    # The group restarts; a later failure of a new pod is a new cause.
    crash = ended(1, "RuntimeError: NaN", t3)
    pods = [*pods, worker(0, "Failed", t2, crash, suffix="b"), worker(1, "Running", t1, suffix="b")]
    status = observe_workers(pods, {"active": 1, "failed": 3}, status)
    assert status["workers"]["lastFailure"]["pod"] == "j-0-b"
    assert status["workers"]["lastFailure"]["message"] == "RuntimeError: NaN"


def test_a_failed_multi_worker_training_names_the_first_worker_to_fail() -> None:
    t0, t1, t2 = (f"2026-01-01T00:0{m}:00Z" for m in range(3))
    evicted = worker(1, "Failed", t0, {})
    evicted["status"].update(
        reason="Evicted",
        message="The node was low on resource: memory.",
        conditions=[{"type": "Ready", "status": "False", "lastTransitionTime": t1}],
    )
    pods = [worker(0, "Failed", t0, ended(1, "worker 0 of 2: lost contact with worker 1", t2)), evicted]
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    status = observe_workers(pods, failed)
    assert status["phase"] == "Failed"
    assert status["message"] == (
        "BackoffLimitExceeded: worker 0 of 2: lost contact with worker 1; first to fail: "
        "worker 1 (pod j-1-a) failed (Evicted): The node was low on resource: memory."
    )
    assert status["workers"] == {
        "ready": 0,
        "total": 2,
        "lastFailure": {
            "index": 1,
            "pod": "j-1-a",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        },
    }
    # Once the pods are gone, the failure shown stays.
    again = observe(Observation(job(failed)), status, 1, NOW, 5, workers=2)
    assert again["workers"]["lastFailure"] == status["workers"]["lastFailure"]
    assert again["message"] == status["message"]


def test_a_group_restart_is_counted_in_failed_worker_pods_not_attempts() -> None:
    """One group restart of two workers fails two pods: "attempt 3" would be wrong."""
    from keras_operator.status.training_status import Observation, observe

    job = {"metadata": {"name": "t-train"}, "spec": {}, "status": {"active": 2, "failed": 2}}
    pod = {
        "metadata": {"name": "t-train-0-b", "creationTimestamp": "2026-01-01T00:01:00Z"},
        "status": {"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]},
    }
    status = observe(Observation(job=job, pod=pod, pods=[pod]), {}, 1, "2026-01-01T00:02:00Z", 8, workers=2)
    assert "restarted after 2 failed worker pods" in status["message"]
    assert "attempt" not in status["message"]
    single = observe(Observation(job=job, pod=pod, pods=[pod]), {}, 1, "2026-01-01T00:02:00Z", 8)
    assert "attempt 3" in single["message"]
