"""Status decisions from observed Job / pod / log states (pure functions)."""

from __future__ import annotations

from typing import Any

from keras_operator.api.report import EpochReport, last_epoch
from keras_operator.runtime.settings import Settings
from keras_operator.status.training import Observation, observe

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
