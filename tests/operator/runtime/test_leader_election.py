"""The parts of leader election that need no API server: the standby's liveness endpoint, and the Lease
client's timeouts against an API that never answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import kubernetes
import pytest
from aiohttp import web
from urllib3.exceptions import HTTPError

from helpers.blackhole import Blackhole
from keras_operator.runtime.credentials import Credentials
from keras_operator.runtime.kube import Api
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
    from keras_operator.runtime.metrics import Metrics
    from keras_operator.runtime.settings import Settings

    settings = Settings(sync_interval=3600)
    api, metrics = Api(Credentials("http://127.0.0.1:9"), settings.api_timeout), Metrics()
    kinds = (Training(settings, api, metrics), Serving(settings, api, metrics))
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


class HeldWrites:
    """An API server on the loop of `runner` that holds every PATCH until `answer` is set."""

    def __init__(self, runner: asyncio.Runner) -> None:
        self.runner = runner
        self.answer = asyncio.Event()
        self.arrived = asyncio.Event()
        self.landed: list[str] = []
        runner.run(self._start())

    async def _start(self) -> None:
        async def hold(request: web.Request) -> web.Response:
            self.arrived.set()
            await self.answer.wait()
            self.landed.append(request.path)
            return web.json_response({"metadata": {"name": request.match_info["name"]}})

        app = web.Application()
        app.router.add_patch("/apis/batch/v1/namespaces/{namespace}/jobs/{name}", hold)
        self.site_runner = web.AppRunner(app)
        await self.site_runner.setup()
        site = web.TCPSite(self.site_runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self.api = Api(Credentials(self.url), 30.0)  # the operator run's client, as main.py makes it

    def write_then_cancel_its_caller(self) -> None:
        """A reconcile's PATCH reaches the server; then kopf cancels the reconcile, as at shutdown."""

        async def go() -> None:
            call = asyncio.create_task(self.api.patch("Job", "ns", "a", {"spec": {"suspend": True}}))
            await asyncio.wait_for(self.arrived.wait(), 10)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call

        self.runner.run(go())

    def close(self) -> None:
        self.runner.run(self.api.close())
        self.runner.run(self.site_runner.cleanup())


def test_the_release_waits_for_the_writes_under_way() -> None:
    """kopf cancels the task awaiting a write, not the write: it lands, and only then may the Lease go."""
    from keras_operator import main

    with asyncio.Runner() as runner:
        server = HeldWrites(runner)
        server.write_then_cancel_its_caller()
        # Still under way: the Lease is left to expire.
        assert main._api_calls_done(runner, server.api, timeout=0.2) is False
        assert server.landed == []
        server.answer.set()
        assert main._api_calls_done(runner, server.api, timeout=10) is True
        assert server.landed == ["/apis/batch/v1/namespaces/ns/jobs/a"]
        server.close()


def test_a_write_cut_off_half_way_keeps_the_lease_from_being_released() -> None:
    """A write cancelled itself (the loop's end, kopf's hung-task stop) may still be applied by the API server:
    the replica then leaves the Lease to expire rather than release it."""
    from keras_operator import main

    with asyncio.Runner() as runner:
        server = HeldWrites(runner)
        server.write_then_cancel_its_caller()

        async def cancel_the_writes() -> None:
            for task in server.api.writes.under_way:
                task.cancel()
            await asyncio.sleep(0.1)

        runner.run(cancel_the_writes())
        assert main._api_calls_done(runner, server.api, timeout=10) is False
        server.answer.set()
        server.close()
