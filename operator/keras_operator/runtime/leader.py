"""Leader election on a coordination.k8s.io/v1 Lease, so several operator replicas can run and only
one acts: kopf's peering freezes replicas of equal priority instead of electing one.

The semantics are client-go's (k8s.io/client-go/tools/leaderelection):

- Expiry is judged on the local monotonic clock only. A replica remembers when it last saw the Lease
  record change (holder, renewTime, resourceVersion...) and takes it over only once `leaseDurationSeconds`
  have passed since then with no change. The renewTime written by another node is never compared with
  this node's clock, so skew between nodes neither shortens nor lengthens a lease.
- The leader renews every `retry_period` and stops acting when no renewal succeeded for `renew_deadline`
  (2/3 of the lease), counted from before the last successful renewal was sent: another replica can take
  over no sooner than a full lease after that, so the two never act together. It stops at once when a
  read shows another holder, or no Lease at all.
- Every Lease call carries a request timeout (shorter than the renew deadline, and never longer than
  what is left of it), so a half-open connection cannot hold a renewal past the deadline; a watchdog
  enforces the deadline even if a call outlived its timeout.
- Writes carry the resourceVersion read, so two replicas racing for the Lease cannot both win (the loser
  gets 409).
- On a clean exit the leader releases the Lease (client-go's ReleaseOnCancel): the holder is emptied and
  the next replica takes over at its next attempt instead of waiting a whole lease.

`StandbyHealth` answers the liveness probe while a replica stands by, before kopf (which serves
/healthz once the replica leads) has started.
"""

from __future__ import annotations

import copy
import datetime
import enum
import http.server
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import structlog
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from keras_operator.runtime.credentials import Credentials
from keras_operator.runtime.kube import FIELD_MANAGER

log = structlog.get_logger("keras_operator.runtime.leader")

# The client disables its timeout for a falsy `_request_timeout`: a deadline already due still waits this.
MIN_REQUEST_TIMEOUT = 0.05
# Errors of one Lease call that a later attempt may not repeat: the API answered an error, or did not answer.
CALL_ERRORS = (ApiException, HTTPError, OSError)


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def _micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_client(source: Credentials | kubernetes.client.ApiClient) -> kubernetes.client.ApiClient:
    """A blocking client of its own for the Lease, with the operator's credentials (or `source`'s settings)
    and no retries. The Lease is renewed from a thread of its own, off the event loop, so it keeps the
    blocking client (the handlers' calls are asyncio: runtime/kube.py).

    urllib3 retries a GET that timed out (three times by default), which would stretch one request
    timeout past the renew deadline; the election retries on its own schedule instead. A pool of its
    own also keeps a renewal from queueing behind other calls."""
    config = source.blocking() if isinstance(source, Credentials) else copy.deepcopy(source.configuration)
    config.retries = False
    return kubernetes.client.ApiClient(config)


class Renewal(enum.Enum):
    RENEWED = "renewed"
    FAILED = "failed"  # the API did not answer or refused: retried until the renew deadline
    LOST = "lost"  # another holder, or no Lease: stop acting at once


