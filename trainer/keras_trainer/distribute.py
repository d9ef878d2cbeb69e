"""Every device a pod was given: one model replica per device, each batch split between them.

TensorFlow: `tf.distribute.MirroredStrategy` over the visible GPUs (Keras 3 supports it on one node;
not MultiWorkerMirroredStrategy, keras-team/keras#20585). JAX: `keras.distribution.DataParallel` over
JAX's devices. `training.batchSize` stays the global batch: each of N devices computes on
batchSize / N examples per step and the gradients are combined, so the result matches one device with
the same batch. Without GPUs (or with one) nothing changes. torch: one device in this version.

KERAS_TRAINER_CPU_DEVICES=N splits the CPU into N devices (TensorFlow logical devices, JAX host
devices) and trains on all of them: the same code path as N GPUs, for tests and benchmarks on
machines without accelerators.

Several pods (spec.distribution.workers, JAX only): each pod is one process of a JAX cluster, found
through KERAS_DISTRIBUTION_JOB_ADDRESSES (worker 0's host:port), KERAS_DISTRIBUTION_NUM_PROCESSES and
KERAS_DISTRIBUTION_PROCESS_ID. `initialize_cluster()` forms it before any JAX computation; then
`jax.devices()` lists every device of every process and DataParallel spans them all. Each process
feeds only its part of every global batch (`shard_arrays`, `shard_dataset`), so `training.batchSize`
stays the global batch and each example is seen once per epoch across the group. Keras assembles the
parts into one global batch, so losses and metrics (validation and evaluation too) are the group's and
the same on every worker.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from keras_trainer.errors import SpecError, first_line

CPU_DEVICES_ENV = "KERAS_TRAINER_CPU_DEVICES"
ADDRESS_ENV = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID_ENV = "KERAS_DISTRIBUTION_PROCESS_ID"

# jax.distributed's defaults (100 s heartbeat, 300 s shutdown) leave a worker whose peer vanished
# without a TCP reset (a node lost, a partition) waiting minutes; a lost peer that does reset its
# connections is seen by the collectives at once. A minute of silence is a dead peer: a busy worker
# still heartbeats from its own thread, so long steps are not mistaken for one.
HEARTBEAT_TIMEOUT_S = 60
HEARTBEAT_ENV = "KERAS_TRAINER_HEARTBEAT_TIMEOUT"  # seconds; overrides HEARTBEAT_TIMEOUT_S (tests use a few)
# The pods of an Indexed Job start within seconds of each other, but images are pulled per node.
INITIALIZATION_TIMEOUT_S = 300
SHUTDOWN_TIMEOUT_S = 60

log = structlog.get_logger("keras_trainer")
_cluster: tuple[int, int] | None = None  # (process id, processes) once initialize_cluster() formed one


class ClusterError(Exception):
    """The group of workers could not form or lost a member; str() is the one line users see."""


@dataclass(frozen=True)
class Placement:
    devices: tuple[str, ...]
    strategy: Any = None  # a tf.distribute strategy or a keras.distribution, when several devices train

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Where the model is made, compiled and fitted for the devices to share it."""
        if self.strategy is None:
            yield
        else:
            with self.strategy.scope():
                yield


def cpu_devices() -> int:
    return int(os.environ.get(CPU_DEVICES_ENV) or 0)


def prepare(backend: str) -> None:
    """What must be set before the backend loads: JAX fixes its host devices at import."""
    if backend == "jax" and cpu_devices() > 1:
        flag = f"--xla_force_host_platform_device_count={cpu_devices()}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def place(backend: str) -> Placement:
    if backend == "jax":
        return _place_jax()
    if backend != "tensorflow":
        return Placement(("default",))
    import tensorflow as tf

    split = cpu_devices()
    if split > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        # Settable once per process, before TensorFlow first runs an op; a second training in the same
        # process (kerasop, tests) uses the devices the first one made.
        with contextlib.suppress(RuntimeError):
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * split)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:split]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return Placement(tuple(devices), tf.distribute.MirroredStrategy(devices))
    return Placement(tuple(devices) or ("/cpu:0",))


def _place_jax() -> Placement:
    import jax
    import keras

    if _cluster is not None:
        # Global after initialize(): every device of every process. Keras' own sharding of input takes
        # only tf.data; each process slices its own part instead (shard_arrays / shard_dataset).
        devices = jax.devices()
        return Placement(
            tuple(str(d) for d in devices), keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        )
    devices = jax.devices("cpu")[: cpu_devices()] if cpu_devices() > 1 else jax.devices()
    names = tuple(str(d) for d in devices)
    if len(devices) > 1:
        return Placement(names, keras.distribution.DataParallel(devices=devices))
    return Placement(names)


def requested_processes() -> int:
    """KERAS_DISTRIBUTION_NUM_PROCESSES (1 when unset): how many pods train together."""
    text = os.environ.get(PROCESSES_ENV, "").strip()
    if not text:
        return 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ClusterError(f"{PROCESSES_ENV}={text!r}: expected a whole number of at least 1")
    return value


def check_cluster(backend: str, workers: int) -> int:
    """-> the processes to train with. The job file's workers and the pod's environment must agree:
    pods that each trained alone would each write the same output."""
    processes = requested_processes()
    if processes > 1 and backend != "jax":
        raise SpecError("spec.backend", f"distribution.workers above 1 needs backend jax, got {backend}")
    if PROCESSES_ENV in os.environ and processes != workers:
        raise ClusterError(
            f"{PROCESSES_ENV}={processes} but the job file's distribution.workers is {workers}; "
            "the operator sets both from spec.distribution.workers"
        )
    if workers > 1 and PROCESSES_ENV not in os.environ:
        log.warning("workers_without_cluster", workers=workers, note=f"{PROCESSES_ENV} unset: training alone")
    return processes


