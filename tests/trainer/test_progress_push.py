"""The trainer's progress pusher against a real HTTP(S) endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from helpers.certs import CA
from keras_operator.api.report import EpochReport, TrainingResult
from keras_trainer.progress_push import CA_ENV, TOKEN_FILE_ENV, URL_ENV, Backoff, ProgressPusher
from keras_trainer.reporting import PodReporter

FAST = Backoff(start=0.02, cap=0.1)


class Endpoint:
    """The operator's progress endpoint, scripted: each request takes the next action of `script`
    (an HTTP status, "drop" to close the connection unanswered, or a callable returning a status),
    then `default`. Every request is recorded with its Authorization header."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: queue.Queue[int | str | Callable[[dict[str, Any], str], int]] = queue.Queue()
        self.default: int | Callable[[dict[str, Any], str], int] = 200
        self.requests: list[tuple[str, dict[str, Any], int | str]] = []  # (auth, body, answer)
        self.gate = threading.Event()  # cleared: requests wait (the sender stays busy)
        self.gate.set()
        self.arrived = 0  # requests read, answered or not
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                endpoint.arrived += 1
                endpoint.gate.wait(10)
                try:
                    action = endpoint.script.get_nowait()
                except queue.Empty:
                    action = endpoint.default
                if callable(action):
                    action = action(body, auth)
                endpoint.requests.append((auth, body, action))
                if action == "drop":
                    self.close_connection = True
                    return
                assert isinstance(action, int)
                data = b'{"ok": true}' if action < 300 else b'{"error": "scripted"}'
                self.send_response(action)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{self.scheme}://{host}:{port}/v1/namespaces/ns/kerastrainingjobs/job/progress"

    def delivered(self) -> list[dict[str, Any]]:
        return [body for _, body, answer in self.requests if isinstance(answer, int) and 200 <= answer < 300]

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {check}")


def epoch(n: int, of: int = 10) -> EpochReport:
    return EpochReport(epoch=n, epochs=of, metrics={"loss": 1.0 / n})


RESULT = TrainingResult(phase="Succeeded", epoch=10, epochs=10, metrics={"loss": 0.1}, model_uri="pvc://m/x.keras")


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    yield ep
    ep.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


@pytest.fixture
def pushers() -> Iterator[list[ProgressPusher]]:
    made: list[ProgressPusher] = []
    yield made
    for p in made:
        p.close(timeout=0.2)


@pytest.fixture
def make(pushers: list[ProgressPusher], endpoint: Endpoint, token: Path) -> Callable[..., ProgressPusher]:
    def _make(**kwargs: Any) -> ProgressPusher:
        kwargs.setdefault("backoff", FAST)
        pusher = ProgressPusher(kwargs.pop("url", endpoint.url), kwargs.pop("token_file", token), **kwargs)
        pushers.append(pusher)
        return pusher

    return _make


def test_epoch_and_result_are_posted_as_json_with_the_bearer_token(make: Any, endpoint: Endpoint) -> None:
    pusher = make()
    pusher.epoch(epoch(1))
    wait_until(lambda: endpoint.delivered())
    pusher.result(RESULT)
    assert pusher.close(timeout=5)
    assert [auth for auth, _, _ in endpoint.requests] == ["Bearer token-1", "Bearer token-1"]
    first, last = endpoint.delivered()
    assert first == {"type": "epoch", **epoch(1).dump()}
    assert (first["epoch"], first["epochs"], first["metrics"]) == (1, 10, {"loss": 1.0})
    assert last == {"type": "result", **RESULT.dump()}
    assert last["modelUri"] == "pvc://m/x.keras"


def test_the_token_file_is_read_again_for_every_attempt(make: Any, endpoint: Endpoint, token: Path) -> None:
    pusher = make()
    pusher.epoch(epoch(1))
    wait_until(lambda: len(endpoint.delivered()) == 1)
    token.write_text("token-2")  # the kubelet rotated it
    pusher.epoch(epoch(2))
    wait_until(lambda: len(endpoint.delivered()) == 2)
    assert [auth for auth, _, _ in endpoint.requests] == ["Bearer token-1", "Bearer token-2"]


