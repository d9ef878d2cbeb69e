"""Each benchmark runs end to end at tiny sizes, so the scripts keep working (figures are not checked:
timings belong in bench/README.md, not in assertions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, name: str, out: Path, *args: str, timeout: float = 600) -> dict:
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--out", str(out), *args],
        check=True,
        timeout=timeout,
        cwd=ROOT,
    )
    readme = (out / "README.md").read_text()
    assert f"<!-- results:{name} -->" in readme
    return json.loads((out / "results" / f"{name}.json").read_text())


def test_operator_benchmark_runs(tmp_path: Path) -> None:
    data = run_bench(
        "operator_load.py",
        "operator",
        tmp_path,
        *("--counts", "3", "--repeats", "1"),
        *("--running", "3", "--epochs", "3", "--quiet", "2"),
    )
    for which in ("keras-operator", "baseline"):
        (run,) = data["runs"][which]["3"]
        assert run["count"] == 3
        assert run["p50_ms"] > 0
        assert run["peak_rss_mb"] > 10
        assert run["requests"]["method.POST jobs"] == 4  # the warm-up resource and three more
        assert run["operator_requests"]["method.POST jobs"] == 4  # told apart from the benchmark's by User-Agent
    assert data["summary"]["3"]["throughput_ratio"] > 0

    # Three trainings running at once, three epochs pushed each: the plumbing, not the timings.
    running = json.loads((tmp_path / "results" / "fleet.json").read_text())["running"]
    assert "<!-- results:fleet -->" in (tmp_path / "README.md").read_text()
    assert running["pushes"] == 9
    assert running["landed_pushes"] == 9  # every epoch reached the status
    assert running["missing"] == 0
    assert running["latency_p50_ms"] > 0
    assert 1 <= running["token_reviews"] <= 3  # one per pod token, then the cache
    assert running["token_reviews_after_first_round"] == 0
    assert running["status_patches"] >= 3
    assert running["quiet_seconds"] >= 2


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/setup.sh installs it)")
def test_serving_benchmark_runs(tmp_path: Path) -> None:
    servers = ["ceiling", "ours", "ours-large", "ours-handler"]
    args = ["--models", "mlp", "--servers", *servers, "--concurrency", "2", "--seconds", "1"]
    data = run_bench(
        "serving.py", "serving", tmp_path, *args, "--repeats", "1", "--big-rows", "4", "--limit-seconds", "0.2"
    )
    cells = data["models"]["mlp"]
    assert {(c["server"].split(",")[0], c["protocol"], c["rows_per_request"]) for c in cells} == {
        ("constant response (wrk's ceiling)", "TF Serving JSON", 1),
        ("(a) ours", "TF Serving JSON", 1),
        ("(a) ours", "TF Serving JSON", 4),
        ("(a) ours", "Open Inference binary", 4),
        ("(a') ours", "TF Serving JSON", 4),
        ("(a') ours", "Open Inference binary", 4),
        ("(a+h) ours as (a)", "TF Serving JSON", 1),
    }
    assert all(c["rps"] > 0 and c["errors"] == 0 for c in cells)
    assert data["limits"]["mlp"]["limit"] >= data["limits"]["mlp"]["calls"]["predict_on_batch"]["256"] > 0
    assert data["summary"]["mlp"]["ours_vs_limit_rows"] > 0
    assert data["summary"]["mlp"]["handler_vs_ours_rps"]["2"] > 0
    assert data["summary"]["mlp"]["handler_vs_ours_cpu"]["2"] > 0
    assert all(c["cpu_us_per_request"] > 0 for c in cells)


def test_trainer_benchmark_runs(tmp_path: Path) -> None:
    data = run_bench("trainer.py", "trainer", tmp_path, "--workloads", "digits-mlp", "--repeats", "1", "--epochs", "2")
    results = data["summary"]["digits-mlp"]
    assert set(results) == {
        "hand-written Keras script",
        "generic trainer, checkpoints off",
        "generic trainer (as shipped: checkpoints on)",
    }
    assert results["hand-written Keras script"]["ratio"] == 1.0
    for entry in results.values():
        assert entry["steps_per_s"] > 0
        assert entry["first_step_s"] > 0
    (run,) = data["runs"]["digits-mlp"]["generic trainer, checkpoints off"]
    assert run["steps"] == 48  # 1527 digits in batches of 32
    assert len(run["epoch_s"]) == 2


def test_trainer_devices_benchmark_runs(tmp_path: Path) -> None:
    """The devices dimension: 1 and 2 logical CPU devices, the trainer and the script with the same
    strategy (MirroredStrategy here); that each really trained on the devices asked for, not how fast."""
    data = run_bench(
        "trainer.py",
        "trainer-devices",
        tmp_path,
        *("--devices", "1,2", "--backends", "tensorflow", "--workloads", "digits-mlp", "--repeats", "1"),
        *("--epochs", "2"),
    )
    assert data["devices"] == [1, 2]
    assert data["gpu"] is False
    assert data["samples"] == {"digits-mlp": 1504}  # 1,527 digits cut to whole batches of 32
    assert data["load_average_1min"]["max"] >= 0
    by_count = data["summary"]["digits-mlp"]["tensorflow"]
    assert set(by_count) == {"1", "2"}
    for count, results in by_count.items():
        assert set(results) == {"hand-written script, same strategy", "generic trainer, checkpoints off"}
        assert results["hand-written script, same strategy"]["ratio"] == 1.0
        for entry in results.values():
            assert entry["steps_per_s"] > 0
            assert entry["samples_per_s"] > 0
            assert entry["first_step_s"] > 0
        for label, (run,) in data["runs"]["digits-mlp"]["tensorflow"][count].items():
            assert run["devices"] == int(count), label  # the parent refuses a run that fell back to one device
            assert run["steps"] == 47
            assert len(run["epoch_s"]) == 2
    assert "| digits-mlp | tensorflow | 2 | generic trainer, checkpoints off |" in (tmp_path / "README.md").read_text()


def test_handler_cost_benchmark_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "handler_cost.py"), "--number", "50"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "the handler adds" in done.stdout
    assert "batch, identity handler:" in done.stdout
