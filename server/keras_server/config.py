"""The model server's settings: the flags of `keras-server` and the environment, over the defaults of
the KerasModelService API (`keras_operator.api.model_service`), so the operator omits a flag that would repeat
the server's own default and the two cannot drift apart."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from keras_operator.api.model_service import ServerSpec
from keras_server.model import default_batch_sizes
from keras_server.versions import VersionPolicy

API = ServerSpec()  # the API's defaults, the one source of the server's

MIB = 1024 * 1024


def env_int(name: str, default: int) -> int:
    """A non-negative whole number from the environment: the server flags the CLI does not carry."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


ACCESS_LOGS = ("all", "errors", "off")


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    text = os.environ.get(name, "").strip().lower() or default
    if text not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {text!r}")
    return text


@dataclass(frozen=True)
class ServerConfig:
    port: int = API.port
    max_batch_size: int = API.batching.max_batch_size
    max_latency_ms: float = API.batching.max_latency_ms
    max_request_bytes: int = API.max_request_bytes
    max_queue: int = API.max_queue
    # Bytes of request bodies held at once, from arrival to answer: the count of requests alone would
    # let 1,024 bodies of 10 MiB in. 0: no limit.
    max_queued_bytes: int = field(default_factory=lambda: env_int("KERAS_SERVER_MAX_QUEUED_BYTES", 256 * MIB))
    # Rows waiting for the model (how long the queue takes to drain depends on the model). 0: no limit.
    max_queued_rows: int = field(default_factory=lambda: env_int("KERAS_SERVER_MAX_QUEUED_ROWS", 0))
    # Bodies (and answers) from this size are parsed (and written) in a thread: a few MiB of JSON keep
    # the event loop 50+ ms, stalling probes and the batcher's deadlines. Below it, the thread hop costs
    # more than it saves.
    offload_bytes: int = field(default_factory=lambda: env_int("KERAS_SERVER_OFFLOAD_BYTES", 64 * 1024))
    # The batch shapes of model calls (TF Serving's allowed_batch_sizes), ascending, the largest
    # max_batch_size. None: powers of two up to max_batch_size.
    allowed_batch_sizes: tuple[int, ...] | None = None
    max_rows_per_request: int | None = None  # None: no limit beyond the body size
    model_versions: VersionPolicy = field(default_factory=VersionPolicy)  # for a base folder of versions
    version_labels: Mapping[str, int] = field(default_factory=dict)
    version_poll_seconds: float = 10.0  # 0: the base folder is read once, at start
    # On SIGTERM: how long requests in flight may still take; those left then get a 503 with Retry-After.
    drain_seconds: float = API.drain_seconds
    # Pre- and post-processing, "module:Class" (keras_server.handler); None: requests go to the model as given.
    handler: str | None = API.handler
    # Which requests get an access log line: all, errors (status 400 and up, 499 for a client gone) or off.
    # Not every one by default: a line per request took a fifth of the event loop's time, the server's
    # bottleneck with small requests (bench/README.md), and floods the node's logs at thousands of requests
    # per second; /metrics counts every request by endpoint and code all the same.
    access_log: str = field(default_factory=lambda: env_choice("KERAS_SERVER_ACCESS_LOG", ACCESS_LOGS, "errors"))

    def __post_init__(self) -> None:
        sizes = self.allowed_batch_sizes
        if sizes is not None:
            if not sizes or any(n < 1 for n in sizes) or list(sizes) != sorted(set(sizes)):
                raise ValueError(f"--allowed-batch-sizes must be ascending whole numbers >= 1, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"--allowed-batch-sizes: the largest size ({sizes[-1]}) must equal --max-batch-size "
                    f"({self.max_batch_size})"
                )
        if self.max_rows_per_request is not None and self.max_rows_per_request < 1:
            raise ValueError(f"--max-rows-per-request must be at least 1, got {self.max_rows_per_request}")
        if self.drain_seconds < 0:
            raise ValueError(f"--drain-seconds must not be negative, got {self.drain_seconds}")
        if self.version_poll_seconds < 0:
            raise ValueError(f"--version-poll-seconds must not be negative, got {self.version_poll_seconds}")

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return self.allowed_batch_sizes or default_batch_sizes(self.max_batch_size)
