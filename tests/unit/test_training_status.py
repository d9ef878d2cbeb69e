"""Status decisions from observed Job / pod / log states (pure functions)."""

from __future__ import annotations

from typing import Any

from keras_operator.api.report import EpochReport, TrainingResult, last_epoch
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions
from keras_operator.status.training import Observation, invalid, observe

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
