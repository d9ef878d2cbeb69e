"""Leader election on a Lease against the emulated API, with client-go's semantics: one leader, takeover
a full lease (on the taker's own clock) after the record last changed, no double win, request timeouts,
loss noticed at once, release on a clean exit."""

from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import kubernetes
import pytest
from kmock import action

from cluster.emulator import OPERATOR_AGENTS, Fault
from cluster.harness import KTJ, LEASES, Cluster
from helpers.blackhole import Blackhole
from helpers.jobs import tiny_job
from helpers.server import free_port, get_json
from keras_operator.runtime import credentials
from keras_operator.runtime.leader import Elector, lease_client
from keras_operator.runtime.settings import Settings

pytestmark = pytest.mark.e2e

NAMESPACE, NAME = "keras-system", "keras-operator"


def elector(cluster: Cluster, identity: str, duration: float = 2.0) -> Elector:
    return Elector(lease_client(login()), NAMESPACE, NAME, identity, duration)


def login() -> credentials.Credentials:
    """The credentials as the operator finds them (the cluster fixture names the emulated API server)."""
    return credentials.find(Settings.from_env().api_server)


def lease(cluster: Cluster) -> dict:
    found = cluster.get(LEASES, NAME, NAMESPACE)
    assert found is not None
    return found


def micro(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hung_client(hole: Blackhole) -> kubernetes.client.ApiClient:
    """An API client whose every call meets a server that never answers."""
    config = kubernetes.client.Configuration()
    config.host = hole.url
    return lease_client(kubernetes.client.ApiClient(config))


def returns_within(seconds: float, fn: object) -> tuple[bool, object]:
    """Run `fn` in a thread: (True, its result or exception) when it returned in time, else (False, None)."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())  # type: ignore[operator]
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), out[0] if out else None)


def test_one_leader_then_takeover_a_lease_after_the_last_change_seen(cluster: Cluster) -> None:
    a, b = elector(cluster, "pod-a"), elector(cluster, "pod-b")
    assert a.try_acquire() is True
    assert b.try_acquire() is False  # held and fresh
    assert a.renew() is True
    assert a.try_acquire() is True  # the holder keeps it
    assert b.try_acquire() is False  # b sees the renewed record: its own lease clock starts again
    time.sleep(2.5)  # a stops renewing: a lease passes on b's clock with no change
    assert b.try_acquire() is True
    spec = lease(cluster)["spec"]
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseTransitions"] == 1
    assert a.renew() is False  # the old leader notices it lost
    assert a.try_acquire() is False


def test_a_write_based_on_a_stale_read_loses(cluster: Cluster) -> None:
    a = elector(cluster, "pod-a")
    assert a.try_acquire()
    api = kubernetes.client.CoordinationV1Api(kubernetes.client.ApiClient(login().blocking()))
    stale = api.read_namespaced_lease(NAME, NAMESPACE).metadata.resource_version
    assert a.renew()  # the lease moves on
    with pytest.raises(kubernetes.client.exceptions.ApiException) as err:
        api.patch_namespaced_lease(
            NAME, NAMESPACE, {"metadata": {"resourceVersion": stale}, "spec": {"holderIdentity": "pod-b"}}
        )
    assert err.value.status == 409
    assert lease(cluster)["spec"]["holderIdentity"] == "pod-a"


def test_keep_renews_while_a_standby_waits(cluster: Cluster) -> None:
    a, b = elector(cluster, "pod-a", 1.5), elector(cluster, "pod-b", 1.5)
    stop, lost = threading.Event(), threading.Event()
    assert a.acquire(stop)
    keeper = threading.Thread(target=a.keep, args=(stop, lost))
    keeper.start()
    try:
        deadline = time.monotonic() + 3.5  # more than two leases: only renewals keep b out
        while time.monotonic() < deadline:
            assert b.try_acquire() is False
            time.sleep(0.1)
        assert not lost.is_set()
    finally:
        stop.set()
        keeper.join(5)


def test_a_leader_that_sees_another_holder_stops_at_once(cluster: Cluster) -> None:
    # A 6 s lease renews every 0.8 s and would let a failing leader act for 4 s: seeing another holder
    # must end it at the next renewal, not at the renew deadline.
    a = elector(cluster, "pod-a", 6.0)
    stop, lost = threading.Event(), threading.Event()
    assert a.acquire(stop)
    keeper = threading.Thread(target=a.keep, args=(stop, lost))
    keeper.start()
    try:
        time.sleep(1.0)  # a renewal or so
        cluster.patch(LEASES, NAME, {"spec": {"holderIdentity": "pod-b"}}, namespace=NAMESPACE)
        seen = time.monotonic()
        assert lost.wait(5), "the leader did not notice it lost the lease"
        assert time.monotonic() - seen < 1.5  # a renewal (every 0.8 s) later, not 4 s
        keeper.join(1)
        assert not keeper.is_alive()  # keep() returns with `lost`, so the operator stops
    finally:
        stop.set()
        keeper.join(5)


def test_every_lease_call_times_out_on_a_hung_api(cluster: Cluster, blackhole: Blackhole) -> None:
    a = elector(cluster, "pod-a", 2.0)
    assert a.try_acquire()
    a.api = hung_client(blackhole)
    bound = 1.5  # the renew deadline of a 2 s lease (1.33 s) plus a margin: no Lease call may hang longer
    for name in ("renew", "try_acquire", "release"):
        started = time.monotonic()
        returned, result = returns_within(bound + 2, getattr(a, name))
        assert returned, f"{name} hung on an API that never answers"
        assert time.monotonic() - started < bound
        assert result is not True


def test_a_hung_leader_steps_down_before_another_replica_takes_over(cluster: Cluster, blackhole: Blackhole) -> None:
    a, b = elector(cluster, "pod-a", 2.0), elector(cluster, "pod-b", 2.0)
    stop, lost, b_stop = threading.Event(), threading.Event(), threading.Event()
    assert a.acquire(stop)
    keeper = threading.Thread(target=a.keep, args=(stop, lost))
    keeper.start()
    took_over: list[float] = []
    standby = threading.Thread(target=lambda: b.acquire(b_stop) and took_over.append(time.monotonic()))
    standby.start()
    try:
        time.sleep(1.0)
        a.api = hung_client(blackhole)  # the leader's link to the API goes half-open
        hung = time.monotonic()
        assert lost.wait(5), "the hung leader never stepped down"
        stepped_down = time.monotonic()
        assert stepped_down - hung <= a.renew_deadline + 0.5
        standby.join(10)
        assert took_over, "no replica took over from the hung leader"
        assert stepped_down < took_over[0]
        assert lease(cluster)["spec"]["holderIdentity"] == "pod-b"
    finally:
        stop.set()
        b_stop.set()
        keeper.join(5)
        standby.join(5)


def test_a_renew_time_far_in_the_past_does_not_expire_a_live_lease(cluster: Cluster) -> None:
    """The holder's clock runs an hour behind this replica's: its lease is still fresh."""
    a, b = elector(cluster, "pod-a", 2.0), elector(cluster, "pod-b", 2.0)
    assert a.try_acquire()
    past = micro(datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(hours=1))
    cluster.patch(LEASES, NAME, {"spec": {"renewTime": past, "acquireTime": past}}, namespace=NAMESPACE)
    assert b.try_acquire() is False
    # The same with a leader that keeps renewing with its slow clock: b never wins.
    a.wall = lambda: datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(hours=1)
    stop, lost = threading.Event(), threading.Event()
    keeper = threading.Thread(target=a.keep, args=(stop, lost))
    keeper.start()
    try:
        deadline = time.monotonic() + 2 * a.duration
        while time.monotonic() < deadline:
            assert b.try_acquire() is False
            time.sleep(0.1)
        assert lease(cluster)["spec"]["renewTime"].startswith(past[:13])  # written with the skewed clock
        assert not lost.is_set()
    finally:
        stop.set()
        keeper.join(5)


def test_a_renew_time_far_in_the_future_expires_a_lease_after_the_last_change_seen(cluster: Cluster) -> None:
    """The holder's clock ran an hour ahead, then it died: its lease expires one lease after b saw it last."""
    a, b = elector(cluster, "pod-a", 2.0), elector(cluster, "pod-b", 2.0)
    assert a.try_acquire()
    future = micro(datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=1))
    cluster.patch(LEASES, NAME, {"spec": {"renewTime": future, "acquireTime": future}}, namespace=NAMESPACE)
    assert b.try_acquire() is False
    first_seen = time.monotonic()
    deadline = first_seen + 4 * a.duration
    while not b.try_acquire():
        assert time.monotonic() < deadline, "a lease renewed in the future never expired"
        time.sleep(0.1)
    waited = time.monotonic() - first_seen
    assert waited >= lease(cluster)["spec"]["leaseDurationSeconds"] - 0.1  # not before a full local lease
    assert lease(cluster)["spec"]["holderIdentity"] == "pod-b"


