"""The generic trainer against a hand-written Keras script doing the same training.

Usage: python bench/trainer.py [--repeats 5] [--workloads digits-mlp cnn-synthetic]

Each repeat runs both, alternating, each in a fresh process: same model, data, optimizer, batch size
and epochs. Reported: steady-state steps/s after the first epoch (median over epochs, then over
repeats), epoch wall time (validation and the generic trainer's per-epoch checkpoint included), and
time to first step from process launch. The generic trainer runs twice: as shipped (checkpoints on,
what a preemptible GPU node needs) and with `output.checkpoints: false`, the hand-written script's
equal in work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, machine, machine_line, median, publish, table

ROOT = HERE.parent
DIGITS_MLP = {
    "model": {
        "inputShape": [64],
        "layers": [
            {"type": "Dense", "units": 64, "activation": "relu"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
    },
    "data": {"train": {"uri": "DATA/digits.npz"}, "validation": {"uri": "DATA/digits-test.npz"}, "shuffle": True},
    "training": {"epochs": 8, "batchSize": 32, "optimizer": {"name": "adam", "learningRate": 0.002}, "seed": 1},
}
CNN_SYNTHETIC = {
    "model": {
        "inputShape": [32, 32, 3],
        "layers": [
            {"type": "Conv2D", "filters": 32, "kernel_size": 3, "activation": "relu"},
            {"type": "MaxPooling2D", "pool_size": 2},
            {"type": "Conv2D", "filters": 64, "kernel_size": 3, "activation": "relu"},
            {"type": "GlobalAveragePooling2D"},
            {"type": "Dense", "units": 10, "activation": "softmax"},
        ],
    },
    "data": {"train": {"uri": "DATA/images.npz"}, "shuffle": True},
    "training": {"epochs": 6, "batchSize": 64, "optimizer": {"name": "adam", "learningRate": 0.001}, "seed": 1},
}
WORKLOADS = {"digits-mlp": DIGITS_MLP, "cnn-synthetic": CNN_SYNTHETIC}
COMMON = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}


def prepare_data(data: Path, images: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for name in ("digits.npz", "digits-test.npz"):
        (data / name).write_bytes((ROOT / "examples" / "data" / name).read_bytes())
    rng = np.random.default_rng(0)
    x = rng.random((images, 32, 32, 3), dtype=np.float32)
    np.savez(data / "images.npz", x=x, y=rng.integers(0, 10, images))


def job_file(work: Path, workload: str, data: Path, checkpoints: bool) -> Path:
    spec = json.loads(json.dumps(WORKLOADS[workload]).replace("DATA/", f"{data}/"))
    spec["training"].update(COMMON)
    spec["output"] = {"uri": str(work / "unused"), "checkpoints": checkpoints}
    doc = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasTrainingJob",
        "metadata": {"name": workload},
        "spec": spec,
    }
    path = work / f"{workload}-{'ckpt' if checkpoints else 'nockpt'}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(args: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "BENCH_LAUNCHED": repr(time.time())}
    proc = subprocess.run(
        [sys.executable, str(HERE / "trainer_run.py"), *args, str(out)], capture_output=True, text=True, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("BENCH "))


def steady(report: dict[str, Any], key: str = "steps_per_s") -> float:
    """Steps per second (of wall or of CPU time) after the first epoch, which holds tracing and warm-up."""
    return median(report[key][1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--images", type=int, default=4096, help="examples in the synthetic image set")
    parser.add_argument("--epochs", type=int, help="override every workload's epochs (at least 2)")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="float16 compute (spec.training.mixedPrecision): for GPUs"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    for spec in WORKLOADS.values():
        if args.epochs:
            spec["training"]["epochs"] = args.epochs
        spec["training"]["mixedPrecision"] = args.mixed_precision
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    data = work / "data"
    prepare_data(data, args.images)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for workload in args.workloads:
        plain, checkpointed = job_file(work, workload, data, False), job_file(work, workload, data, True)
        variants = {
            "hand-written Keras script": ["handwritten", workload, str(plain)],
            "generic trainer, checkpoints off": ["generic", str(plain)],
            "generic trainer (as shipped: checkpoints on)": ["generic", str(checkpointed)],
        }
        runs[workload] = {label: [] for label in variants}
        for repeat in range(args.repeats):
            order = list(variants)
            order = order[repeat % len(order) :] + order[: repeat % len(order)]  # each goes first in turn
            for label in order:  # interleaved and rotated, so drift and position hit all alike
                report = run(variants[label], work / f"out-{workload}-{repeat}-{order.index(label)}")
                runs[workload][label].append(report)
                print(
                    f"{workload} #{repeat + 1} {label}: {steady(report):.1f} steps/s, "
                    f"first step after {report['first_step_s']:.2f} s",
                    flush=True,
                )
    summary: dict[str, Any] = {}
    rows = []
    for workload, by_variant in runs.items():
        base = median([steady(r) for r in by_variant["hand-written Keras script"]])
        base_cpu = median([steady(r, "steps_per_cpu_s") for r in by_variant["hand-written Keras script"]])
        base_epoch = median([median(r["epoch_s"][1:]) for r in by_variant["hand-written Keras script"]])
        summary[workload] = {}
        for label, reports in by_variant.items():
            rate = median([steady(r) for r in reports])
            cpu = median([steady(r, "steps_per_cpu_s") for r in reports])
            epoch = median([median(r["epoch_s"][1:]) for r in reports])
            first = median([r["first_step_s"] for r in reports])
            summary[workload][label] = {
                "steps_per_s": rate,
                "ratio": rate / base,
                "steps_per_cpu_s": cpu,
                "cpu_ratio": cpu / base_cpu,
                "epoch_s": epoch,
                "epoch_ratio": base_epoch / epoch,
                "first_step_s": first,
            }
            rows.append(
                [
                    workload,
                    label,
                    reports[0]["steps"],
                    rate,
                    f"{rate / base:.3f}",
                    cpu,
                    f"{cpu / base_cpu:.3f}",
                    epoch,
                    f"{base_epoch / epoch:.3f}",
                    first,
                ]
            )
    info = machine()
    markdown = "\n".join(
        [
            f"Median of {args.repeats} interleaved, rotated runs each (a fresh process per run)"
            f"{', mixed precision' if args.mixed_precision else ''}; {machine_line(info)}.",
            "",
            table(
                [
                    "workload",
                    "trainer",
                    "steps/epoch",
                    "steady steps/s",
                    "vs script",
                    "steps/CPU-s",
                    "vs script",
                    "epoch s",
                    "epoch speed vs script",
                    "first step after s",
                ],
                rows,
            ),
        ]
    )
    publish("trainer", {"machine": info, "runs": runs, "summary": summary}, markdown, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
