"""`keras-server`: serve a saved Keras model over TF Serving REST and Open Inference v2.

Exit codes: 0 stopped cleanly; 2 a wrong flag or setting (retrying cannot help); 1 anything else.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from keras_common import logs
from keras_operator.api.report import EXIT_INVALID_SPEC
from keras_server.config import ServerConfig
from keras_trainer import backend
from keras_trainer.errors import SpecError

DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerConfig) if f.default is not dataclasses.MISSING}


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


def parser() -> argparse.ArgumentParser:
    """Every tuning flag defaults to None, so ServerConfig (one source, the API's defaults) fills it."""
    p = argparse.ArgumentParser(prog="keras-server", description=__doc__)
    p.add_argument(
        "--model-uri",
        required=True,
        help="a .keras file or SavedModel folder, or a base folder of numbered versions (BASE/1/, BASE/2/, ...) "
        "each holding one (path or URI)",
    )
    p.add_argument("--model-name", required=True, help="the NAME in /v1/models/NAME and /v2/models/NAME")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=DEFAULTS["port"], help="default: %(default)s")
    p.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax", "torch"])

    def flag(name: str, help_: str, **kwargs: Any) -> None:
        field = name.removeprefix("--").replace("-", "_")
        p.add_argument(name, help=f"{help_} (default: {DEFAULTS.get(field)})", **kwargs)

    flag("--max-batch-size", "rows per model call; 1 turns batching off", type=_positive)
    flag("--max-latency-ms", "longest wait for a batch to fill", type=float)
    flag("--max-request-bytes", "larger bodies get a 413", type=_positive)
    flag("--max-queue", "queued requests before answering 503", type=_positive)
    p.add_argument(
        "--max-queued-bytes",
        type=_count,
        help="request bytes held at once before answering 503; 0: no limit (default: "
        "$KERAS_SERVER_MAX_QUEUED_BYTES, else 256 MiB)",
    )
    p.add_argument(
        "--max-queued-rows",
        type=_count,
        help="rows waiting for the model before answering 503; 0: no limit (default: "
        "$KERAS_SERVER_MAX_QUEUED_ROWS, else 0)",
    )
    p.add_argument(
        "--offload-bytes",
        type=_count,
        help="bodies from this size are coded in a thread (default: $KERAS_SERVER_OFFLOAD_BYTES, else 65536)",
    )
    p.add_argument(
        "--allowed-batch-sizes",
        type=_sizes,
        help="batch sizes of model calls, e.g. 4,16,32 (a batch is padded up to the next; the largest must equal "
        "--max-batch-size; default: powers of two up to it)",
    )
    p.add_argument(
        "--max-rows-per-request", type=_positive, help="a request with more rows gets a 400 (default: no limit)"
    )
    p.add_argument(
        "--model-versions",
        help="which versions of a base folder to serve: latest:N, all or specific:A,B (default: latest:1)",
    )
    p.add_argument(
        "--version-label",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="a name for a version, served at /v1/models/NAME/labels/LABEL (repeatable)",
    )
    flag(
        "--version-poll-seconds",
        "how often to look for new versions in a base folder; 0: only at start",
        type=float,
    )
    code = p.add_argument_group("user code (a model's recorded code needs no flag: it is found beside the model)")
    code.add_argument("--code-dir", help="a folder or .tar.gz/.zip archive of Python (path or URI), first on the path")
    code.add_argument(
        "--code-import",
        action="append",
        default=[],
        help="a module to import (repeatable; default: every top-level module of --code-dir)",
    )
    code.add_argument(
        "--code-requirement", action="append", default=[], help="a pip requirement installed at start (repeatable)"
    )
    flag(
        "--drain-seconds",
        "on SIGTERM, how long requests in flight may take before they are answered 503 with Retry-After "
        "(within Kubernetes' 30 s grace period after the 5 s preStop pause)",
        type=float,
    )
    p.add_argument(
        "--handler",
        help="pre- and post-processing, module:Class: its preprocess(inputs) and postprocess(outputs) run "
        "around each batch's model call, in this process (the module on the Python path)",
    )
    return p


def config_from(args: argparse.Namespace) -> ServerConfig:
    """The flags given, over ServerConfig's defaults; ValueError names a wrong one."""
    from keras_server import versions

    given = {
        name: getattr(args, name)
        for name in (
            "max_batch_size",
            "max_latency_ms",
            "max_request_bytes",
            "max_queue",
            "max_queued_bytes",
            "max_queued_rows",
            "offload_bytes",
            "allowed_batch_sizes",
            "max_rows_per_request",
            "version_poll_seconds",
            "drain_seconds",
            "handler",
        )
        if getattr(args, name) is not None
    }
    if args.model_versions is not None:
        given["model_versions"] = versions.parse_policy(args.model_versions)
    given["version_labels"] = versions.parse_labels(args.version_label)
    return ServerConfig(**given)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.configure(stdlib=True)
    try:
        backend.prepare(args.backend, field="--backend")
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    try:  # what a flag does not set comes from the environment, which may hold a typo
        config = config_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    if args.code_dir:
        try:
            _import_code(args)
        except SpecError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID_SPEC
    from keras_server import eventloop
    from keras_server.handler import HandlerLoadError
    from keras_server.server import CannotListen, serve

    try:
        return eventloop.run(serve(args.model_uri, args.model_name, args.host, args.port, config))
    except CannotListen as exc:  # exit 1, not 2: the arguments were valid; the machine's state is not
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except HandlerLoadError as exc:  # exit 1: the code may be missing now and mounted at the next start
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _import_code(args: argparse.Namespace) -> None:
    """The service's own code (spec.code), imported before any model loads."""
    from keras_operator.api.common import CodeSpec
    from keras_trainer import usercode

    spec = CodeSpec(uri=args.code_dir, imports=args.code_import or None, requirements=args.code_requirement or None)
    code = usercode.prepare(spec, "--code-dir")
    assert code is not None
    usercode.activate(code, "--code-dir")


if __name__ == "__main__":
    sys.exit(main())