def test_a_released_lease_is_taken_over_at_once(cluster: Cluster) -> None:
    a, b = elector(cluster, "pod-a", 10.0), elector(cluster, "pod-b", 10.0)
    assert a.try_acquire()
    assert b.try_acquire() is False
    assert a.release() is True
    assert lease(cluster)["spec"]["holderIdentity"] == ""
    assert a.release() is False  # not the holder any more
    assert b.try_acquire() is True  # no 10 s wait
    spec = lease(cluster)["spec"]
    assert spec["holderIdentity"] == "pod-b"
    assert spec["leaseTransitions"] == 1


class Replica:
    """An operator replica as main() runs it: stand by, lead until stopped or lost, release on a clean stop."""

    def __init__(self, cluster: Cluster, identity: str, duration: float) -> None:
        self.elector = elector(cluster, identity, duration)
        self.stop, self.lost = threading.Event(), threading.Event()
        self.intervals: list[list[float]] = []  # [started leading, stopped acting]
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"replica-{identity}")
        self.thread.start()

    @property
    def identity(self) -> str:
        return self.elector.identity

    @property
    def leading(self) -> bool:
        return bool(self.intervals) and self.intervals[-1][1] == math.inf

    def _run(self) -> None:
        if not self.elector.acquire(self.stop):
            return
        self.intervals.append([time.monotonic(), math.inf])
        self.elector.keep(self.stop, self.lost)
        self.intervals[-1][1] = time.monotonic()
        if not self.lost.is_set():
            self.elector.release()

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(10)