def initialize_cluster() -> tuple[int, int]:
    """Join the JAX cluster the KERAS_DISTRIBUTION_* variables describe. -> (process_id, num_processes).

    Must run before any JAX computation (a cluster formed later silently is not one, jax#12258).
    Raises ClusterError, one line, when the group cannot form within INITIALIZATION_TIMEOUT_S.
    """
    global _cluster
    if _cluster is not None:
        return _cluster
    processes = requested_processes()
    for name in (ADDRESS_ENV, PROCESS_ID_ENV):
        if not os.environ.get(name, "").strip():
            raise ClusterError(f"{name} is not set ({PROCESSES_ENV}={processes})")
    import jax

    # CPU processes need a collectives implementation to reach each other; GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    from keras_trainer import keras_compat  # imports keras: not at the top of this module

    timeouts = keras_compat.jax_initialize_options(
        initialization_timeout=INITIALIZATION_TIMEOUT_S,
        heartbeat_timeout_seconds=heartbeat_timeout(),
        shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
    )
    try:
        with timeouts:
            keras.distribution.initialize()
    except Exception as exc:
        raise ClusterError(f"could not join the workers at {os.environ[ADDRESS_ENV]}: {first_line(exc)}") from exc
    _cluster = (jax.process_index(), jax.process_count())
    log.info("cluster_joined", worker=_cluster[0], workers=_cluster[1], devices=len(jax.devices()))
    return _cluster


def heartbeat_timeout() -> int:
    text = os.environ.get(HEARTBEAT_ENV, "").strip()
    try:
        return max(1, int(text)) if text else HEARTBEAT_TIMEOUT_S
    except ValueError:
        raise ClusterError(f"{HEARTBEAT_ENV}={text!r}: expected a whole number of seconds") from None


def process() -> tuple[int, int]:
    """(process id, processes): (0, 1) when training alone."""
    return _cluster if _cluster is not None else (0, 1)


def is_chief() -> bool:
    """Worker 0 alone writes the output and reports to the operator."""
    return process()[0] == 0


def leave_cluster(timeout: float = SHUTDOWN_TIMEOUT_S + 5) -> None:
    """After the last computation all workers share: each waits here for the others (the shutdown
    barrier), so worker 0 then saves with no peer waiting on it, however long the upload takes."""
    global _cluster
    if _cluster is None:
        return
    import jax

    # The barrier has its own timeout, but a coordinator that vanished mid-call is not bounded by it.
    done = threading.Event()

    def shut() -> None:
        with contextlib.suppress(Exception):
            jax.distributed.shutdown()
        done.set()

    threading.Thread(target=shut, name="jax-shutdown", daemon=True).start()
    if not done.wait(timeout):
        log.warning("cluster_shutdown_timed_out", seconds=timeout)
    _cluster = None


@contextlib.contextmanager
def undistributed() -> Iterator[None]:
    """For what worker 0 does alone inside fit (a checkpoint): Keras' saving makes a scratch optimizer,
    whose variables the current distribution would place on every process's devices, a step (with a
    consistency check across processes) that the other workers never join."""
    import keras

    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def lost_peer_message(exc: BaseException) -> str | None:
    """A one-line explanation when `exc` is a collective that failed because another worker is gone."""
    if _cluster is None:
        return None
    text = str(exc)
    markers = ("Gloo", "NCCL", "coordination service", "Connection reset", "Connection closed", "heartbeat")
    if not any(m.lower() in text.lower() for m in markers):
        return None
    return f"worker {_cluster[0]} of {_cluster[1]}: a peer worker was lost ({first_line(exc)})"


def shard_arrays(
    x: np.ndarray, y: np.ndarray | None, batch_size: int, process_id: int, processes: int, granule: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """This process's rows: of every global batch (rows [i*B, (i+1)*B)), the process_id-th of
    `processes` equal parts, so that the parts the processes feed at step i make up the global batch
    i of a single process. The last, shorter batch is cut to a multiple of processes * granule (the
    devices of one process), which drops fewer than that many rows per epoch: every process must run
    the same steps with equal parts."""
    rows: list[np.ndarray] = []
    for start in range(0, len(x), batch_size):
        size = min(batch_size, len(x) - start)
        part = size // processes // granule * granule
        if part:
            first = start + process_id * part
            rows.append(np.arange(first, first + part))
    index = np.concatenate(rows) if rows else np.arange(0)
    return x[index], (y[index] if y is not None else None)


def shard_dataset(dataset: Any, batch_size: int, process_id: int, processes: int) -> Any:
    """The same for a batched tf.data stream: global batches of exactly batch_size (a shorter last one
    is dropped: its size is unknown in advance, and every process must run the same steps), this
    process's part of each. Every process reads the whole stream, in the same order."""
    import tensorflow as tf

    part = batch_size // processes

    def mine(*tensors: Any) -> Any:
        parts = tuple(t[process_id * part : (process_id + 1) * part] for t in tensors)
        return parts if len(parts) > 1 else parts[0]

    return dataset.unbatch().batch(batch_size, drop_remainder=True).map(mine).prefetch(tf.data.AUTOTUNE)
