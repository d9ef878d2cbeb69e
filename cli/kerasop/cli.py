"""kerasop: train or serve a resource on this machine, or print what the operator would create for it.

Exit codes: 0 success, 1 the training failed, 2 the resource is invalid (the message names the field).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from keras_operator.api import jobfile
from keras_operator.api.common import CODE_DIR_ENV, DNS1123_LABEL, CodeSpec
from keras_operator.api.model_service import KerasModelService
from keras_operator.api.parse import InvalidResource, Resource, parse, read_documents
from keras_operator.api.training_job import MODEL_FILE, SAVEDMODEL_DIR, KerasTrainingJob
from keras_operator.builders.serving_manifests import (
    DeploymentModel,
    ServiceTarget,
    build_deployment,
    build_hpa,
    build_route,
    build_service,
    model_name,
    server_args,
    side_service_name,
)
from keras_operator.builders.training_manifests import build_job, build_worker_service, progress_endpoint
from keras_operator.controllers.canary_plan import traffic_split
from keras_operator.runtime.settings import Settings
from keras_operator.status import conditions, training_status

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2
DEFAULT_PVC_ROOT = "runs/pvc"


def load_resources(path: str) -> list[Resource]:
    """Every resource in the file; InvalidResource naming the document for a bad one, or for a second
    document of the same kind and name (applied, the second would silently replace the first)."""
    docs = read_documents(path)
    resources: list[Resource] = []
    seen: dict[tuple[str, str | None, str], int] = {}
    for index, doc in enumerate(docs, start=1):
        if _is_config_map(doc):
            continue  # code for spec.code.configMap, applied beside the resources (local_code_dir)
        try:
            resource = parse(doc)
        except InvalidResource as exc:
            raise InvalidResource(f"document {index}: {exc}" if len(docs) > 1 else str(exc)) from exc
        key = (resource.kind, resource.metadata.namespace, resource.metadata.name)
        if key in seen:
            raise InvalidResource(
                f"document {index}: metadata.name: {resource.kind} {resource.metadata.name!r} is also document "
                f"{seen[key]} of {path}"
            )
        seen[key] = index
        resources.append(resource)
    return resources


def _is_config_map(doc: dict[str, Any]) -> bool:
    return doc.get("apiVersion") == "v1" and doc.get("kind") == "ConfigMap"


def local_code_dir(path: str, name: str) -> Path | None:
    """The ConfigMap `name` of the file written out as a folder, for a local run of a training whose
    spec.code.configMap names it (in a cluster the kubelet mounts it); None when the file has none."""
    for doc in read_documents(path):
        if _is_config_map(doc) and (doc.get("metadata") or {}).get("name") == name:
            folder = Path(tempfile.mkdtemp(prefix="kerasop-code-"))
            for key, text in (doc.get("data") or {}).items():
                if not isinstance(text, str) or Path(key).name != key or key.startswith(".."):
                    raise InvalidResource(f"ConfigMap {name}: data.{key} is not a file of code")
                (folder / key).write_text(text)
            return folder
    return None


def _code_folder(path: str, code: CodeSpec | None) -> Path | None:
    """Where a local run or server finds a spec.code.configMap: that ConfigMap of the file written out,
    else the folder KERAS_TRAINER_CODE_DIR names; None for code that is no ConfigMap."""
    if code is None or not code.config_map:
        return None
    folder = local_code_dir(path, code.config_map)
    if folder is None and os.environ.get(CODE_DIR_ENV):
        folder = Path(os.environ[CODE_DIR_ENV])
    if folder is None:
        raise InvalidResource(
            f"spec.code.configMap: no ConfigMap {code.config_map!r} in {path}; put it there, or point "
            f"{CODE_DIR_ENV} at a folder of the code"
        )
    return folder


def _load(path: str, kind: type[Resource]) -> tuple[Any, list[Resource]]:
    """The one resource of `kind` in the file, and all resources in it (a service may name a job beside it)."""
    resources = load_resources(path)
    matching = [r for r in resources if isinstance(r, kind)]
    if len(matching) != 1:
        raise InvalidResource(f"{path}: expected one {kind.__name__}, found {len(matching)}")
    return matching[0], resources


def _dump(obj: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(obj, indent=2)
    return yaml.safe_dump(obj, sort_keys=False)


def local_output(job: KerasTrainingJob) -> str:
    """Where a local run writes: spec.output.uri, or ./runs/NAME when the spec names none."""
    return job.spec.output.uri or str(Path("runs") / job.metadata.name)


def _invalid(exc: Exception) -> int:
    """The one line a user reads for an invalid file (control characters from the file escaped)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(exc))
    print(f"error: {text}", file=sys.stderr)
    return EXIT_INVALID


