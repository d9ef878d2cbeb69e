"""The generic trainer against a hand-written Keras script doing the same training.

Usage: python bench/trainer.py [--repeats 5] [--workloads digits-mlp cnn-synthetic]
       python bench/trainer.py --devices 1,2 [--backends tensorflow jax] [--gpu]

Each repeat runs both, alternating, each in a fresh process: same model, data, optimizer, batch size
and epochs. Reported: steady-state steps/s after the first epoch (median over epochs, then over
repeats), epoch wall time (validation and the generic trainer's per-epoch checkpoint included), and
time to first step from process launch. The generic trainer runs twice: as shipped (checkpoints on,
what a preemptible GPU node needs) and with `output.checkpoints: false`, the hand-written script's
equal in work.

With --devices, the same comparison per device count instead: the generic trainer (checkpoints off)
against the hand-written script given the same strategy by hand (`trainer_devices_run.py`:
MirroredStrategy on TensorFlow, DataParallel on JAX), on each backend, over N logical CPU devices
(KERAS_TRAINER_CPU_DEVICES=N) or, with --gpu, over the first N visible GPUs. Reported per device
count: steps/s, samples/s, and the trainer/script ratios.
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
BACKENDS = ("tensorflow", "jax")
CPU_DEVICES_ENV = "KERAS_TRAINER_CPU_DEVICES"  # the trainer's switch; trainer_devices_run.py's script reads it too
SCRIPT_N = "hand-written script, same strategy"
TRAINER_N = "generic trainer, checkpoints off"


def prepare_data(data: Path, images: int) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for name in ("digits.npz", "digits-test.npz"):
        (data / name).write_bytes((ROOT / "examples" / "data" / name).read_bytes())
    rng = np.random.default_rng(0)
    x = rng.random((images, 32, 32, 3), dtype=np.float32)
    np.savez(data / "images.npz", x=x, y=rng.integers(0, 10, images))


def job_file(work: Path, workload: str, data: Path, checkpoints: bool, backend: str = "tensorflow") -> Path:
    spec = json.loads(json.dumps(WORKLOADS[workload]).replace("DATA/", f"{data}/"))
    spec["training"].update(COMMON)
    spec["output"] = {"uri": str(work / "unused"), "checkpoints": checkpoints}
    spec["backend"] = backend
    doc = {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasTrainingJob",
        "metadata": {"name": workload},
        "spec": spec,
    }
    path = work / f"{workload}-{backend}-{'ckpt' if checkpoints else 'nockpt'}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(
    args: list[str], out: Path, script: str = "trainer_run.py", env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {**(env or os.environ), "BENCH_LAUNCHED": repr(time.time())}
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args, str(out)], capture_output=True, text=True, env=env
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("BENCH "))


def steady(report: dict[str, Any], key: str = "steps_per_s") -> float:
    """Steps per second (of wall or of CPU time) after the first epoch, which holds tracing and warm-up."""
    return median(report[key][1:])


def device_counts(text: str) -> list[int]:
    counts = sorted({int(c) for c in text.split(",") if c.strip()})
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected device counts like 1,2,4")
    return counts


def device_env(count: int, gpu: bool) -> dict[str, str]:
    """The environment that gives a run `count` devices, the same for the trainer and the script."""
    env = dict(os.environ)
    if gpu:
        env.pop(CPU_DEVICES_ENV, None)
        # Both sides train on every GPU they see: showing them the first `count` is the device count.
        visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        visible = visible or [str(i) for i in range(count)]
        if len(visible) < count:
            raise SystemExit(f"{count} GPUs asked for, CUDA_VISIBLE_DEVICES lists {len(visible)}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[:count])
    else:
        env[CPU_DEVICES_ENV] = str(count)
        # With one device the trainer takes a GPU when it sees one: hidden, so a CPU run stays on the CPU.
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def train_samples(job: Path) -> int:
    """Examples in an epoch of this job's training data (arrays: an npz file's y)."""
    uri = yaml.safe_load(job.read_text())["spec"]["data"]["train"]["uri"]
    with np.load(uri) as arrays:
        return len(arrays["y"])


def steady_samples(report: dict[str, Any], samples: int, batch: int) -> float:
    """Samples per second over the same span as steady(): each epoch is timed from the end of its first
    step to the end of its last, so it covers all samples but the first batch, in steps - 1 steps."""
    return (samples - batch) / (report["steps"] - 1) * steady(report)


def whole_batches(data: Path, into: Path, multiple: int) -> Path:
    """A copy of every data file cut to a multiple of `multiple` examples. Keras on JAX with DataParallel
    (the script's and the trainer's alike) fails on a last batch that does not split evenly over the
    devices (1,527 digits in batches of 32 leave 23: jax's IndivisibleError), where TensorFlow's
    MirroredStrategy copes; cut to whole batches, both backends train the same examples."""
    into.mkdir(parents=True, exist_ok=True)
    for path in data.glob("*.npz"):
        with np.load(path) as arrays:
            keep = len(arrays["y"]) // multiple * multiple
            np.savez(into / path.name, **{k: arrays[k][:keep] for k in arrays.files})
    return into


def compare_devices(args: argparse.Namespace, work: Path, data: Path) -> None:
    """Generic trainer vs the hand-written script with the same strategy, per backend and device count."""
    counts: list[int] = args.devices
    batches = [WORKLOADS[w]["training"]["batchSize"] for w in args.workloads]
    if any(b % c for b in batches for c in counts):
        raise SystemExit(f"device counts {counts} must divide every workload's batch size {sorted(set(batches))}")
    data = whole_batches(data, work / "data-whole-batches", max(batches))
    variants = [SCRIPT_N, TRAINER_N]
    jobs = {(w, b): job_file(work, w, data, False, b) for w in args.workloads for b in args.backends}
    samples = {w: train_samples(jobs[w, args.backends[0]]) for w in args.workloads}
    runs: dict[str, dict[str, dict[str, dict[str, list[dict[str, Any]]]]]] = {
        w: {b: {str(c): {v: [] for v in variants} for c in counts} for b in args.backends} for w in args.workloads
    }
    total, done = args.repeats * len(args.workloads) * len(args.backends) * len(counts) * len(variants), 0
    loads = [os.getloadavg()[0]]
    for repeat in range(args.repeats):
        # Repeats outermost, the device order reversed and the pair's order swapped every other one, so
        # that drift in the machine's load falls on every cell alike.
        for workload in args.workloads:
            batch = WORKLOADS[workload]["training"]["batchSize"]
            for backend in args.backends:
                for count in counts if repeat % 2 == 0 else counts[::-1]:
                    for label in variants if repeat % 2 == 0 else variants[::-1]:
                        job = jobs[workload, backend]
                        argv = ["handwritten", workload, str(job)] if label == SCRIPT_N else ["generic", str(job)]
                        out = work / f"out-{workload}-{backend}-{count}-{repeat}-{variants.index(label)}"
                        loads.append(os.getloadavg()[0])
                        report = run(argv, out, "trainer_devices_run.py", device_env(count, args.gpu))
                        if report["devices"] != count:
                            raise RuntimeError(
                                f"{label} on {backend} trained on {report['devices']} devices, not {count}"
                            )
                        report["load1"] = loads[-1]
                        runs[workload][backend][str(count)][label].append(report)
                        done += 1
                        print(
                            f"[{done}/{total}] {workload} {backend} {count} device(s) #{repeat + 1} {label}: "
                            f"{steady(report):.1f} steps/s, {steady_samples(report, samples[workload], batch):,.0f} "
                            f"samples/s, first step after {report['first_step_s']:.2f} s (load {loads[-1]:.1f})",
                            flush=True,
                        )
    loads.append(os.getloadavg()[0])
    summary: dict[str, Any] = {}
    rows = []
    for workload, by_backend in runs.items():
        batch = WORKLOADS[workload]["training"]["batchSize"]
        for backend, by_count in by_backend.items():
            for count, by_variant in by_count.items():
                base = median([steady(r) for r in by_variant[SCRIPT_N]])
                base_cpu = median([steady(r, "steps_per_cpu_s") for r in by_variant[SCRIPT_N]])
                for label, reports in by_variant.items():
                    rate = median([steady(r) for r in reports])
                    per_sample = median([steady_samples(r, samples[workload], batch) for r in reports])
                    fewest = by_count[str(counts[0])][label]
                    cell = {
                        "steps_per_s": rate,
                        "samples_per_s": per_sample,
                        "ratio": rate / base,
                        "cpu_ratio": median([steady(r, "steps_per_cpu_s") for r in reports]) / base_cpu,
                        "vs_fewest_devices": per_sample
                        / median([steady_samples(r, samples[workload], batch) for r in fewest]),
                        "first_step_s": median([r["first_step_s"] for r in reports]),
                    }
                    summary.setdefault(workload, {}).setdefault(backend, {}).setdefault(count, {})[label] = cell
                    rows.append(
                        [
                            workload,
                            backend,
                            count,
                            label,
                            rate,
                            per_sample,
                            f"{cell['ratio']:.3f}",
                            f"{cell['cpu_ratio']:.3f}",
                            f"{cell['vs_fewest_devices']:.2f}",
                            cell["first_step_s"],
                        ]
                    )
    info = machine()
    where = "GPUs (the first N visible)" if args.gpu else "logical CPU devices (KERAS_TRAINER_CPU_DEVICES=N)"
    ratios = "; ".join(
        f"{w} {b}: " + ", ".join(f"{c} → {summary[w][b][str(c)][TRAINER_N]['ratio']:.2f}" for c in counts)
        for w in args.workloads
        for b in args.backends
    )
    markdown = "\n".join(
        [
            f"Median of {args.repeats} interleaved runs each (a fresh process per run), devices: {where}; "
            f"machine load average (1 min) at start / highest at a run's start / end: "
            f"{loads[0]:.1f} / {max(loads):.1f} / {loads[-1]:.1f}; {machine_line(info)}.",
            "",
            table(
                [
                    "workload",
                    "backend",
                    "devices",
                    "trainer",
                    "steady steps/s",
                    "samples/s",
                    "vs script",
                    "steps/CPU-s vs script",
                    f"samples/s vs {counts[0]} device{'s' if counts[0] > 1 else ''}",
                    "first step after s",
                ],
                rows,
            ),
            "",
            f"Trainer/script steady steps/s by device count: {ratios}.",
        ]
    )
    data_out = {
        "machine": info,
        "devices": counts,
        "gpu": args.gpu,
        "samples": samples,
        "load_average_1min": {"start": loads[0], "max": max(loads), "end": loads[-1]},
        "runs": runs,
        "summary": summary,
    }
    publish("trainer-devices", data_out, markdown, args.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--images", type=int, default=4096, help="examples in the synthetic image set")
    parser.add_argument("--epochs", type=int, help="override every workload's epochs (at least 2)")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="float16 compute (spec.training.mixedPrecision): for GPUs"
    )
    parser.add_argument(
        "--devices",
        type=device_counts,
        help="compare per device count instead (e.g. 1,2): trainer vs the script with the same strategy",
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="with --devices")
    parser.add_argument(
        "--gpu", action="store_true", help="with --devices: N is the first N visible GPUs, not N logical CPU devices"
    )
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.gpu and not args.devices:
        parser.error("--gpu goes with --devices")
    for spec in WORKLOADS.values():
        if args.epochs:
            spec["training"]["epochs"] = args.epochs
        spec["training"]["mixedPrecision"] = args.mixed_precision
    work = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    data = work / "data"
    prepare_data(data, args.images)
    if args.devices:
        compare_devices(args, work, data)
        return 0
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