def test_401_while_the_token_rotates_is_retried_with_the_new_token(make: Any, endpoint: Endpoint, token: Path) -> None:
    def only_new(body: dict[str, Any], auth: str) -> int:
        if auth != "Bearer token-2":
            token.write_text("token-2")  # rotated while the old one was on its way
            return 401
        return 200

    endpoint.default = only_new
    pusher = make()
    pusher.epoch(epoch(1))
    wait_until(lambda: endpoint.delivered())
    assert [(auth, answer) for auth, _, answer in endpoint.requests] == [
        ("Bearer token-1", 401),
        ("Bearer token-2", 200),
    ]


def test_a_token_that_stays_unauthorized_is_given_up_after_a_few_attempts(make: Any, endpoint: Endpoint) -> None:
    endpoint.default = 403
    pusher = make(auth_attempts=3)
    with structlog.testing.capture_logs() as logs:
        pusher.epoch(epoch(1))
        wait_until(lambda: pusher.stats.dropped == 1)
        pusher.epoch(epoch(2))
        wait_until(lambda: pusher.stats.dropped == 2)
    assert len(endpoint.requests) == 6  # three per payload, then dropped
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["progress_push_unauthorized"]


def test_5xx_answers_are_retried_with_backoff(make: Any, endpoint: Endpoint) -> None:
    for status in (503, 500, 502):
        endpoint.script.put(status)
    pusher = make()
    started = time.monotonic()
    pusher.epoch(epoch(1))
    # The sender thread counts an answer after the endpoint has sent it: wait for both.
    wait_until(lambda: endpoint.delivered() and pusher.stats.statuses[-1:] == [200])
    assert [answer for _, _, answer in endpoint.requests] == [503, 500, 502, 200]
    assert pusher.stats.statuses == [503, 500, 502, 200]
    # 0.02 + 0.04 + 0.08 at most, each shortened by up to half by the jitter
    assert 0.07 <= time.monotonic() - started < 2


def test_a_dropped_connection_and_a_refused_one_are_retried(make: Any, endpoint: Endpoint) -> None:
    endpoint.script.put("drop")
    pusher = make()
    pusher.epoch(epoch(1))
    wait_until(lambda: endpoint.delivered())
    assert [answer for _, _, answer in endpoint.requests] == ["drop", 200]

    # Nothing listening yet: connection refused, until the endpoint comes up on that port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    late = make(url=f"http://127.0.0.1:{port}/progress")
    late.epoch(epoch(1))
    wait_until(lambda: late.stats.attempts >= 2)
    assert late.stats.delivered == 0
    assert "Connection refused" in late.stats.last_error


def test_a_hanging_endpoint_times_out_and_is_retried(make: Any, endpoint: Endpoint) -> None:
    endpoint.gate.clear()
    pusher = make(request_timeout=0.2)
    pusher.epoch(epoch(1))
    wait_until(lambda: pusher.stats.attempts >= 1)
    assert "timed out" in pusher.stats.last_error
    endpoint.gate.set()
    wait_until(lambda: pusher.stats.delivered == 1)


def test_send_never_waits_and_only_the_latest_waiting_epoch_is_sent(make: Any, endpoint: Endpoint) -> None:
    endpoint.gate.clear()  # epoch 1 is on its way and the endpoint sits on it
    pusher = make()
    pusher.epoch(epoch(1))
    wait_until(lambda: endpoint.arrived == 1)
    started = time.monotonic()
    for n in range(2, 6):
        pusher.epoch(epoch(n))
    pusher.result(RESULT)
    assert time.monotonic() - started < 0.05  # send() only swaps a slot
    endpoint.gate.set()
    assert pusher.close(timeout=5)
    sent = [(b["type"], b.get("epoch")) for b in endpoint.delivered()]
    assert sent == [("epoch", 1), ("epoch", 5), ("result", 10)]
    assert pusher.stats.superseded == 3


