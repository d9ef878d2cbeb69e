"""The operator under a failing API server and under garbage (issue #13): a hundred trainings while a share
of its requests fail (5xx before and after the change is stored, 409, 429 with Retry-After), are slow, and
its watches drop; five hundred random invalid resources of both kinds, which a CRD's schema would have
refused, applied to a running operator. Fixed seeds: the same requests meet the same faults."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kmock import action

from cluster.emulator import OPERATOR_AGENTS, Fault
from cluster.harness import CONFIGMAPS, DEPLOYMENTS, HPAS, JOBS, KMS, KTJ, SERVICES, Cluster, operator
from helpers.fast_trainer import MODEL_URI, fast_trainers
from helpers.invalid_resources import Invalid, invalid_resources, names_a_break
from helpers.jobs import tiny_job

pytestmark = pytest.mark.e2e

SEED = 1313
FOREVER = 10**9


def fleet_faults(seed: int) -> list[Fault]:
    """What the operator's own requests meet (never the fake controllers' or the test's): about one in
    four of its requests fails or is slow; watches are dropped apart (drop_watches)."""
    ops = OPERATOR_AGENTS
    return [
        Fault(None, None, None, count=FOREVER, share=0.10, seed=seed, delay=0.3, agents=ops),  # slow
        Fault(None, None, 503, count=FOREVER, share=0.05, seed=seed + 1, agents=ops),
        # The API server did the work, the answer was lost: a create seen again is a 409, a patch applies twice.
        Fault(None, None, 500, count=FOREVER, share=0.04, seed=seed + 2, after_store=True, agents=ops),
        Fault(action.CREATE, None, 409, count=FOREVER, share=0.05, seed=seed + 3, agents=ops),
        Fault(action.UPDATE, None, 409, count=FOREVER, share=0.05, seed=seed + 4, agents=ops),
        Fault(None, None, 429, count=FOREVER, share=0.05, seed=seed + 5, retry_after=1, agents=ops),
    ]


@contextlib.contextmanager
def dropping_watches(cluster: Cluster, every: float) -> Iterator[list[int]]:
    """End every watch stream each `every` seconds until the block ends. -> [how many times]."""
    assert cluster.emulator is not None
    emulator, drops = cluster.emulator, [0]

    async def start() -> asyncio.Task[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                emulator.drop_watches()
                drops[0] += 1

        return asyncio.get_running_loop().create_task(loop())

    task = cluster.call(start())
    try:
        yield drops
    finally:

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        cluster.call(stop())


def phase_of(cluster: Cluster, resource: Any, name: str) -> str | None:
    return ((cluster.get(resource, name) or {}).get("status") or {}).get("phase")


@pytest.mark.timeout(600)
def test_100_trainings_while_the_api_fails_and_watches_drop(cluster: Cluster) -> None:
    assert cluster.emulator is not None
    assert cluster.controller is not None
    emulator = cluster.emulator
    fast_trainers(cluster)
    names = [f"fleet-{i:03d}" for i in range(100)]
    faults = fleet_faults(SEED)
    emulator.faults.extend(faults)
    started = time.monotonic()
    with operator(cluster), dropping_watches(cluster, every=2.0) as drops:
        for name in names:
            cluster.create(KTJ, tiny_job(name, output={"uri": f"pvc://models/{name}"}, training__epochs=1))
        cluster.wait_for(
            lambda: all(phase_of(cluster, KTJ, n) in ("Succeeded", "Failed") for n in names),
            300,
            "every training to end",
        )
        emulator.faults.clear()
    took = time.monotonic() - started
    kinds = collections.Counter[str]()
    for fault in faults:
        kinds[f"{fault.status or 'slow'}{' after store' if fault.after_store else ''}"] += fault.hits
    print(f"\n100 trainings under faults: {took:.0f}s, faults {dict(kinds)}, watches dropped {drops[0]} times")

    for name in names:
        status = cluster.ktj(name)["status"]
        assert status["phase"] == "Succeeded", (name, status)
        assert status["modelUri"] == MODEL_URI.format(name=name)
    # Exactly one Job each, created once: a create whose answer was lost is adopted, never repeated.
    assert sorted(j["metadata"]["name"] for j in cluster.list(JOBS)) == [f"{n}-train" for n in names]
    created = {name: count for (res, _, name), count in emulator.creations.items() if res == JOBS}
    assert created == {f"{n}-train": 1 for n in names}
    assert cluster.controller.pods_started == 100
    assert all(kinds.values()), kinds  # every kind of fault was met
    assert drops[0] >= 3
    # A 429's Retry-After is honoured: no request came back before it said.
    assert emulator.early_retries == []


def invalid_cases(seed: int, count: int) -> tuple[list[Invalid], list[list[str]]]:
    """The generated documents the operator's own API refuses (checked in this process), and the breaks
    of those it accepts (a gap in the API's types, which must then be one the tests know of)."""
    from keras_operator.api.parse import InvalidResource
    from keras_operator.controllers import serving_reconciler, training_reconciler

    cases: list[Invalid] = []
    accepted: list[list[str]] = []
    for case in invalid_resources(seed, count):
        doc = case.doc
        try:
            validate = (
                training_reconciler.validate if doc["kind"] == "KerasTrainingJob" else serving_reconciler.validate
            )
            validate({**doc, "metadata": {**doc["metadata"], "uid": "u", "namespace": "default"}})
        except InvalidResource:
            cases.append(case)
            continue
        accepted.append(case.breaks)
    return cases, accepted


@pytest.mark.timeout(600)
def test_500_random_invalid_resources_are_reported_and_nothing_is_made(cluster: Cluster) -> None:
    cases, accepted = invalid_cases(SEED, 500)
    docs = [case.doc for case in cases]
    assert len(docs) + len(accepted) == 500
    # Integers beyond int64 are what the API's types still take (the CRD's schema refuses them).
    assert all(all(b.startswith("out-of-range") for b in breaks) for breaks in accepted), accepted
    fast_trainers(cluster)
    started = time.monotonic()
    with operator(cluster) as runner:
        for doc in docs:
            cluster.create(KTJ if doc["kind"] == "KerasTrainingJob" else KMS, doc)

        def reported() -> list[str]:
            return [
                d["metadata"]["name"]
                for d in docs
                if phase_of(cluster, KTJ if d["kind"] == "KerasTrainingJob" else KMS, d["metadata"]["name"]) is None
            ]

        cluster.wait_for(lambda: not reported(), 240, "a status on every invalid resource")
        took = time.monotonic() - started
        # Still reconciling: a valid training and a valid service created afterwards.
        cluster.create(KTJ, tiny_job("after", output={"uri": "pvc://models/after"}, training__epochs=1))
        cluster.create(
            KMS,
            {
                "apiVersion": "kerasoperator.dev/v1alpha1",
                "kind": "KerasModelService",
                "metadata": {"name": "after"},
                "spec": {"model": {"trainingJobRef": {"name": "not-yet"}}},
            },
        )
        cluster.wait_for(lambda: phase_of(cluster, KTJ, "after") == "Succeeded", 60, "the valid training")
        cluster.wait_for(lambda: phase_of(cluster, KMS, "after") == "Pending", 60, "the valid service")
    assert runner.exit_code == 0, runner.output[-3000:]
    # The operator's log is in the output (one JSON status line per resource at least): nothing went wrong there.
    assert runner.output.count('"event": "status"') >= len(docs)
    assert "reconcile_failed" not in runner.output  # no reconcile ended in an unexpected exception
    assert "Traceback" not in runner.output, runner.output[runner.output.index("Traceback") :][:3000]
    print(f"\n{len(docs)} invalid resources reported in {took:.0f}s ({len(accepted)} the API's types take)")

    wrong = []
    for case in cases:
        doc = case.doc
        name = doc["metadata"]["name"]
        obj = cluster.get(KTJ if doc["kind"] == "KerasTrainingJob" else KMS, name)
        assert obj is not None
        status = obj.get("status") or {}
        valid = next((c for c in status.get("conditions") or [] if c.get("type") == "Valid"), {})
        if not (
            status.get("phase") == "Failed"
            and valid.get("status") == "False"
            and valid.get("reason") == "InvalidSpec"
            and names_a_break(valid.get("message") or "", case.breaks)
        ):
            wrong.append((doc["kind"], name, case.breaks, status))
    assert not wrong, wrong[:5]
    # Nothing made for any of them: only the valid training's Job exists.
    assert [j["metadata"]["name"] for j in cluster.list(JOBS)] == ["after-train"]
    for resource in (CONFIGMAPS, DEPLOYMENTS, SERVICES, HPAS):
        assert cluster.list(resource) == [], resource
