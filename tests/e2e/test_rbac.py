"""The chart's RBAC covers every API call the operator makes, in each of the chart's RBAC modes, and grants
nothing more than those calls and a commented allow-list.

The test stands on its own: it drives the operator through representative scenarios on a fresh emulated
cluster and judges the calls made during this test only, whatever ran before it.

Beside the requests the emulator records, it records authorization checks the API server makes on them
that the emulator does not: the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and
many hardened clusters) lets an owner reference with blockOwnerDeletion be set only with `update` on the
owner's `finalizers` subresource, and the owner references of an existing object be changed only with
`delete` on that object; a server-side apply that creates its object needs `create` as well as `patch`.
Without these a chart lacking those grants would pass here and be refused there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import kmock
import pytest

from cluster.emulator import OPERATOR_AGENTS, OPERATOR_CALLS
from cluster.harness import DEPLOYMENTS, HPAS, HTTPROUTES, JOBS, KMS, KTJ, LEASES, SERVICES, Cluster, operator
from helpers.jobs import tiny_job
from helpers.rbac import RELEASE_NAMESPACE, Call, crd_plurals, granted, render_chart

pytestmark = pytest.mark.e2e

WORK_NAMESPACE = "default"  # where the harness creates the test's resources
MODES: dict[str, tuple[str, ...]] = {
    "cluster-wide": (),
    "namespaced": (f"watchNamespaces={{{WORK_NAMESPACE}}}",),
}
# Modes whose grants cover the canary split by HTTPRoute too (its scenario's calls are judged against these).
ROUTE_MODES: dict[str, tuple[str, ...]] = {
    "cluster-wide, httproute": ("canary.trafficSplit=httproute",),
    "namespaced, httproute": (f"watchNamespaces={{{WORK_NAMESPACE}}}", "canary.trafficSplit=httproute"),
}

# Grants no scenario below uses, each with the reason it stays: an entry without a reason does not belong
# here, it belongs out of the chart. Empty today: every grant is exercised. A grant added to the chart and
# not used fails the test until it is either used by a scenario or listed here with its justification.
UNUSED_ALLOWED: set[Call] = set()


# --- what the chart grants ---


# --- what the operator calls ---


def _group(ref: dict[str, Any]) -> str:
    return str(ref.get("apiVersion") or "").rpartition("/")[0]


class Recorder:
    """The operator's calls during one test, plus the admission checks they imply (see the module's doc)."""

    def __init__(self) -> None:
        self.plurals = crd_plurals()
        self.implied: set[Call] = set()
        self._refs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()  # the hook runs in the emulator's thread, calls() in the test's

    def hook(self, event: str, resource: kmock.resource, raw: dict[str, Any]) -> None:
        """Called by the emulator after each change it stores. Only references to the operator's own kinds
        are looked at: only the operator writes those (the fake kubelets' pods point at Jobs and
        Deployments), so what they imply is the operator's to be granted."""
        meta = raw.get("metadata") or {}
        key = (resource.group or "", resource.plural or "", meta.get("namespace") or "", meta.get("name") or "")
        refs = [r for r in meta.get("ownerReferences") or [] if (_group(r), r.get("kind")) in self.plurals]
        with self._lock:
            if event == "DELETED":
                self._refs.pop(key, None)
                return
            before = self._refs.get(key, []) if event == "MODIFIED" else []
            self._refs[key] = refs
            if event == "ADDED" and refs:
                # Created by the operator, whichever request did it: a server-side apply that creates is
                # recorded as a PATCH, yet the API server authorizes it as `create` too.
                self.implied.add((key[0], key[1], "create"))
            if event == "MODIFIED" and before != refs:
                self.implied.add((key[0], key[1], "delete"))  # only who may delete an object may re-own it
            already_blocking = {r.get("uid") for r in before if r.get("blockOwnerDeletion")}
            for ref in refs:
                if ref.get("blockOwnerDeletion") and ref.get("uid") not in already_blocking:
                    plural = self.plurals[(_group(ref), ref["kind"])]
                    self.implied.add((_group(ref), f"{plural}/finalizers", "update"))

    def calls(self) -> set[Call]:
        with self._lock:
            return set(OPERATOR_CALLS) | self.implied

    def reset(self) -> None:
        """Forget the calls so far (between operator runs only: none is in flight)."""
        with self._lock:
            OPERATOR_CALLS.clear()
            self.implied.clear()