def test_a_newer_epoch_replaces_one_that_is_being_retried(make: Any, endpoint: Endpoint) -> None:
    endpoint.default = 503
    pusher = make(backoff=Backoff(start=0.1, cap=0.1))
    pusher.epoch(epoch(1))
    wait_until(lambda: pusher.stats.attempts >= 1)
    pusher.epoch(epoch(2))
    pusher.result(RESULT)
    endpoint.default = 200
    assert pusher.close(timeout=5)
    assert [(b["type"], b.get("epoch")) for b in endpoint.delivered()] == [("epoch", 2), ("result", 10)]


def test_a_permanent_4xx_drops_that_payload_and_warns_once(make: Any, endpoint: Endpoint) -> None:
    for status in (400, 404, 400):
        endpoint.script.put(status)
    pusher = make()
    with structlog.testing.capture_logs() as logs:
        for n in (1, 2, 3, 4):
            pusher.epoch(epoch(n))
            wait_until(lambda n=n: len(endpoint.requests) == n)
        assert pusher.close(timeout=5)
    assert [answer for _, _, answer in endpoint.requests] == [400, 404, 400, 200]
    assert [b["epoch"] for b in endpoint.delivered()] == [4]
    assert pusher.stats.dropped == 3
    warnings = [(e["event"], e["status"]) for e in logs if e["log_level"] == "warning"]
    assert warnings == [("progress_push_rejected", 400), ("progress_push_rejected", 404)]


def test_failing_delivery_warns_once_and_says_when_it_recovers(make: Any, endpoint: Endpoint) -> None:
    endpoint.default = 503
    pusher = make(backoff=Backoff(start=0.01, cap=0.01), warn_after=3)
    with structlog.testing.capture_logs() as logs:
        pusher.epoch(epoch(1))
        wait_until(lambda: pusher.stats.attempts >= 10)
        endpoint.default = 200
        wait_until(lambda: pusher.stats.delivered == 1)
    events = [e["event"] for e in logs]
    assert events == ["progress_push_failing", "progress_push_recovered"]
    assert (logs[0]["log_level"], logs[0]["status"]) == ("warning", 503)


def test_close_delivers_the_result_within_its_timeout(make: Any, endpoint: Endpoint) -> None:
    endpoint.default = 503
    pusher = make(backoff=Backoff(start=5, cap=5))  # the backoff alone would outlast close()
    pusher.epoch(epoch(1))
    wait_until(lambda: pusher.stats.attempts >= 1)
    endpoint.default = 200
    pusher.result(RESULT)
    started = time.monotonic()
    assert pusher.close(timeout=3)  # close() cuts the backoff wait short
    assert time.monotonic() - started < 1
    assert [b["type"] for b in endpoint.delivered()] == ["epoch", "result"]


@pytest.mark.parametrize("down", ["refused", "503", "hanging"])
def test_close_returns_in_bounded_time_when_the_endpoint_is_down(make: Any, endpoint: Endpoint, down: str) -> None:
    if down == "refused":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/progress"
    else:
        url = endpoint.url
        endpoint.default = 503
        if down == "hanging":
            endpoint.gate.clear()
    pusher = make(url=url, request_timeout=30)
    pusher.epoch(epoch(1))
    pusher.result(RESULT)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        assert not pusher.close(timeout=0.5)
        elapsed = time.monotonic() - started
        if down != "hanging":  # the thread itself gives up at the deadline (a hanging request holds it longer)
            wait_until(lambda: any(e["event"] == "progress_push_abandoned" for e in logs), timeout=1)
    assert 0.45 <= elapsed < 1.0
    assert endpoint.delivered() == []
    pusher.epoch(epoch(2))  # after close, nothing more is queued
    assert pusher._epoch is None or json.loads(pusher._epoch.body)["epoch"] == 1


def test_close_without_anything_queued_returns_at_once(make: Any) -> None:
    pusher = make()
    started = time.monotonic()
    assert pusher.close()
    assert time.monotonic() - started < 0.6


# --- TLS ---


@pytest.fixture
def tls_endpoint(tmp_path: Path) -> Iterator[tuple[Endpoint, str]]:
    ca = CA.make("keras-operator progress CA")
    ca.write_serving(tmp_path, "keras-operator-progress.keras-system.svc")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    ep = Endpoint(tls=context)
    yield ep, ca.pem
    ep.close()


