"""The container entrypoint: `keras-trainer train --config job.yaml` (the file the operator mounts)."""

from __future__ import annotations

import argparse
import os
import sys

from keras_operator import logs
from keras_operator.api.parse import InvalidResource, parse, read_documents
from keras_operator.api.report import EXIT_INVALID_SPEC, TrainingResult
from keras_trainer.reporting import PodReporter

CONFIG_PATH = "/etc/keras-operator/job.yaml"


def exit_code(result: TrainingResult) -> int:
    if result.phase == "Succeeded":
        return 0
    return EXIT_INVALID_SPEC if result.reason == "InvalidSpec" else 1


def prepare_backend(backend: str) -> None:
    """Keras reads KERAS_BACKEND once, at its first import: this must run before anything imports keras."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the KerasTrainingJob in a config file")
    train.add_argument("--config", default=CONFIG_PATH, help="the KerasTrainingJob (YAML or JSON)")
    train.add_argument("--output", help="override spec.output.uri")
    args = parser.parse_args(argv)

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

    prepare_backend(job.spec.backend)
    from keras_trainer import train as training  # imports keras, after the backend is chosen

    return exit_code(training.run(job, output, reporter))


if __name__ == "__main__":
    sys.exit(main())