@pytest.fixture
def recorder(cluster: Cluster) -> Iterator[Recorder]:
    # The emulator adds the operator's calls to one module-level set for the whole session; emptied here,
    # before this test's operator starts, it holds this test's calls only (the cluster fixture started a
    # fresh emulator, and the operators of earlier tests have stopped with their tests).
    assert cluster.emulator is not None
    OPERATOR_CALLS.clear()
    rec = Recorder()
    cluster.emulator.hooks.append(rec.hook)
    try:
        yield rec
    finally:
        cluster.emulator.hooks.remove(rec.hook)
        OPERATOR_CALLS.clear()  # nothing of this test leaks into whatever reads the set next


# --- the scenarios ---


def status(cluster: Cluster, resource: kmock.resource, name: str) -> dict[str, Any]:
    return (cluster.get(resource, name) or {}).get("status") or {}


def reason(cluster: Cluster, resource: kmock.resource, name: str, condition: str) -> str | None:
    found = [c for c in status(cluster, resource, name).get("conditions") or [] if c["type"] == condition]
    return found[0].get("reason") if found else None


def service(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kerasoperator.dev/v1alpha1",
        "kind": "KerasModelService",
        "metadata": {"name": name},
        "spec": {"model": model, **spec},
    }


def train_serve_and_delete(cluster: Cluster) -> None:
    """Progress from pod logs (no progress endpoint). Trainings: one created suspended, resumed, trained to
    success; one with an invalid spec; one whose Job name a foreign Job holds. Services: one of a model URI
    with autoscaling, its autoscaling changed, then removed with a port change; one of a training that does
    not exist. Then every resource deleted, and what it owned collected."""
    from helpers import models

    (cluster.pvc_root / "models").mkdir(parents=True)
    models.single(cluster.pvc_root / "models" / "iris.keras")
    foreign_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "taken-train", "labels": {"owner": "someone-else"}},
        "spec": {"suspend": True, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }
    cluster.create(JOBS, foreign_job)
    autoscaling = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 60}
    # ttlSecondsAfterFinished: the operator deletes the finished Job itself.
    trained = tiny_job(
        "trained",
        output={"uri": "pvc://models/trained"},
        training__epochs=2,
        runPolicy={"suspend": True, "ttlSecondsAfterFinished": 0},
    )
    with operator(cluster):
        cluster.create(KTJ, trained)
        cluster.create(KTJ, tiny_job("invalid", training__epochs=0))
        cluster.create(KTJ, tiny_job("taken", output={"uri": "pvc://models/taken"}))
        cluster.create(KMS, service("orphan", {"trainingJobRef": {"name": "missing"}}))
        cluster.create(KMS, service("iris", {"uri": "pvc://models/iris.keras"}, autoscaling=autoscaling))
        canary = {"model": {"uri": "pvc://models/iris.keras"}, "trafficPercent": 50}
        cluster.create(KMS, service("trial", {"uri": "pvc://models/iris.keras"}, canary=canary))

        cluster.wait_for(lambda: status(cluster, KTJ, "trained").get("phase") == "Queued", 60, "Queued")
        cluster.patch(KTJ, "trained", {"spec": {"runPolicy": {"suspend": False}}})
        cluster.wait_for(lambda: reason(cluster, KTJ, "invalid", "Valid") == "InvalidSpec", 60, "InvalidSpec")
        cluster.wait_for(lambda: status(cluster, KTJ, "taken").get("phase") == "Failed", 60, "NameConflict")
        cluster.wait_for(
            lambda: reason(cluster, KMS, "orphan", "ModelResolved") == "TrainingJobNotFound", 60, "TrainingJobNotFound"
        )
        cluster.wait_for(lambda: status(cluster, KMS, "iris").get("phase") == "Ready", 120, "Ready")
        cluster.wait_for(lambda: "requestsTotal" in status(cluster, KMS, "iris").get("metrics", {}), 60, "metrics")
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": {"maxReplicas": 4}}})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris")["spec"]["maxReplicas"] == 4, 30, "the HPA updated")
        cluster.patch(KMS, "iris", {"spec": {"autoscaling": None, "replicas": 1, "server": {"port": 8081}}})
        cluster.wait_for(lambda: cluster.get(HPAS, "iris") is None, 30, "the HPA to go")
        cluster.wait_for(lambda: cluster.get(SERVICES, "iris")["spec"]["ports"][0]["port"] == 8081, 30, "the port")
        # A canary split by pods: its Deployment made, then deleted with the canary.
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "trial-canary") is not None, 60, "the canary Deployment")
        cluster.patch(KMS, "trial", {"spec": {"canary": None}})
        cluster.wait_for(lambda: cluster.get(DEPLOYMENTS, "trial-canary") is None, 60, "the canary to go")
        cluster.wait_for(lambda: status(cluster, KTJ, "trained").get("phase") == "Succeeded", 180, "Succeeded")
        cluster.wait_for(lambda: cluster.get(JOBS, "trained-train") is None, 30, "the Job deleted after its TTL")

        owned = ((KMS, "iris"), (KMS, "trial"), (KMS, "orphan"), (KTJ, "trained"), (KTJ, "invalid"), (KTJ, "taken"))
        for resource, name in owned:
            cluster.delete(resource, name)
        for resource, name in owned:
            cluster.wait_for(lambda r=resource, n=name: cluster.get(r, n) is None, 30, f"{name} to go")
    assert [j["metadata"]["name"] for j in cluster.list(JOBS)] == ["taken-train"]  # the foreign one, untouched
    for kind in (DEPLOYMENTS, SERVICES, HPAS):
        assert cluster.list(kind) == [], kind