@dataclass
class Elector:
    api: kubernetes.client.ApiClient
    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    wall: Callable[[], datetime.datetime] = _now
    """The wall clock written into the Lease (for people reading it); expiry never reads it back."""
    clock: Callable[[], float] = time.monotonic
    """The clock expiry and the renew deadline are measured on."""

    _observed: tuple[Any, ...] | None = field(default=None, init=False, repr=False)
    _observed_at: float = field(default=0.0, init=False, repr=False)
    _observed_holder: str | None = field(default=None, init=False, repr=False)
    _renewed_at: float | None = field(default=None, init=False, repr=False)
    last_attempt: float | None = field(default=None, init=False, repr=False)
    """When the last acquire attempt started (the standby's liveness)."""

    # --- timing (client-go's 15 s / 10 s / 2 s, scaled to the lease) ---

    @property
    def lease_seconds(self) -> int:
        # Rounded up: the Lease field is whole seconds, and other replicas must never wait less than
        # the duration this replica's renew deadline was derived from.
        return max(1, math.ceil(self.duration))

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3

    @property
    def retry_period(self) -> float:
        return self.duration * 2 / 15

    @property
    def request_timeout(self) -> float:
        return self.duration / 5

    @property
    def holder(self) -> str | None:
        """The holder in the Lease as this replica last read it."""
        return self._observed_holder

    # --- the Lease record ---

    def _coordination(self) -> kubernetes.client.CoordinationV1Api:
        return kubernetes.client.CoordinationV1Api(self.api)

    def _timeout(self) -> float:
        """Per call: the request timeout, and for the leader no more than what is left of its deadline."""
        timeout = self.request_timeout
        if self._renewed_at is not None:
            remaining = self._renewed_at + self.renew_deadline - self.clock()
            if remaining > 0:  # past it, the watchdog has already given the Lease up
                timeout = min(timeout, remaining)
        return max(MIN_REQUEST_TIMEOUT, timeout)

    def _read(self) -> Any:
        return self._coordination().read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout())

    def _observe(self, lease: Any) -> None:
        spec = lease.spec
        record = (
            lease.metadata.resource_version,
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_duration_seconds,
            spec.lease_transitions,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
            self._observed_holder = spec.holder_identity or None

    def _expired(self, lease: Any) -> bool:
        if not lease.spec.holder_identity:
            return True  # released
        duration = lease.spec.lease_duration_seconds or self.lease_seconds
        return self.clock() - self._observed_at > duration

    def _spec(self, transitions: int) -> dict[str, Any]:
        now = _micro(self.wall())
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _patch(self, body: dict[str, Any]) -> Any | None:
        """A write conditioned on the resourceVersion read: None when another replica wrote first or the
        API did not answer."""
        try:
            return self._coordination().patch_namespaced_lease(
                self.name, self.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout()
            )
        except ApiException as exc:
            if exc.status != 409:
                log.warning("lease_write_failed", lease=self.name, status=exc.status, reason=exc.reason)
        except (HTTPError, OSError) as exc:
            log.warning("lease_write_failed", lease=self.name, error=str(exc))
        return None

    def _lead(self, lease: Any, since: float) -> None:
        self._observe(lease)
        self._renewed_at = since

    # --- acquiring ---

    def try_acquire(self) -> bool:
        """One attempt: True when this replica holds the Lease afterwards."""
        started = self.clock()
        self.last_attempt = started
        api = self._coordination()
        try:
            current = self._read()
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0),
            }
            try:
                created = api.create_namespaced_lease(
                    self.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self._timeout()
                )
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False  # another replica created it first
                raise
            self._lead(created, started)
            log.info("leader_elected", identity=self.identity, lease=self.name)
            return True
        self._observe(current)
        spec = current.spec
        if spec.holder_identity == self.identity:
            return self._renew_read(current, started) is Renewal.RENEWED
        if not self._expired(current):
            return False
        body = {
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": self._spec((spec.lease_transitions or 0) + 1),
        }
        written = self._patch(body)
        if written is None:
            return False
        self._lead(written, started)
        log.info("leader_elected", identity=self.identity, lease=self.name, took_over_from=spec.holder_identity or None)
        return True

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or `stop` is set (False)."""
        self.last_attempt = self.clock()
        while not stop.is_set():
            try:
                if self.try_acquire():
                    return True
            except CALL_ERRORS as exc:  # an unreachable API must not kill the waiting replica
                log.warning("lease_acquire_failed", lease=self.name, error=str(exc))
            stop.wait(self.retry_period)
        return False

    # --- leading ---

    def renew(self) -> bool:
        """One renewal: True when written. False on any failure, including another holder."""
        return self._renew() is Renewal.RENEWED

    def _renew(self) -> Renewal:
        started = self.clock()
        try:
            current = self._read()
        except ApiException as exc:
            if exc.status == 404:
                log.warning("lease_gone", identity=self.identity, lease=self.name)
                return Renewal.LOST  # deleted: another replica may create it at its next attempt
            log.warning("lease_renewal_failed", lease=self.name, status=exc.status, reason=exc.reason)
            return Renewal.FAILED
        except (HTTPError, OSError) as exc:
            log.warning("lease_renewal_failed", lease=self.name, error=str(exc))
            return Renewal.FAILED
        self._observe(current)
        return self._renew_read(current, started)

    def _renew_read(self, current: Any, started: float) -> Renewal:
        if current.spec.holder_identity != self.identity:
            log.warning("lease_held_by_another", identity=self.identity, lease=self.name, holder=self.holder)
            return Renewal.LOST
        body = {
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "spec": {"renewTime": _micro(self.wall())},
        }
        written = self._patch(body)
        if written is None:
            return Renewal.FAILED  # a 409 is settled by the next read: ours still, or someone else's
        self._lead(written, started)
        return Renewal.RENEWED

    def keep(self, stop: threading.Event, lost: threading.Event, alive: Callable[[], bool] | None = None) -> None:
        """Renew until `stop`. Set `lost`, and return, as soon as another holder is seen, or when no
        renewal succeeded within the renew deadline, even while a call still hangs, or when `alive` says
        the work this replica leads for has stalled: renewing for a leader that does nothing would keep
        every other replica from taking over."""
        if self._renewed_at is None:
            self._renewed_at = self.clock()
        ended = threading.Event()  # the renewer saw the Lease lost, or the watchdog gave up on it
        renewer = threading.Thread(target=self._renew_loop, args=(stop, ended), daemon=True, name="lease-renew")
        renewer.start()
        try:
            while not stop.is_set():
                renewed = self._renewed_at
                if renewed is None:
                    return  # released: stopping, not lost
                remaining = renewed + self.renew_deadline - self.clock()
                if remaining <= 0:
                    log.error("leadership_lost", identity=self.identity, lease=self.name, reason="renew_deadline")
                    lost.set()
                    return
                if ended.is_set() and not stop.is_set():  # not the echo of our own release
                    log.error("leadership_lost", identity=self.identity, lease=self.name, holder=self.holder)
                    lost.set()
                    return
                if alive is not None and not alive():
                    # Not released: a stuck call may still land, so the Lease is left to expire first.
                    log.error("leadership_lost", identity=self.identity, lease=self.name, reason="work_stalled")
                    lost.set()
                    return
                # Wakes for the renewer's verdict at once; `stop` is seen within a retry period.
                ended.wait(min(remaining, self.retry_period))
        finally:
            ended.set()
            self._renewed_at = None

    def _renew_loop(self, stop: threading.Event, ended: threading.Event) -> None:
        while not stop.is_set() and not ended.is_set():
            if self._renew() is Renewal.LOST:
                ended.set()
                return
            stop.wait(self.retry_period)

    def release(self) -> bool:
        """Hand the Lease back, to be called once this replica has stopped acting: the holder is emptied,
        so the next replica takes over at its next attempt rather than after a whole lease."""
        for _ in range(3):  # a renewal still in flight may move the resourceVersion once
            try:
                current = self._coordination().read_namespaced_lease(
                    self.name, self.namespace, _request_timeout=self.request_timeout
                )
            except CALL_ERRORS as exc:
                log.warning("lease_release_failed", lease=self.name, error=str(exc))
                return False
            if current.spec.holder_identity != self.identity:
                return False
            now = _micro(self.wall())
            body = {
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now},
            }
            try:
                self._coordination().patch_namespaced_lease(
                    self.name, self.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=self.request_timeout
                )
            except ApiException as exc:
                if exc.status == 409:
                    continue
                log.warning("lease_release_failed", lease=self.name, status=exc.status, reason=exc.reason)
                return False
            except (HTTPError, OSError) as exc:
                log.warning("lease_release_failed", lease=self.name, error=str(exc))
                return False
            self._renewed_at = None
            log.info("lease_released", identity=self.identity, lease=self.name)
            return True
        return False


class StandbyHealth:
    """The liveness endpoint while this replica stands by for the Lease.

    kopf serves /healthz on the same port once the replica leads, so `close()` frees the port before
    kopf starts: the two never listen at once. The probe fails when the acquire loop has made no attempt
    for a while (each attempt is bounded by request timeouts, so a live loop always makes progress)."""

    def __init__(self, elector: Elector, port: int, host: str = "0.0.0.0", path: str = "/healthz") -> None:
        self.elector = elector
        self.path = path
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != health.path:
                    self.send_error(404)
                    return
                ok = health.alive()
                body = json.dumps({"standby": True, "lease": elector.name, "holder": elector.holder}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a probe every few seconds is not worth a log line

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="standby-health")

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def alive(self) -> bool:
        last = self.elector.last_attempt
        return last is not None and self.elector.clock() - last <= 3 * self.elector.duration

    def start(self) -> StandbyHealth:
        self._thread.start()
        log.info("standby_health_serving", port=self.port, path=self.path)
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