def cmd_run(args: argparse.Namespace) -> int:
    try:
        job, _ = _load(args.file, KerasTrainingJob)
        run_id = jobfile.check_run_id(args.run_id)
    except InvalidResource as exc:
        return _invalid(exc)
    except ValueError as exc:
        print(f"error: --run-id: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if (ref := job.spec.model.training_job_ref) is not None:
        if not args.start_from:
            return _invalid(
                InvalidResource(
                    f"spec.model.trainingJobRef: no cluster here to find KerasTrainingJob {ref.name}'s model; give "
                    "--start-from with its model or output folder (its spec.output.uri)"
                )
            )
        job = job.model_copy(update={"spec": jobfile.starting_from(job.spec, args.start_from)})
    os.environ.setdefault("KERAS_OPERATOR_PVC_ROOT", str(Path(args.pvc_root).resolve()))
    try:
        folder = _code_folder(args.file, job.spec.code_source())
    except InvalidResource as exc:
        return _invalid(exc)
    if folder is not None:
        os.environ[CODE_DIR_ENV] = str(folder)
    try:
        from keras_trainer import backend
        from keras_trainer.errors import SpecError
    except ImportError:
        print("error: local runs need the trainer: pip install 'keras-operator[trainer]'", file=sys.stderr)
        return EXIT_FAILED
    try:
        backend.prepare(job.spec.backend)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    from keras_common import logs
    from keras_trainer import train
    from keras_trainer.reporting import ConsoleReporter

    # stdout carries only the final status (so `-o json | jq` works); every log line goes to stderr.
    logs.configure(level="warning", stream="stderr", stdlib=True)
    output = args.output or local_output(job)
    # The same job file the operator would give a pod, with a run id of our own (there is no uid here).
    trainer_job = jobfile.from_resource(job, run_id=run_id, output_uri=output)
    prefix = trainer_job.prefix()
    print(f"training {job.metadata.name}: {job.spec.training.epochs} epochs, output {prefix}", file=sys.stderr)
    started = conditions.now_iso()
    result = train.run(trainer_job, None, ConsoleReporter())
    status = training_status.from_result(result, {}, job.metadata.generation, conditions.now_iso())
    status = {"phase": status.pop("phase"), "startTime": started, "completionTime": conditions.now_iso(), **status}
    if tensorboard := training_status.tensorboard_uri(prefix, job.spec.output.tensorboard):
        status["tensorboardUri"] = tensorboard
    print(_dump({"status": status}, args.output_format))
    return EXIT_OK if result.phase == "Succeeded" else (EXIT_INVALID if result.reason == "InvalidSpec" else EXIT_FAILED)


def trained_model_uri(service: KerasModelService, resources: list[Resource], local: bool) -> str | None:
    """What the service would serve: its uri, or the output of the referenced job when it is known here."""
    if service.spec.model.uri:
        return service.spec.model.uri
    ref = service.spec.model.training_job_ref
    assert ref is not None
    job = next((r for r in resources if isinstance(r, KerasTrainingJob) and r.metadata.name == ref.name), None)
    if not local:
        return None  # in a cluster each run writes under its resource's uid, known only once applied
    # Where `kerasop run` puts it (its default run id), in whichever format it was saved.
    output = local_output(job) if job is not None else str(Path("runs") / ref.name)
    if job is not None:
        return f"{jobfile.run_prefix(output, jobfile.LOCAL_RUN_ID)}/{job.spec.output.model_path()}"
    for name in (MODEL_FILE, SAVEDMODEL_DIR):
        fallback = Path(jobfile.run_prefix(output, jobfile.LOCAL_RUN_ID)) / name
        if fallback.exists():
            return str(fallback)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        service, resources = _load(args.file, KerasModelService)
    except InvalidResource as exc:
        return _invalid(exc)
    os.environ.setdefault("KERAS_OPERATOR_PVC_ROOT", str(Path(args.pvc_root).resolve()))
    uri = args.model_uri or trained_model_uri(service, resources, local=True)
    if uri is None:
        print(
            "error: spec.model.trainingJobRef: no trained model found here; give --model-uri, or put the "
            "KerasTrainingJob in the same file",
            file=sys.stderr,
        )
        return EXIT_INVALID
    try:
        folder = _code_folder(args.file, service.spec.code)
    except InvalidResource as exc:
        return _invalid(exc)
    from keras_server import cli as server_cli

    name = model_name({"metadata": {"name": service.metadata.name}}, service.spec)
    argv = server_args(name, service.spec, uri, args.port)
    if folder is not None:  # the pod's mount path, here the ConfigMap written out
        argv[argv.index("--code-dir") + 1] = str(folder)
    return server_cli.main([*argv, "--host", args.host])


def render_objects(resource: Resource, resources: list[Resource], namespace: str | None) -> list[dict[str, Any]]:
    settings = Settings.from_env()
    owner = {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": resource.metadata.model_dump(exclude_none=True),
    }
    if namespace:
        owner["metadata"]["namespace"] = namespace
    if isinstance(resource, KerasTrainingJob):
        service = build_worker_service(owner, resource.spec)  # several workers: how they find worker 0
        job = build_job(owner, resource.spec, settings.image_for(resource.spec.backend), progress_endpoint(settings))
        return [*([service] if service else []), job]
    uri = trained_model_uri(resource, resources, local=False)
    if uri is None:
        ref = resource.spec.model.training_job_ref
        uri = f"<status.modelUri of KerasTrainingJob {ref.name if ref else '?'}>"
        print(
            f"note: {resource.metadata.name}: the model URI is known only once the training succeeds", file=sys.stderr
        )
    spec, image = resource.spec, settings.image_for(resource.spec.backend)
    canary = render_canary_side(resource)
    if canary is None:
        objects = [build_service(owner, spec), build_deployment(owner, spec, uri, image)]
    else:
        # The canary as it runs once ready and taking its share (Progressing).
        assert spec.canary is not None
        split = traffic_split(settings.traffic_split)
        replicas, selects = split.layout(spec.canary, spec.replicas, spec.canary.traffic_percent)
        objects = [
            build_service(owner, spec, selects),
            build_deployment(owner, spec, uri, image),
            build_deployment(owner, spec, canary, image, replicas=replicas),
        ]
        if split.by_route:
            name = resource.metadata.name
            objects += [build_service(owner, spec, side, side_service_name(name, side == "canary")) for side in SIDES]
            objects.append(build_route(owner, spec, spec.canary.traffic_percent, settings.gateway))
    hpa = build_hpa(owner, spec)
    return objects + ([hpa] if hpa else [])


SIDES: tuple[ServiceTarget, ServiceTarget] = ("stable", "canary")


def render_canary_side(service: KerasModelService) -> DeploymentModel | None:
    """What the canary serves (a trainingJobRef's model is known only once that training succeeds)."""
    canary = service.spec.canary
    if canary is None:
        return None
    model = canary.model
    if model.uri is not None:
        return DeploymentModel(model.uri, canary=True)
    if model.version is not None and service.spec.model.uri is not None:
        return DeploymentModel(service.spec.model.uri, f"specific:{model.version}", canary=True)
    ref = model.training_job_ref.name if model.training_job_ref else "?"
    return DeploymentModel(f"<status.modelUri of KerasTrainingJob {ref}>", canary=True)


def cmd_render(args: argparse.Namespace) -> int:
    objects: list[dict[str, Any]] = []
    try:
        if args.namespace and (len(args.namespace) > 63 or not re.fullmatch(DNS1123_LABEL, args.namespace)):
            raise InvalidResource(f"--namespace: {args.namespace!r} is not a namespace name (a DNS-1123 label)")
        resources = load_resources(args.file)
        for resource in resources:
            # What only building the objects finds (a job file too large for its annotation) is as invalid.
            objects += render_objects(resource, resources, args.namespace)
    except InvalidResource as exc:
        return _invalid(exc)
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
        "--start-from",
        metavar="URI",
        help="what spec.model.trainingJobRef stands for here: the referenced training's model, or its output "
        "folder (its newest complete run's model)",
    )
    run.add_argument(
        "--run-id",
        default=jobfile.LOCAL_RUN_ID,
        help="the run's id: it writes under OUTPUT/runs/RUN_ID, and running the same id again resumes an "
        "interrupted run of the same spec (an edited model, data or training starts afresh); give a new one "
        f"to keep the old run's files (default {jobfile.LOCAL_RUN_ID})",
    )
    run.add_argument(
        "--pvc-root",
        default=os.environ.get("KERAS_OPERATOR_PVC_ROOT", DEFAULT_PVC_ROOT),
        help="local folder standing in for PVCs: pvc://CLAIM/PATH -> PVC_ROOT/CLAIM/PATH "
        f"(default ./{DEFAULT_PVC_ROOT})",
    )
    run.set_defaults(func=cmd_run)
    serve = sub.add_parser("serve", help="serve the KerasModelService in FILE on this machine")
    serve.add_argument("file")
    serve.add_argument("--model-uri", help="serve this model instead of what spec.model names")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: spec.server.port")
    serve.add_argument("--pvc-root", default=os.environ.get("KERAS_OPERATOR_PVC_ROOT", DEFAULT_PVC_ROOT))
    serve.set_defaults(func=cmd_serve)
    render = sub.add_parser("render", help="print the Kubernetes objects the operator would create for FILE")
    render.add_argument("file")
    render.add_argument("-o", "--output-format", choices=["yaml", "json"], default="yaml")
    render.add_argument("-n", "--namespace", help="namespace for the objects (default: the resource's own)")
    render.set_defaults(func=cmd_render)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