def train_with_progress_pushed(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress pushed by the trainer to the operator's endpoint, which asks the API server whose token it
    is (a TokenReview). Set up as the progress_endpoint fixture does, for this second operator run only."""
    from cluster.kubelet import free_port

    port = free_port()
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_PORT", str(port))
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("KERAS_OPERATOR_PROGRESS_FALLBACK_AFTER", "3600")  # no pod log read instead
    with operator(cluster):
        cluster.create(KTJ, tiny_job("pushed", output={"uri": "pvc://models/pushed"}, training__epochs=2))
        cluster.wait_for(lambda: status(cluster, KTJ, "pushed").get("phase") == "Succeeded", 180, "pushed: Succeeded")


def canary_by_httproute(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's canary.trafficSplit=httproute: a canary's per-side Services and HTTPRoute made, then
    deleted when the canary is removed."""
    monkeypatch.setenv("KERAS_OPERATOR_TRAFFIC_SPLIT", "httproute")
    canary = {"model": {"uri": "pvc://models/iris.keras"}, "trafficPercent": 20}
    with operator(cluster):
        cluster.create(KMS, service("routed", {"uri": "pvc://models/iris.keras"}, canary=canary))
        cluster.wait_for(lambda: cluster.get(HTTPROUTES, "routed") is not None, 60, "the HTTPRoute")
        cluster.patch(KMS, "routed", {"spec": {"canary": None}})
        cluster.wait_for(lambda: cluster.get(HTTPROUTES, "routed") is None, 60, "the HTTPRoute to go")
        cluster.wait_for(lambda: cluster.get(SERVICES, "routed-canary") is None, 60, "the canary's Service to go")
        cluster.delete(KMS, "routed")
        cluster.wait_for(lambda: cluster.get(KMS, "routed") is None, 30, "routed to go")


def elect_a_leader(cluster: Cluster) -> None:
    """The operator's leader election (what runtime.main runs before kopf when the chart has replicas > 1;
    the harness runs kopf alone): take the Lease, renew it, hand it back."""
    from keras_operator.runtime import credentials
    from keras_operator.runtime.leader import Elector, lease_client
    from keras_operator.runtime.settings import Settings

    login = credentials.find(Settings.from_env().api_server)  # as the operator finds it
    elector = Elector(lease_client(login), RELEASE_NAMESPACE, "keras-operator", "rbac-test", 2.0)
    assert elector.acquire(threading.Event())
    assert elector.renew()
    assert elector.release()
    assert cluster.get(LEASES, "keras-operator", RELEASE_NAMESPACE) is not None


def train_in_watched_namespaces(cluster: Cluster) -> None:
    """The chart's watchNamespaces mode as it runs: the operator told its namespaces, and no cluster-scoped
    grant to list namespaces (the emulator refuses that 403, as the API server does). A training created
    suspended, queued, deleted."""
    scoped = tiny_job("scoped", output={"uri": "pvc://models/scoped"}, runPolicy={"suspend": True})
    with operator(cluster, namespaces=(WORK_NAMESPACE,)):
        cluster.create(KTJ, scoped)
        cluster.wait_for(lambda: status(cluster, KTJ, "scoped").get("phase") == "Queued", 60, "scoped: Queued")
        cluster.delete(KTJ, "scoped")
        cluster.wait_for(lambda: cluster.get(KTJ, "scoped") is None, 30, "scoped to go")


# What the API server records as the manager of each field the operator writes (managedFields; what
# `kubectl apply --server-side` conflicts name): the operator's own name, never its client library's.
FIELD_MANAGER = "keras-operator"


def assert_every_write_names_the_operator(cluster: Cluster) -> None:
    """Creates, patches, status writes, Events, the Lease, TokenReviews, server-side applies: each names the
    operator as its field manager. kopf's own writes carry no fieldManager: they count by the User-Agent the
    operator gives kopf, whose first word the API server records instead."""
    assert cluster.emulator is not None
    agents = {agent.split("/")[0] for agent in OPERATOR_AGENTS}
    writes = {(what, manager) for agent, what, manager in cluster.emulator.write_managers if agent in agents}
    # The scenarios reached every kind of write: else a pass here would prove little.
    assert {what for what, _ in writes} >= {
        "jobs",
        "kerastrainingjobs/status",
        "kerasmodelservices/status",
        "deployments",
        "events",
        "leases",
        "tokenreviews",
    }, sorted(writes)
    assert {manager for _, manager in writes} == {FIELD_MANAGER}, sorted(w for w in writes if w[1] != FIELD_MANAGER)


def test_chart_rbac_covers_every_call_and_grants_nothing_unexplained(
    cluster: Cluster, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_serve_and_delete(cluster)
    train_with_progress_pushed(cluster, monkeypatch)
    elect_a_leader(cluster)
    used = recorder.calls()
    canary_by_httproute(cluster, monkeypatch)
    routed = recorder.calls()
    assert ("gateway.networking.k8s.io", "httproutes", "delete") in routed - used, sorted(routed - used)
    # The scenarios reached both kinds and the admission checks: else a pass here would prove little.
    assert ("kerasoperator.dev", "kerastrainingjobs/status", "patch") in used, sorted(used)
    assert ("kerasoperator.dev", "kerasmodelservices/status", "patch") in used, sorted(used)
    assert {r for _, r, v in recorder.implied if v == "update"} == {
        "kerastrainingjobs/finalizers",
        "kerasmodelservices/finalizers",
    }, recorder.implied
    recorder.reset()
    train_in_watched_namespaces(cluster)
    scoped = recorder.calls()
    missing = scoped - granted(render_chart(*MODES["namespaced"]), {RELEASE_NAMESPACE, WORK_NAMESPACE})
    assert not missing, f"watching named namespaces, the operator made calls the chart does not grant: {missing}"
    assert_every_write_names_the_operator(cluster)

    for mode, sets in {**MODES, **ROUTE_MODES}.items():
        grants = granted(render_chart(*sets), {RELEASE_NAMESPACE, WORK_NAMESPACE})
        used = routed if mode in ROUTE_MODES else used
        missing = used - grants
        assert not missing, (
            f"{mode}: the operator made these calls and the chart does not grant them: {sorted(missing)}"
        )
        unused = grants - used
        assert unused == UNUSED_ALLOWED, (
            f"{mode}: granted, never used and not on the allow-list: {sorted(unused - UNUSED_ALLOWED)}; "
            f"on the allow-list but used or no longer granted: {sorted(UNUSED_ALLOWED - unused)}"
        )
