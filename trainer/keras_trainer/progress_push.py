"""Training progress pushed to the operator's HTTPS endpoint (as Kubeflow Trainer's KEP-2779 does).

The operator's Job builder gives the pod the endpoint (`KERAS_OPERATOR_PROGRESS_URL`), a projected
service-account token file (`KERAS_OPERATOR_PROGRESS_TOKEN_FILE`, re-read on every attempt because
the kubelet rotates it) and optionally the PEM text of the endpoint's CA (`KERAS_OPERATOR_PROGRESS_CA`).

Each payload is one POST of JSON: `{"type": "epoch", ...EpochReport}` or `{"type": "result",
...TrainingResult}`. A background daemon thread sends them, so training never waits on the network:
`send()` only swaps the payload into a slot. Latest wins: an epoch still waiting when a newer one
comes is replaced (the operator only shows the latest); the result always goes after the epochs.
Answers: 2xx delivered; 401/403 retried a few times (the token may be rotating), then dropped; 408,
429, 5xx, connection errors and timeouts retried with exponential backoff and jitter; any other 4xx
is permanent (dropped). Nothing here replaces the JSON log line per epoch or the termination
message: they stay the fallback when the endpoint cannot be reached.
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from keras_operator.api.report import EpochReport, TrainingResult

URL_ENV = "KERAS_OPERATOR_PROGRESS_URL"
TOKEN_FILE_ENV = "KERAS_OPERATOR_PROGRESS_TOKEN_FILE"
CA_ENV = "KERAS_OPERATOR_PROGRESS_CA"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `start`, doubling per consecutive failure up to `cap`, each delay shortened
    by a random part of up to `jitter` of it (so pods that failed together do not retry together)."""

    start: float = 0.5
    cap: float = 30.0
    jitter: float = 0.5

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.cap, self.start * 2 ** min(max(failures - 1, 0), 32))
        return base * (1.0 - self.jitter * rng.random())


