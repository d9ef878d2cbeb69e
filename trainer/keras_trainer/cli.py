"""The container entrypoint: `keras-trainer train --config job.yaml` (the job file the operator mounts).

Exit codes: 0 trained; 2 the job file or the spec is wrong (the Job fails at once: retrying cannot help);
143 stopped by SIGTERM after saving a checkpoint (the next attempt resumes there); 1 anything else,
including storage or network failures that may pass (the Job retries the pod).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import structlog

from keras_common import logs
from keras_operator.api import catalogue, jobfile
from keras_operator.api.parse import InvalidResource, read_documents
from keras_operator.api.report import EXIT_INVALID_SPEC, EXIT_STOPPED, TrainingResult
from keras_trainer import backend, distribute
from keras_trainer.errors import SpecError
from keras_trainer.reporting import PodReporter

CONFIG_PATH = "/etc/keras-operator/job.yaml"


def exit_code(result: TrainingResult) -> int:
    if result.phase == "Succeeded":
        return 0
    if result.stopped_by_signal:
        return EXIT_STOPPED
    return EXIT_INVALID_SPEC if result.reason in ("InvalidSpec", "Unservable") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the job file (or KerasTrainingJob) in a config file")
    train.add_argument("--config", default=CONFIG_PATH, help="a TrainerJob job file or a KerasTrainingJob (YAML/JSON)")
    train.add_argument("--output", help="override spec.output.uri")
    train.add_argument("--run-id", help="override the run id (default: the job file's, else the uid, else local)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
