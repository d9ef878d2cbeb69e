"""The container entrypoint: `keras-trainer train --config job.yaml` (the file the operator mounts)."""

from __future__ import annotations

import argparse
import sys

from keras_operator.api.parse import InvalidResource, parse, read_documents
from keras_operator.api.report import EXIT_INVALID_SPEC, TrainingResult
from keras_operator.runtime import logs
from keras_trainer import backend
from keras_trainer.errors import SpecError
from keras_trainer.reporting import PodReporter

CONFIG_PATH = "/etc/keras-operator/job.yaml"


def exit_code(result: TrainingResult) -> int:
    if result.phase == "Succeeded":
        return 0
    return EXIT_INVALID_SPEC if result.reason == "InvalidSpec" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the KerasTrainingJob in a config file")
    train.add_argument("--config", default=CONFIG_PATH, help="the KerasTrainingJob (YAML or JSON)")
    train.add_argument("--output", help="override spec.output.uri")
    serve = sub.add_parser("serve", help="serve a saved model over TF Serving REST and Open Inference v2")
    serve.add_argument("--model-uri", required=True, help="a .keras file or SavedModel folder (path or URI)")
    serve.add_argument("--model-name", required=True, help="the NAME in /v1/models/NAME and /v2/models/NAME")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])
    serve.add_argument("--max-batch-size", type=int, default=32, help="rows per model call; 1 turns batching off")
    serve.add_argument("--max-latency-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    serve.add_argument("--max-request-bytes", type=int, default=10 * 1024 * 1024)
    serve.add_argument("--max-queue", type=int, default=1024, help="queued requests before answering 503")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)

    logs.configure()
    reporter = PodReporter()
    try:
        docs = read_documents(args.config)
        if len(docs) != 1:
            raise InvalidResource(f"{args.config}: expected one KerasTrainingJob, found {len(docs)} documents")
        job = parse(docs[0])
    except InvalidResource as exc:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message=str(exc))
        reporter.end(result)
        return exit_code(result)
    output = args.output or job.spec.output.uri
    if not output:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message="spec.output.uri: required")
        reporter.end(result)
        return exit_code(result)

    try:
        backend.prepare(job.spec.backend)
    except SpecError as exc:
        result = TrainingResult(phase="Failed", reason="InvalidSpec", message=str(exc), epochs=job.spec.training.epochs)
        reporter.end(result)
        return exit_code(result)
    from keras_trainer import train as training  # imports keras, after the backend is chosen

    return exit_code(training.run(job, output, reporter))


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    logs.configure(stdlib=True)
    try:
        backend.prepare(args.backend, field="--backend")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    from keras_trainer.serving.app import ServerConfig
    from keras_trainer.serving.server import serve

    config = ServerConfig(
        max_batch_size=args.max_batch_size,
        max_latency_ms=args.max_latency_ms,
        max_request_bytes=args.max_request_bytes,
        max_queue=args.max_queue,
    )
    return asyncio.run(serve(args.model_uri, args.model_name, args.host, args.port, config))


if __name__ == "__main__":
    sys.exit(main())
