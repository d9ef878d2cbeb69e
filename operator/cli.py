"""kerasop: run a KerasTrainingJob on this machine, or print what the operator would create for it.

Exit codes: 0 success, 1 the training failed, 2 the resource is invalid (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from keras_operator import conditions, training_status
from keras_operator.api.parse import InvalidResource, parse, read_documents
from keras_operator.api.training import KerasTrainingJob
from keras_operator.builders.training import build_config_map, build_job
from keras_operator.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
DEFAULT_PVC_ROOT = "runs/pvc"


def _load_one(path: str) -> KerasTrainingJob:
    docs = read_documents(path)
    if len(docs) != 1:
        raise InvalidResource(f"{path}: expected one resource, found {len(docs)} documents")
    return parse(docs[0])


def _dump(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2)
    return yaml.safe_dump(obj, sort_keys=False)


def local_output(job: KerasTrainingJob) -> str:
    """Where a local run writes: spec.output.uri, or ./runs/NAME when the spec names none."""
    return job.spec.output.uri or str(Path("runs") / job.metadata.name)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        job = _load_one(args.file)
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    os.environ.setdefault("KERAS_OPERATOR_PVC_ROOT", str(Path(args.pvc_root).resolve()))
    try:
        from keras_trainer.cli import prepare_backend
    except ImportError:
        print("error: local runs need the trainer: pip install 'keras-operator[trainer]'", file=sys.stderr)
        return EXIT_FAILED
    prepare_backend(job.spec.backend)
    from keras_operator import logs
    from keras_trainer import train
    from keras_trainer.reporting import ConsoleReporter

    logs.configure(level="warning", stream="stderr")
    output = args.output or local_output(job)
    print(f"training {job.metadata.name}: {job.spec.training.epochs} epochs, output {output}", file=sys.stderr)
    started = conditions.now_iso()
    result = train.run(job, output, ConsoleReporter())
    status = training_status.from_result(result, {}, job.metadata.generation, conditions.now_iso())
    status = {"phase": status.pop("phase"), "startTime": started, "completionTime": conditions.now_iso(), **status}
    print(_dump({"status": status}, args.output_format))
    return EXIT_OK if result.phase == "Succeeded" else (EXIT_INVALID if result.reason == "InvalidSpec" else EXIT_FAILED)


def cmd_render(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        docs = read_documents(args.file)
        jobs = [parse(d) for d in docs]
    except InvalidResource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    objects: list[dict[str, Any]] = []
    for job in jobs:
        owner = {
            "apiVersion": job.api_version,
            "kind": job.kind,
            "metadata": job.metadata.model_dump(exclude_none=True),
        }
        if args.namespace:
            owner["metadata"]["namespace"] = args.namespace
        objects += [build_config_map(owner, job.spec), build_job(owner, job.spec, settings.trainer_image)]
    if args.output_format == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(yaml.safe_dump_all(objects, sort_keys=False), end="")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kerasop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train the KerasTrainingJob in FILE on this machine")
    run.add_argument("file")
    run.add_argument(
        "-o",
        "--output-format",
        choices=["yaml", "json"],
        default="yaml",
        help="format of the final status (default yaml)",
    )
    run.add_argument("--output", help="override spec.output.uri (default: spec.output.uri, else ./runs/NAME)")
    run.add_argument(
        "--pvc-root",
        default=os.environ.get("KERAS_OPERATOR_PVC_ROOT", DEFAULT_PVC_ROOT),
        help="local folder standing in for PVCs: pvc://CLAIM/PATH -> PVC_ROOT/CLAIM/PATH "
        f"(default ./{DEFAULT_PVC_ROOT})",
    )
    run.set_defaults(func=cmd_run)
    render = sub.add_parser("render", help="print the Kubernetes objects the operator would create for FILE")
    render.add_argument("file")
    render.add_argument("-o", "--output-format", choices=["yaml", "json"], default="yaml")
    render.add_argument("-n", "--namespace", help="namespace for the objects (default: the resource's own)")
    render.set_defaults(func=cmd_render)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