def test_https_with_the_ca_given_as_pem(make: Any, tls_endpoint: tuple[Endpoint, str]) -> None:
    endpoint, ca_pem = tls_endpoint
    assert endpoint.url.startswith("https://127.0.0.1:")
    pusher = make(url=endpoint.url, ca_pem=ca_pem)
    pusher.epoch(epoch(1))
    pusher.result(RESULT)
    assert pusher.close(timeout=5)
    assert [(auth, b["type"]) for auth, b, _ in endpoint.requests] == [
        ("Bearer token-1", "epoch"),
        ("Bearer token-1", "result"),
    ]


@pytest.mark.parametrize("trust", ["system", "another CA"])
def test_https_rejects_a_certificate_the_given_ca_did_not_sign(
    make: Any, tls_endpoint: tuple[Endpoint, str], trust: str
) -> None:
    endpoint, _ = tls_endpoint
    ca_pem = None if trust == "system" else CA.make().pem
    pusher = make(url=endpoint.url, ca_pem=ca_pem)
    pusher.epoch(epoch(1))
    wait_until(lambda: pusher.stats.attempts >= 2)  # retried: it is a connection error, not an answer
    assert "CERTIFICATE_VERIFY_FAILED" in pusher.stats.last_error
    assert endpoint.requests == []


# --- PodReporter ---


def test_pod_reporter_pushes_when_the_pod_has_an_endpoint(
    endpoint: Endpoint, token: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv(URL_ENV, endpoint.url)
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token))
    monkeypatch.delenv(CA_ENV, raising=False)
    reporter = PodReporter(termination_path=str(tmp_path / "termination-log"))
    assert reporter.pusher is not None
    reporter.epoch(epoch(1, of=2))
    reporter.epoch(epoch(2, of=2))
    reporter.end(RESULT)  # returns once the result is delivered
    assert [b["type"] for b in endpoint.delivered()][-1] == "result"
    assert {b.get("epoch") for b in endpoint.delivered() if b["type"] == "epoch"} <= {1, 2}
    # The fallbacks are still there: the termination message and one log line per epoch.
    assert json.loads((tmp_path / "termination-log").read_text()) == RESULT.dump()
    out = capsys.readouterr().out
    assert out.count("epoch_end") == 2


def test_pod_reporter_without_an_endpoint_does_not_push(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    assert ProgressPusher.from_env() is None
    assert PodReporter(termination_path=str(tmp_path / "t")).pusher is None
    assert ProgressPusher.from_env({URL_ENV: " "}) is None


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    import random

    rng = random.Random(1)
    backoff = Backoff(start=0.5, cap=30, jitter=0.5)
    delays = [backoff.delay(n, rng) for n in range(1, 12)]
    bases = [min(30, 0.5 * 2 ** (n - 1)) for n in range(1, 12)]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert (bases[0], bases[-1]) == (0.5, 30)
    assert len({round(d / b, 6) for d, b in zip(delays, bases, strict=True)}) > 1  # jittered


def test_a_missing_token_file_or_an_unexpected_error_is_retried(
    make: Any, endpoint: Endpoint, token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token.unlink()  # not written yet
    pusher = make()
    real, calls = pusher._attempt, []

    def flaky(item: Any, timeout: float) -> Any:
        calls.append(item)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(item, timeout)

    monkeypatch.setattr(pusher, "_attempt", flaky)
    pusher.epoch(epoch(1))
    wait_until(lambda: len(calls) >= 3)
    assert "token file" in pusher.stats.last_error
    token.write_text("late-token")
    wait_until(lambda: endpoint.delivered())
    assert [auth for auth, _, _ in endpoint.requests] == ["Bearer late-token"]


@pytest.mark.parametrize(
    "ca", ["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----", "/no/such/ca.pem"]
)
def test_a_ca_that_cannot_be_loaded_disables_pushing_without_failing_the_training(
    endpoint: Endpoint, token: Path, ca: str
) -> None:
    env = {URL_ENV: endpoint.url, TOKEN_FILE_ENV: str(token), CA_ENV: ca}
    with structlog.testing.capture_logs() as logs:
        assert ProgressPusher.from_env(env) is None
    assert [e["event"] for e in logs] == ["progress_push_disabled"]
