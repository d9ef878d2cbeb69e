"""The container entrypoint: `keras-trainer train --config job.yaml` (the job file the operator mounts).

Exit codes: 0 trained; 2 the job file or the spec is wrong (the Job fails at once: retrying cannot help);
1 anything else, including storage or network failures that may pass (the Job retries the pod).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import structlog

from keras_operator.api import catalogue, jobfile
from keras_operator.api.parse import InvalidResource, read_documents
from keras_operator.api.report import EXIT_INVALID_SPEC, TrainingResult
from keras_operator.runtime import logs
from keras_trainer import backend, distribute
from keras_trainer.errors import SpecError
from keras_trainer.reporting import PodReporter

CONFIG_PATH = "/etc/keras-operator/job.yaml"


def exit_code(result: TrainingResult) -> int:
    if result.phase == "Succeeded":
        return 0
    return EXIT_INVALID_SPEC if result.reason == "InvalidSpec" else 1


def _count(text: str) -> int:
    """A non-negative whole number, for argparse (its own error names the flag)."""
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _sizes(text: str) -> tuple[int, ...]:
    """A comma list of batch sizes, for argparse."""
    try:
        return tuple(_positive(part.strip()) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the job file (or KerasTrainingJob) in a config file")
    train.add_argument("--config", default=CONFIG_PATH, help="a TrainerJob job file or a KerasTrainingJob (YAML/JSON)")
    train.add_argument("--output", help="override spec.output.uri")
    train.add_argument("--run-id", help="override the run id (default: the job file's, else the uid, else local)")
    serve = sub.add_parser("serve", help="serve a saved model over TF Serving REST and Open Inference v2")
    serve.add_argument(
        "--model-uri",
        required=True,
        help="a .keras file or SavedModel folder, or a base folder of numbered versions (BASE/1/, BASE/2/, ...) "
        "each holding one (path or URI)",
    )
    serve.add_argument("--model-name", required=True, help="the NAME in /v1/models/NAME and /v2/models/NAME")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])
    serve.add_argument("--max-batch-size", type=int, default=32, help="rows per model call; 1 turns batching off")
    serve.add_argument("--max-latency-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    serve.add_argument("--max-request-bytes", type=int, default=10 * 1024 * 1024)
    serve.add_argument("--max-queue", type=int, default=1024, help="queued requests before answering 503")
    serve.add_argument(
        "--max-queued-bytes",
        type=_count,
        help="request bytes held at once before answering 503; 0: no limit (default: "
        "$KERAS_SERVER_MAX_QUEUED_BYTES, else 256 MiB)",
    )
    serve.add_argument(
        "--max-queued-rows",
        type=_count,
        help="rows waiting for the model before answering 503; 0: no limit (default: "
        "$KERAS_SERVER_MAX_QUEUED_ROWS, else 0)",
    )
    serve.add_argument(
        "--offload-bytes",
        type=_count,
        help="bodies from this size are coded in a thread (default: $KERAS_SERVER_OFFLOAD_BYTES, else 65536)",
    )
    serve.add_argument(
        "--allowed-batch-sizes",
        type=_sizes,
        help="batch sizes of model calls, e.g. 4,16,32 (a batch is padded up to the next; the largest must equal "
        "--max-batch-size; default: powers of two up to it)",
    )
    serve.add_argument(
        "--max-rows-per-request", type=_positive, help="a request with more rows gets a 400 (default: no limit)"
    )
    serve.add_argument(
        "--model-versions",
        default="latest:1",
        help="which versions of a base folder to serve: latest:N, all or specific:A,B (default: latest:1)",
    )
    serve.add_argument(
        "--version-label",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="a name for a version, served at /v1/models/NAME/labels/LABEL (repeatable)",
    )
    serve.add_argument(
        "--version-poll-seconds",
        type=float,
        default=10.0,
        help="how often to look for new versions in a base folder; 0: only at start (default: 10)",
    )
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM, how long requests in flight may take before they are answered 503 with Retry-After "
        "(default: 20, within Kubernetes' 30 s grace period after the 5 s preStop pause)",
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)

    logs.configure()
    reporter = PodReporter()
    try:
        docs = read_documents(args.config)
        if len(docs) != 1:
            raise InvalidResource(f"{args.config}: expected one job file, found {len(docs)} documents")
        with catalogue.keras_judges():  # Keras itself checks layers, optimizer, loss... in build()
            job, ignored = jobfile.read(docs[0])
        if args.run_id:
            try:
                run_id = jobfile.check_run_id(args.run_id)
            except ValueError as exc:
                raise InvalidResource(f"--run-id: {exc}") from exc
            job = job.model_copy(update={"run": job.run.model_copy(update={"id": run_id})})
    except InvalidResource as exc:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message=str(exc))
        reporter.end(result)
        return exit_code(result)
    if ignored:
        # Written by a newer operator: what this trainer does not know it cannot use, but it can train.
        structlog.get_logger("keras_trainer").warning(
            "job_file_fields_ignored", api_version=docs[0].get("apiVersion"), fields=ignored
        )

    try:
        backend.prepare(job.backend)
        # The job file's field came with the multi-worker operator: an older job file has none.
        if distribute.check_cluster(job.backend, getattr(job.distribution, "workers", 1)) > 1:
            reporter.join(*distribute.initialize_cluster())  # before anything computes with JAX
    except SpecError as exc:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message=str(exc), epochs=job.training.epochs)
        reporter.end(result)
        return exit_code(result)
    except distribute.ClusterError as exc:
        result = TrainingResult(phase="Failed", reason="TrainingError", message=str(exc), epochs=job.training.epochs)
        reporter.end(result)
        return _exit_now(exit_code(result))
    from keras_trainer import train as training  # imports keras, after the backend is chosen

    code = exit_code(training.run(job, args.output, reporter))
    if distribute.process()[1] > 1:  # still in the group: training failed before the workers parted
        return _exit_now(code)
    return code


def _exit_now(code: int) -> NoReturn:
    """Leave without jax's exit handler: it waits at a shutdown barrier for every worker, and a lost
    one never comes (SHUTDOWN_TIMEOUT_S, then an abort). The result is already written; leaving at once
    also tells the other workers (their collectives fail), so the group ends together."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(args: argparse.Namespace) -> int:
    logs.configure(stdlib=True)
    try:
        backend.prepare(args.backend, field="--backend")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    from keras_trainer.serving import eventloop, versions
    from keras_trainer.serving.app import ServerConfig
    from keras_trainer.serving.server import serve

    flags = {
        k: v
        for k, v in {
            "max_queued_bytes": args.max_queued_bytes,
            "max_queued_rows": args.max_queued_rows,
            "offload_bytes": args.offload_bytes,
        }.items()
        if v is not None
    }
    try:  # what a flag does not set comes from the environment, which may hold a typo
        config = ServerConfig(
            max_batch_size=args.max_batch_size,
            max_latency_ms=args.max_latency_ms,
            max_request_bytes=args.max_request_bytes,
            max_queue=args.max_queue,
            allowed_batch_sizes=args.allowed_batch_sizes,
            max_rows_per_request=args.max_rows_per_request,
            model_versions=versions.parse_policy(args.model_versions),
            version_labels=versions.parse_labels(args.version_label),
            version_poll_seconds=args.version_poll_seconds,
            drain_seconds=args.drain_seconds,
            **flags,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    return eventloop.run(serve(args.model_uri, args.model_name, args.host, args.port, config))


if __name__ == "__main__":
    sys.exit(main())