def wait_leader(replicas: list[Replica], timeout: float) -> Replica:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [r for r in replicas if r.leading]
        assert len(leaders) <= 1, f"two leaders at once: {[r.identity for r in leaders]}"
        if leaders:
            return leaders[0]
        time.sleep(0.01)
    raise AssertionError("no replica leads")


def assert_one_at_a_time(replicas: list[Replica]) -> None:
    intervals = sorted((start, end, r.identity) for r in replicas for start, end in r.intervals)
    for (_, end, who), (start, _, next_who) in itertools.pairwise(intervals):
        assert start > end, f"{next_who} led from {start} while {who} still acted until {end}"


def test_three_replicas_one_leads_and_one_of_the_others_takes_over(cluster: Cluster, blackhole: Blackhole) -> None:
    duration = 2.0
    replicas = [Replica(cluster, f"pod-{n}", duration) for n in "abc"]
    try:
        first = wait_leader(replicas, 10)
        end = time.monotonic() + duration  # a whole lease of renewals: nobody else gets in
        while time.monotonic() < end:
            assert wait_leader(replicas, 1) is first

        # A clean stop releases the Lease: one of the other two leads well within a lease.
        first.halt()
        stopped = time.monotonic()
        second = wait_leader(replicas, duration)
        assert second is not first
        assert time.monotonic() - stopped < duration * 0.75
        end = time.monotonic() + duration
        while time.monotonic() < end:
            assert wait_leader(replicas, 1) is second

        # A replacement replica stands by; then the leader's API link hangs.
        replicas.append(Replica(cluster, "pod-d", duration))
        time.sleep(0.5)
        second.elector.api = hung_client(blackhole)
        assert second.lost.wait(duration), "the hung leader never stepped down"
        third = wait_leader(replicas, 3 * duration)
        assert third not in (first, second)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            assert wait_leader(replicas, 1) is third
        assert lease(cluster)["spec"]["holderIdentity"] == third.identity
        assert_one_at_a_time(replicas)
        assert sum(len(r.intervals) for r in replicas) == 3  # exactly one takeover per event
    finally:
        for r in replicas:
            r.halt()


