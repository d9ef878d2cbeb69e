"""The parts of leader election that need no API server: the standby's liveness endpoint, and the Lease
client's timeouts against an API that never answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import kubernetes
import pytest
from urllib3.exceptions import HTTPError

from helpers.blackhole import Blackhole
from keras_operator.runtime.leader import Elector, StandbyHealth, lease_client


def shared_client(url: str) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    config.host = url
    return kubernetes.client.ApiClient(config)


def probe(port: int, path: str = "/healthz") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_standby_probe_answers_while_the_acquire_loop_runs_and_fails_when_it_stalls() -> None:
    clock = FakeClock()
    elector = Elector(shared_client("http://127.0.0.1:1"), "ns", "lease", "pod-a", 2.0, clock=clock)
    health = StandbyHealth(elector, 0, host="127.0.0.1").start()
    try:
        assert probe(health.port)[0] == 503  # no attempt yet: nothing says the loop runs
        elector.last_attempt = clock()
        status, body = probe(health.port)
        assert status == 200
        assert body["standby"] is True
        clock.now += 3 * elector.duration + 1  # no attempt for three leases
        assert probe(health.port)[0] == 503
        assert probe(health.port, "/other")[0] == 404
    finally:
        health.close()
    # Closed, the port is free for kopf's liveness endpoint: never two listeners on it.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", health.port))


def test_a_standby_stays_live_while_the_api_never_answers(blackhole: Blackhole) -> None:
    """Each attempt times out, so the acquire loop keeps going and the probe keeps passing."""
    elector = Elector(lease_client(shared_client(blackhole.url)), "ns", "lease", "pod-a", 1.0)
    health = StandbyHealth(elector, 0, host="127.0.0.1").start()
    stop = threading.Event()
    waiting = threading.Thread(target=elector.acquire, args=(stop,), daemon=True)
    waiting.start()
    try:
        end = time.monotonic() + 3 * elector.duration + 1
        while time.monotonic() < end:
            assert probe(health.port)[0] == 200
            time.sleep(0.2)
        stop.set()
        waiting.join(2 * elector.request_timeout + elector.retry_period + 1)
        assert not waiting.is_alive(), "the acquire loop hung on the API"
    finally:
        stop.set()
        health.close()


def test_the_lease_client_does_not_retry_a_timed_out_read(blackhole: Blackhole) -> None:
    """urllib3 retries a timed-out GET three times by default: four timeouts would outlast a renew deadline."""
    shared = shared_client(blackhole.url)
    api = kubernetes.client.CoordinationV1Api(lease_client(shared))
    started = time.monotonic()
    with pytest.raises(HTTPError):  # a timeout, or MaxRetryError had it been retried
        api.read_namespaced_lease("lease", "ns", _request_timeout=0.3)
    assert time.monotonic() - started < 0.3 * 2
    assert shared.configuration.retries is None  # the operator's own client keeps its retries


async def test_the_shutdown_ends_the_forever_loops_and_nothing_else() -> None:
    """Left running, a resync loop made kopf wait 5 s for it (a hung task) before the Lease's release."""
    from keras_operator.handlers.serving_handlers import Serving
    from keras_operator.handlers.training_handlers import Training
    from keras_operator.runtime.settings import Settings

    kinds = (Training(Settings(sync_interval=3600)), Serving(Settings(sync_interval=3600)))
    work = asyncio.create_task(asyncio.sleep(3600), name="reconcile")
    try:
        for kind in kinds:
            kind.start()
        loops = [t for t in asyncio.all_tasks() if t.get_name() in ("serving-resync", "progress-log-fallback")]
        assert len(loops) == 2
        for kind in kinds:
            await kind.close()
        assert all(task.cancelled() for task in loops)
        assert not work.done()  # other work is kopf's to wait for
    finally:
        work.cancel()


def test_the_release_waits_for_the_api_calls_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf cancels the task awaiting a call, not the call in the client's thread."""
    from keras_operator import main
    from keras_operator.runtime import kube

    monkeypatch.setattr(kube, "_executor", concurrent.futures.ThreadPoolExecutor(max_workers=2))
    answered = threading.Event()
    call = kube._threads().submit(answered.wait)
    assert main._api_calls_done(timeout=0.2) is False  # still under way: the Lease is left to expire
    answered.set()
    assert main._api_calls_done(timeout=10) is True
    assert call.done()
