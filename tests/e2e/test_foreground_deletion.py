"""Suspected in #24 and true: `kubectl delete --cascade=foreground` keeps the resource, with a
deletionTimestamp and the `foregroundDeletion` finalizer, until the garbage collector has removed its
children; the operator's view dropped the deletionTimestamp, so every resync made the children again. A
resource being deleted is not reconciled: nothing is made for it. (The emulator has no foreground deletion:
the test writes what the API server would, then removes the children as the collector does.)"""

from __future__ import annotations

import datetime

import pytest
from kmock import action

from cluster.emulator import ALWAYS, PODS, Fault, counting
from cluster.harness import DEPLOYMENTS, KMS, SERVICES, Cluster, operator
from helpers.services import idle_service

pytestmark = pytest.mark.e2e


def test_a_service_deleted_in_the_foreground_gets_no_new_children(cluster: Cluster) -> None:
    emulator = cluster.emulator
    assert emulator is not None
    emulator.faults.append(Fault(action.CREATE, PODS, 403, count=ALWAYS))  # no server process is needed
    with operator(cluster):
        for name in ("going", "alive"):  # the resyncs of "alive" show those of "going" have run too
            cluster.create(KMS, idle_service(name))
            cluster.wait_for(lambda n=name: cluster.get(DEPLOYMENTS, n) and cluster.get(SERVICES, n), 60, "children")
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        marked = {"metadata": {"deletionTimestamp": now, "finalizers": ["foregroundDeletion"]}}
        cluster.patch(KMS, "going", marked)
        cluster.delete(DEPLOYMENTS, "going")
        cluster.delete(SERVICES, "going")
        reconciles = counting(emulator, action.FETCH, SERVICES)  # each reconcile of "alive" reads its Service
        cluster.wait_for(lambda: reconciles.hits >= 4, 60, "four more resyncs (every second)")

    assert cluster.get(DEPLOYMENTS, "going") is None
    assert cluster.get(SERVICES, "going") is None
    assert emulator.creations[(DEPLOYMENTS, "default", "going")] == 1
    assert emulator.creations[(SERVICES, "default", "going")] == 1