def test_two_operator_processes_one_acts_and_the_other_takes_over(cluster: Cluster) -> None:
    """The real `keras-operator` entry point, twice, with leader election on."""
    import os
    import signal
    import subprocess
    import sys
    import urllib.error
    from pathlib import Path

    from cluster.harness import KTJ
    from helpers.jobs import tiny_job
    from helpers.server import free_port, get_json

    ports: dict[str, int] = {}

    def start(name: str) -> subprocess.Popen[bytes]:
        ports[name] = free_port()
        env = {
            **os.environ,
            "KERAS_OPERATOR_LEADER_ELECTION": "true",
            "KERAS_OPERATOR_POD_NAME": name,
            "KERAS_OPERATOR_POD_NAMESPACE": NAMESPACE,
            "KERAS_OPERATOR_LEASE_SECONDS": "2",
            "KERAS_OPERATOR_LIVENESS_PORT": str(ports[name]),
            "KERAS_OPERATOR_METRICS_PORT": "0",
        }
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "keras-operator")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def probe(name: str) -> tuple[int, dict] | None:
        """The liveness probe of the chart: GET /healthz on the replica's health port."""
        try:
            return get_json(f"http://127.0.0.1:{ports[name]}/healthz")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def holder() -> str | None:
        found = cluster.get(LEASES, NAME, NAMESPACE)
        return found["spec"]["holderIdentity"] if found else None

    def failed(name: str) -> bool:
        obj = cluster.get(KTJ, name)
        return bool(obj and (obj.get("status") or {}).get("phase") == "Failed")

    first = start("operator-a")
    second = None
    try:
        cluster.wait_for(lambda: holder() == "operator-a", 60, "operator-a to lead")
        second = start("operator-b")
        # The standby answers its liveness probe while it waits (else Kubernetes restarts it).
        answer = cluster.wait_for(lambda: probe("operator-b"), 30, "the standby to answer /healthz")
        assert answer[0] == 200
        assert answer[1].get("standby") is True
        cluster.create(KTJ, tiny_job("one", training__epochs=0))  # invalid: handled without a trainer
        cluster.wait_for(lambda: failed("one"), 60, "the leader to handle a resource")
        assert holder() == "operator-a"
        assert probe("operator-b") == answer  # still standing by, still alive
        first.send_signal(signal.SIGKILL)  # no clean hand-over: the Lease must expire
        cluster.wait_for(lambda: holder() == "operator-b", 30, "operator-b to take over")
        cluster.create(KTJ, tiny_job("two", training__epochs=0))
        cluster.wait_for(lambda: failed("two"), 60, "the new leader to handle a resource")
        # Leading, the same port is kopf's liveness endpoint now.
        led = cluster.wait_for(lambda: probe("operator-b"), 30, "kopf to answer /healthz")
        assert led[0] == 200
        assert "standby" not in led[1]
        # SIGTERM ends the process in seconds (a stop flag nobody set once held it until SIGKILL),
        # and releases the Lease on the way out.
        assert second is not None
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
        assert holder() == ""
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_a_standby_process_exits_cleanly_on_sigterm_and_leaves_the_lease_alone(cluster: Cluster) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from helpers.server import free_port, get_json

    now = micro(datetime.datetime.now(tz=datetime.UTC))
    held = {"holderIdentity": "someone", "leaseDurationSeconds": 60, "renewTime": now, "acquireTime": now}
    cluster.create(
        LEASES,
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": NAME}, "spec": held},
        namespace=NAMESPACE,
    )
    port = free_port()
    env = {
        **os.environ,
        "KERAS_OPERATOR_LEADER_ELECTION": "true",
        "KERAS_OPERATOR_POD_NAME": "standby",
        "KERAS_OPERATOR_POD_NAMESPACE": NAMESPACE,
        "KERAS_OPERATOR_LEASE_SECONDS": "60",  # retries every 8 s: only the signal can end the wait quickly
        "KERAS_OPERATOR_LIVENESS_PORT": str(port),
        "KERAS_OPERATOR_METRICS_PORT": "0",
    }
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "keras-operator")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answer() -> tuple[int, dict] | None:
            try:
                return get_json(f"http://127.0.0.1:{port}/healthz")
            except OSError:
                return None

        status, body = cluster.wait_for(answer, 30, "the standby to answer /healthz")
        assert status == 200
        assert body["holder"] == "someone"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - sent < 5
        assert lease(cluster)["spec"]["holderIdentity"] == "someone"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def operator_process(name: str, lease_seconds: float, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The real `keras-operator` entry point with leader election on, its debug log (kopf's own lines too) in
    `log`: (the process, its liveness port)."""
    port = free_port()
    env = {
        **os.environ,
        "KERAS_OPERATOR_LEADER_ELECTION": "true",
        "KERAS_OPERATOR_POD_NAME": name,
        "KERAS_OPERATOR_POD_NAMESPACE": NAMESPACE,
        "KERAS_OPERATOR_LEASE_SECONDS": str(lease_seconds),
        "KERAS_OPERATOR_LIVENESS_PORT": str(port),
        "KERAS_OPERATOR_METRICS_PORT": "0",
        "KERAS_OPERATOR_LOG_LEVEL": "debug",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "keras-operator")], env=env, stdout=out, stderr=out)
    return proc, port


def probe(port: int) -> tuple[int, dict] | None:
    """The liveness probe of the chart: GET /healthz on the replica's health port."""
    try:
        return get_json(f"http://127.0.0.1:{port}/healthz")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def log_events(log: Path) -> list[str]:
    """The `event` of every JSON line of an operator's log, in order."""
    return [json.loads(line)["event"] for line in log.read_text().splitlines() if line.startswith("{")]


def holder(cluster: Cluster) -> str | None:
    found = cluster.get(LEASES, NAME, NAMESPACE)
    return found["spec"]["holderIdentity"] if found else None


def failed(cluster: Cluster, name: str) -> bool:
    obj = cluster.get(KTJ, name)
    return bool(obj and (obj.get("status") or {}).get("phase") == "Failed")


def stop_all(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# kopf's run_tasks: once its own tasks are done, it gives whatever still runs 5 s, then cancels it and logs
# "Hung tasks are stopped: ..."; with nothing left over past that wait it logs this instead.
NO_HUNG_TASKS = "Hung tasks stopping is skipped: no tasks given."


def test_sigterm_releases_the_lease_as_soon_as_kopf_is_done(cluster: Cluster, tmp_path: Path) -> None:
    """A SIGTERM'd leader leaves kopf nothing to wait for (the resync and log-fallback loops once held every
    hand-over 5 s: kopf's timeout for tasks it considers hung), then releases, and the standby acts."""
    log = tmp_path / "operator-a.log"
    first, _ = operator_process("operator-a", 2, log)
    second = None
    try:
        cluster.wait_for(lambda: holder(cluster) == "operator-a", 60, "operator-a to lead")
        cluster.create(KTJ, tiny_job("one", training__epochs=0))  # invalid: handled without a trainer
        cluster.wait_for(lambda: failed(cluster, "one"), 60, "the leader to handle a resource")
        second, port = operator_process("operator-b", 2, tmp_path / "operator-b.log")
        cluster.wait_for(lambda: probe(port), 30, "the standby to answer /healthz")

        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        cluster.wait_for(lambda: holder(cluster) == "operator-b", 30, "operator-b to take over")
        took_over = time.monotonic() - sent
        cluster.create(KTJ, tiny_job("two", training__epochs=0))
        cluster.wait_for(lambda: failed(cluster, "two"), 60, "the new leader to handle a resource")
        print(f"hand-over: Lease {took_over:.2f} s, first act {time.monotonic() - sent:.2f} s after SIGTERM")
        assert first.wait(timeout=20) == 0

        events = log_events(log)
        assert "Root tasks are stopped: finishing normally; tasks left: set()" in events  # kopf's debug lines
        assert not [e for e in events if e.startswith("Hung tasks are")], "kopf waited out its hung-task timeout"
        assert NO_HUNG_TASKS in events
        assert events.index("lease_released") > events.index(NO_HUNG_TASKS)  # released once kopf is done
    finally:
        stop_all(first, second)


def test_a_write_under_way_at_sigterm_lands_before_the_lease_is_released(cluster: Cluster, tmp_path: Path) -> None:
    """kopf cancels the task awaiting an API call, but the call goes on in the client's thread: the Lease is
    released only once it is done, so no write of the old leader follows the release."""
    assert cluster.emulator is not None
    first, _ = operator_process("operator-a", 4, tmp_path / "operator-a.log")
    try:
        cluster.wait_for(lambda: holder(cluster) == "operator-a", 60, "operator-a to lead")
        # The status write of the next KerasTrainingJob is held 2 s by the API (less than the 4 s lease, the
        # longest the leader waits for its calls before it leaves the Lease to expire instead).
        slow = Fault(action.UPDATE, KTJ, None, delay=2.0, agents=OPERATOR_AGENTS)
        cluster.emulator.faults.append(slow)
        cluster.create(KTJ, tiny_job("one", training__epochs=0))
        cluster.wait_for(lambda: slow.hits == 1, 60, "the leader's status write to reach the API")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
        lease_after = lease(cluster)
        assert lease_after["spec"]["holderIdentity"] == ""  # released
        assert failed(cluster, "one")  # the write under way went through...
        written = cluster.get(KTJ, "one")
        assert written is not None
        # ...before the release (resourceVersions come from one counter, as etcd's revisions do).
        assert int(written["metadata"]["resourceVersion"]) < int(lease_after["metadata"]["resourceVersion"])
    finally:
        stop_all(first)
