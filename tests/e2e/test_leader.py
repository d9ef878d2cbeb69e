"""Leader election on a Lease against the emulated API: one leader, takeover after expiry, no double win."""

from __future__ import annotations

import threading
import time

import kubernetes
import pytest

from cluster.harness import LEASES, Cluster
from keras_operator.runtime import kube
from keras_operator.runtime.leader import Elector

pytestmark = pytest.mark.e2e


def elector(cluster: Cluster, identity: str, duration: float = 2.0) -> Elector:
    return Elector(kube.api_client(), "keras-system", "keras-operator", identity, duration)


def test_one_leader_then_takeover_after_expiry(cluster: Cluster) -> None:
    a, b = elector(cluster, "pod-a"), elector(cluster, "pod-b")
    assert a.try_acquire() is True
    assert b.try_acquire() is False  # held and fresh
    assert a.renew() is True
    assert a.try_acquire() is True  # the holder keeps it
    time.sleep(2.5)  # a stops renewing: the lease expires
    assert b.try_acquire() is True
    lease = cluster.get(LEASES, "keras-operator", "keras-system")
    assert lease["spec"]["holderIdentity"] == "pod-b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert a.renew() is False  # the old leader notices it lost
    assert a.try_acquire() is False


def test_a_write_based_on_a_stale_read_loses(cluster: Cluster) -> None:
    a = elector(cluster, "pod-a")
    assert a.try_acquire()
    api = kubernetes.client.CoordinationV1Api(kube.api_client())
    stale = api.read_namespaced_lease("keras-operator", "keras-system").metadata.resource_version
    assert a.renew()  # the lease moves on
    with pytest.raises(kubernetes.client.exceptions.ApiException) as err:
        api.patch_namespaced_lease(
            "keras-operator",
            "keras-system",
            {"metadata": {"resourceVersion": stale}, "spec": {"holderIdentity": "pod-b"}},
        )
    assert err.value.status == 409
    assert cluster.get(LEASES, "keras-operator", "keras-system")["spec"]["holderIdentity"] == "pod-a"


def test_keep_renews_and_reports_loss(cluster: Cluster) -> None:
    a, b = elector(cluster, "pod-a", 1.5), elector(cluster, "pod-b", 1.5)
    stop, lost = threading.Event(), threading.Event()
    assert a.acquire(stop)
    keeper = threading.Thread(target=a.keep, args=(stop, lost))
    keeper.start()
    time.sleep(2.5)  # longer than the lease: only renewals keep b out
    assert b.try_acquire() is False
    cluster.patch(LEASES, "keras-operator", {"spec": {"holderIdentity": "pod-b"}}, namespace="keras-system")
    assert lost.wait(5), "the leader did not notice it lost the lease"
    stop.set()
    keeper.join(5)


def test_two_operator_processes_one_acts_and_the_other_takes_over(cluster: Cluster) -> None:
    """The real `keras-operator` entry point, twice, with leader election on."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from cluster.harness import KTJ
    from helpers.jobs import tiny_job
    from helpers.server import free_port

    def start(name: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "KERAS_OPERATOR_LEADER_ELECTION": "true",
            "KERAS_OPERATOR_POD_NAME": name,
            "KERAS_OPERATOR_POD_NAMESPACE": "keras-system",
            "KERAS_OPERATOR_LEASE_SECONDS": "2",
            "KERAS_OPERATOR_LIVENESS_PORT": str(free_port()),
            "KERAS_OPERATOR_METRICS_PORT": "0",
        }
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "keras-operator")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def holder() -> str | None:
        lease = cluster.get(LEASES, "keras-operator", "keras-system")
        return lease["spec"]["holderIdentity"] if lease else None

    def failed(name: str) -> bool:
        obj = cluster.get(KTJ, name)
        return bool(obj and (obj.get("status") or {}).get("phase") == "Failed")

    first = start("operator-a")
    second = None
    try:
        cluster.wait_for(lambda: holder() == "operator-a", 60, "operator-a to lead")
        second = start("operator-b")
        cluster.create(KTJ, tiny_job("one", training__epochs=0))  # invalid: handled without a trainer
        cluster.wait_for(lambda: failed("one"), 60, "the leader to handle a resource")
        assert holder() == "operator-a"
        first.send_signal(signal.SIGKILL)  # no clean hand-over: the Lease must expire
        cluster.wait_for(lambda: holder() == "operator-b", 30, "operator-b to take over")
        cluster.create(KTJ, tiny_job("two", training__epochs=0))
        cluster.wait_for(lambda: failed("two"), 60, "the new leader to handle a resource")
        # SIGTERM ends the process in seconds (a stop flag nobody set once held it until SIGKILL).
        assert second is not None
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