class _Outcome(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # transient: 5xx, connection error, timeout, unreadable token file
    UNAUTHORIZED = "unauthorized"  # 401/403: retried a few times, the token may be rotating
    REJECTED = "rejected"  # other 4xx: the same payload can never succeed


@dataclass(eq=False)
class _Item:
    kind: str
    body: bytes
    failures: int = 0  # 401/403 answers to this payload


@dataclass
class PushStats:
    attempts: int = 0
    delivered: int = 0
    dropped: int = 0
    superseded: int = 0
    last_status: int | None = None
    last_error: str = ""
    statuses: list[int] = field(default_factory=list)  # every HTTP status seen (tests read it)


class ProgressPusher:
    """Sends epoch reports and the final result to the operator from a background thread."""

    def __init__(
        self,
        url: str,
        token_file: str | os.PathLike[str] | None = None,
        ca_pem: str | None = None,
        *,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        auth_attempts: int = 3,
        warn_after: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.token_file = Path(token_file) if token_file else None
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.auth_attempts = auth_attempts
        self.warn_after = warn_after
        self.stats = PushStats()
        self.log = structlog.get_logger("keras_trainer")
        self._rng = rng or random.Random()
        self._opener = _opener(ca_pem)
        self._cond = threading.Condition()
        self._epoch: _Item | None = None
        self._sending: _Item | None = None  # the payload of the request in flight
        self._result: _Item | None = None
        self._closing = False
        self._deadline: float | None = None  # once closing: when the thread gives up
        self._kick = False  # close() cuts the current backoff wait short
        self._abandoned = False  # the close deadline passed with payloads undelivered
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="progress-push", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> ProgressPusher | None:
        """A pusher when the operator gave the pod an endpoint, else None (e.g. `kerasop run`); also None,
        with a warning, when the CA cannot be loaded: training goes on, reported through the fallbacks."""
        env = os.environ if environ is None else environ
        url = env.get(URL_ENV, "").strip()
        if not url:
            return None
        try:
            return cls(url, env.get(TOKEN_FILE_ENV) or None, env.get(CA_ENV) or None, **kwargs)
        except (ssl.SSLError, OSError, ValueError) as exc:
            structlog.get_logger("keras_trainer").warning("progress_push_disabled", url=url, error=str(exc))
            return None

    # --- the training side: never blocks ---

    def epoch(self, report: EpochReport) -> None:
        self.send("epoch", report.dump())

    def result(self, result: TrainingResult) -> None:
        self.send("result", result.dump())

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue `{"type": kind, **payload}`; returns at once. A newer epoch replaces a waiting one."""
        item = _Item(kind, json.dumps({"type": kind, **payload}, separators=(",", ":")).encode())
        with self._cond:
            if self._closing:
                return
            if kind == "result":
                self._result = item
            else:
                if self._epoch is not None and self._epoch is not self._sending:
                    self.stats.superseded += 1  # never sent
                self._epoch = item
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Wait up to `timeout` seconds for what is queued (the result) to be delivered or rejected;
        True when nothing was left undelivered for lack of time. Sending stops either way: the thread
        gives up at the deadline."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
            self._kick = True
            self._cond.notify_all()
            drained = self._cond.wait_for(lambda: self._next() is None, timeout)
        self._thread.join(timeout=0.5 if drained else 0)
        return bool(drained) and not self._abandoned

    # --- the sending thread ---

    def _next(self) -> _Item | None:
        return self._epoch if self._epoch is not None else self._result

    def _settle(self, item: _Item) -> None:
        with self._cond:
            if self._epoch is item:
                self._epoch = None
            elif self._result is item:
                self._result = None
            self._cond.notify_all()

    def _run(self) -> None:
        failures = 0  # consecutive transient failures, for the backoff and the one warning
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._next() is not None or self._closing)
                item = self._sending = self._next()
                if item is None:
                    return  # closing, nothing left
                timeout = self.request_timeout
                if self._deadline is not None:
                    timeout = min(timeout, self._deadline - time.monotonic())
                    if timeout <= 0:
                        self._give_up()
                        return
            try:
                outcome, status, error = self._attempt(item, timeout)
            except Exception as exc:  # never let the thread die with payloads queued: close() would wait in vain
                outcome, status, error = _Outcome.RETRY, None, f"{type(exc).__name__}: {exc}"
            self._sending = None
            self.stats.attempts += 1
            self.stats.last_status, self.stats.last_error = status, error
            if status is not None:
                self.stats.statuses.append(status)
            if outcome is _Outcome.DELIVERED:
                if "failing" in self._warned:
                    self._warned.discard("failing")
                    self.log.info("progress_push_recovered", url=self.url, after_failures=failures)
                failures = 0
                self.stats.delivered += 1
                self._settle(item)
                continue
            if outcome is _Outcome.REJECTED:
                self._drop(item, f"rejected:{status}", "progress_push_rejected", status=status, error=error)
                continue
            if outcome is _Outcome.UNAUTHORIZED:  # its own count and warning: not an outage
                item.failures += 1
                if item.failures >= self.auth_attempts:
                    self._drop(item, f"unauthorized:{status}", "progress_push_unauthorized", status=status)
                    continue
                delay = self.backoff.delay(item.failures, self._rng)
            else:
                failures += 1
                if failures >= self.warn_after and "failing" not in self._warned:
                    self._warned.add("failing")
                    self.log.warning(
                        "progress_push_failing", url=self.url, attempts=failures, status=status, error=error
                    )
                delay = self.backoff.delay(failures, self._rng)
            with self._cond:
                if self._deadline is not None:
                    delay = min(delay, self._deadline - time.monotonic())
                    if delay <= 0:
                        self._give_up()
                        return
                self._cond.wait_for(lambda: self._kick, delay)
                self._kick = False

    def _drop(self, item: _Item, key: str, event: str, **fields: Any) -> None:
        self.stats.dropped += 1
        if key not in self._warned:  # once per kind of rejection, not once per payload
            self._warned.add(key)
            self.log.warning(event, url=self.url, payload=item.kind, **fields)
        self._settle(item)

    def _give_up(self) -> None:
        """Called with the lock held, at the close deadline."""
        left = [i.kind for i in (self._epoch, self._result) if i is not None]
        self.stats.dropped += len(left)
        self._abandoned = True
        self._epoch = self._result = None
        self._cond.notify_all()
        self.log.warning("progress_push_abandoned", url=self.url, payloads=left, last_error=self.stats.last_error)

    def _attempt(self, item: _Item, timeout: float) -> tuple[_Outcome, int | None, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()  # the kubelet rotates it: read it every time
            except OSError as exc:
                return _Outcome.RETRY, None, f"token file: {exc}"
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url, data=item.body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read()
                return _Outcome.DELIVERED, int(response.status), ""
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            try:
                detail = exc.read(512).decode(errors="replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            finally:
                exc.close()
            if status in (401, 403):
                return _Outcome.UNAUTHORIZED, status, detail
            if status in (408, 429) or status >= 500:
                return _Outcome.RETRY, status, detail
            return _Outcome.REJECTED, status, detail
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, TLS, reset, timeout
            reason = getattr(exc, "reason", None) or exc
            return _Outcome.RETRY, None, f"{type(reason).__name__}: {reason}"


def _opener(ca_pem: str | None) -> urllib.request.OpenerDirector:
    """No proxy (the endpoint is an in-cluster Service; a pod's HTTPS_PROXY is for the outside world) and,
    with a CA, TLS that trusts only that CA."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_pem:
        text = ca_pem.strip()
        if text.startswith("-----BEGIN"):
            context = ssl.create_default_context(cadata=text)
        else:  # a path to a PEM file also works
            context = ssl.create_default_context(cafile=text)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)
